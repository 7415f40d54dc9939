"""Fine-tuning pieces of the one Trainer: gradient checkpointing, freezing, the SFT loss."""

import pytest
import torch

from scratchlm.config import run_config_from_dict
from scratchlm.errors import ScratchLMError
from scratchlm.train.finetune import (
    blocks,
    freeze,
    prepare_model,
    sft_loss,
)
from tests.conftest import FAMILIES, tiny_model


def _grads(model, batch, *, seed=0):
    torch.manual_seed(seed)  # the same dropout masks
    sft_loss(model, batch).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _batch(vocab=97):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, 24), generator=g)
    labels = torch.randint(0, vocab, (2, 24), generator=g)
    labels[:, :10] = -100
    return {"input_ids": ids, "labels": labels}


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_the_same_gradients(family, method):
    cfg = run_config_from_dict({"finetune": {"method": method}, "lora": {"dropout": 0.1}})
    models = []
    for checkpointing in (False, True):
        model = tiny_model(family, dropout=0.1)  # dropout: the RNG must be replayed too
        torch.manual_seed(0)
        cfg.finetune.gradient_checkpointing = checkpointing
        prepare_model(model, cfg)
        models.append(model.train())
    plain, ckpt = (_grads(m, _batch()) for m in models)
    assert "forward" in blocks(models[1])[0].__dict__ and "forward" not in blocks(models[0])[0].__dict__
    assert plain.keys() == ckpt.keys() and plain
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-7, msg=k)
    # and checkpointing really changes how backward runs: the saved activations are fewer
    saved = []
    for m in models:
        count = [0]

        def pack(t, count=count):
            count[0] += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sft_loss(m, _batch())
        saved.append(count[0])
    assert saved[1] < saved[0]


def test_freeze_embeddings_and_layers():
    model = tiny_model("gpt")
    freeze(model, freeze_embeddings=True, freeze_layers=1)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "transformer.wte.weight" in frozen and "transformer.wpe.weight" in frozen
    assert all(n in frozen for n, _ in model.transformer.h[0].named_parameters(prefix="transformer.h.0"))
    assert not any(n.startswith("transformer.h.1.") for n in frozen)
    with pytest.raises(ScratchLMError, match="only 2 blocks"):
        freeze(tiny_model("llama"), freeze_layers=3)
    cfg = run_config_from_dict({"finetune": {"method": "lora", "freeze_layers": 1}, "lora": {}})
    with pytest.raises(ScratchLMError, match="for --method full"):
        prepare_model(tiny_model("llama"), cfg)


def test_sft_loss_ignores_masked_labels():
    model = tiny_model("llama").eval()
    batch = _batch()
    with torch.no_grad():
        logits = model(batch["input_ids"])
        keep = batch["labels"] != -100
        expected = torch.nn.functional.cross_entropy(logits[keep], batch["labels"][keep])
        assert torch.allclose(sft_loss(model, batch), expected, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_only_where_labels_are(family):
    model = tiny_model(family).eval()
    batch = _batch()
    keep = batch["labels"] != -100
    with torch.no_grad():
        some = model(batch["input_ids"], logits_mask=keep)
        full = model(batch["input_ids"])
    assert some.shape == (int(keep.sum()), 97)
    torch.testing.assert_close(some, full[keep], rtol=0, atol=1e-5)
