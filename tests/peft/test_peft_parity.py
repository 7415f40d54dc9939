"""Adapters that `peft` reads and writes: parity with transformers + peft on the same weights."""

import pytest
import torch

from scratchlm.modeldir import save_model_dir
from scratchlm.peft import apply_lora, load_adapter, lora_layers, save_adapter
from scratchlm.tokenizers import train_tokenizer
from tests.conftest import FAMILIES, tiny_model
from tests.peft.test_lora import TARGETS, _randomize, _x

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(kind="char", texts=["hello world, 我喜欢吃苹果\n"])


def _base_dir(family, tok, path):
    extra = {"tie_embeddings": True} if family == "llama" else {}
    model = tiny_model(family, vocab_size=tok.vocab_size, **extra).eval()
    save_model_dir(path, model, tok)
    return model


@pytest.mark.parametrize("family,rslora", [("gpt", False), ("llama", False), ("llama", True)])
def test_peft_loads_our_adapter(family, rslora, tok, tmp_path):
    model = _base_dir(family, tok, tmp_path / "base")
    apply_lora(model, r=4, alpha=8, dropout=0.1, targets=TARGETS[family], rslora=rslora)
    _randomize(model)
    save_adapter(tmp_path / "adapter", model, base_model=str(tmp_path / "base"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    hf = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    assert len([n for n, _ in hf.named_parameters() if "lora_A" in n]) == len(lora_layers(model))
    x = _x(tok.vocab_size)
    with torch.no_grad():
        ours, theirs = model.eval()(x), hf(x).logits
        plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")(x).logits
    assert (theirs - plain).abs().max() > 1e-3  # peft really applied the adapter
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_we_load_an_adapter_peft_made(family, tok, tmp_path):
    model = _base_dir(family, tok, tmp_path / "base")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    cfg = peft.LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS[family], lora_dropout=0.0,
                          init_lora_weights=False,  # random B too: not the identity
                          fan_in_fan_out=family == "gpt", task_type="CAUSAL_LM")
    torch.manual_seed(5)
    hf = peft.get_peft_model(hf, cfg).eval()
    hf.save_pretrained(tmp_path / "adapter")
    names = load_adapter(model, tmp_path / "adapter")
    assert len(names) == 2 * (3 if family == "llama" else 2)
    x = _x(tok.vocab_size)
    with torch.no_grad():
        ours, theirs = model.eval()(x), hf(x).logits
        base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")(x).logits
    assert (theirs - base).abs().max() > 1e-3
    assert (ours - theirs).abs().max().item() < 1e-4
