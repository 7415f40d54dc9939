"""Parity with Hugging Face transformers: our model directories load there with the same
logits, and randomly initialised transformers models load here with the same logits."""

import json

import pytest
import torch

import scratchlm
from scratchlm.modeldir import save_model_dir
from scratchlm.tokenizers import train_tokenizer
from tests.conftest import FAMILIES, tiny_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(kind="char", texts=["hello world, 我喜欢吃苹果\n"])


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_loads_our_export(family, tok, tmp_path):
    extra = {"tie_embeddings": True} if family == "llama" else {}
    model = tiny_model(family, vocab_size=tok.vocab_size, **extra).eval()
    with torch.no_grad():  # non-trivial norm weights and biases, so the test can fail
        for n, p in model.named_parameters():
            if "norm" in n or "ln_" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    save_model_dir(tmp_path, model, tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, tok.vocab_size, (2, 17))
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    greedy = hf.generate(x[:1, :5], max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_id)
    mine = scratchlm.generate_tokens(model, x[:1, :5],
                                     config=scratchlm.GenerationConfig(max_new_tokens=10, temperature=0))
    assert greedy[0, 5:].tolist() == [int(t) for t in mine]


def _hf_model(family, vocab):
    if family == "gpt":
        cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64,
                                      vocab_size=vocab, bos_token_id=1, eos_token_id=2)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, vocab_size=vocab,
                                   rms_norm_eps=1e-5, rope_theta=500.0)
    return transformers.LlamaForCausalLM(cfg)


@pytest.mark.parametrize("family", FAMILIES)
def test_we_load_transformers_checkpoints(family, tok, tmp_path):
    torch.manual_seed(0)
    hf = _hf_model(family, tok.vocab_size).eval()
    hf.save_pretrained(tmp_path)
    tok.save(tmp_path)
    model, _ = scratchlm.load(tmp_path)
    assert "scratchlm" not in json.loads((tmp_path / "config.json").read_text())
    x = torch.randint(0, tok.vocab_size, (2, 13))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() < 1e-4
