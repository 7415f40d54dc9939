"""Inference precision (models/quant.py): int8 by module swap and bf16 keep what the model
computes, within the quality bars, through the decoder protocol, generate and beam search."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

import scratchlm
from scratchlm.config import run_config_from_dict
from scratchlm.data.pretrain import TokenData
from scratchlm.errors import ScratchLMError
from scratchlm.eval.perplexity import evaluate_lm
from scratchlm.generate.beam import BeamConfig, beam_search
from scratchlm.generate.decode import GenerationConfig, generate_tokens
from scratchlm.hardware import capabilities
from scratchlm.models import kernels, quant
from scratchlm.models.quant import Int8Linear, apply_precision, choose_precision, quantize_int8
from scratchlm.registry import build_model
from tests.conftest import tiny_model

needs_int8 = pytest.mark.skipif(not capabilities().fast_int8, reason="no fbgemm on this CPU")
OURS = pytest.mark.skipif(kernels.library() is None, reason=f"scratchlm's int8 kernels: {kernels.why_not()}")


@pytest.fixture(scope="module")
def trained(char_data, tmp_path_factory):
    """A tiny gpt char model trained for 150 steps: int8's quality bar needs real weights
    (a random model's near-uniform logits flip their argmax at any perturbation)."""
    from scratchlm.train import Trainer

    data = TokenData(char_data)
    cfg = run_config_from_dict({
        "model": {"family": "gpt", "preset": "tiny", "vocab_size": data.vocab_size,
                  "block_size": 64, "dropout": 0.0},
        "train": {"max_steps": 150, "batch_size": 8, "lr": 3e-3, "warmup_steps": 10,
                  "eval_every": 1000, "eval_batches": 1, "save_every": 1000, "log_every": 1000,
                  "dtype": "float32"},
    })
    torch.manual_seed(0)
    model = build_model(cfg.model)
    out = tmp_path_factory.mktemp("quant") / "run"
    Trainer(model=model, config=cfg, tokenizer=data.tokenizer(), out_dir=out, show_progress=False,
            batches=lambda split, rng: data.batch(split, batch_size=8, block_size=64, rng=rng)).fit()
    return out / "final", data


def _greedy(model, ids, n=32):
    cfg = GenerationConfig(max_new_tokens=n, temperature=0.0, ignore_eos=True)
    return torch.stack(list(generate_tokens(model, ids, config=cfg, eos_id=None)), 1)  # (B, n)


@needs_int8
@pytest.mark.parametrize("quantize", ["int8", "int8-dynamic"])
def test_int8_perplexity_and_greedy_tokens_hold_on_a_trained_model(trained, quantize):
    path, data = trained
    fp, tok = scratchlm.load(path)
    q, _ = scratchlm.load(path, quantize=quantize)  # the Python API
    assert not any(type(m) is nn.Linear for m in q.modules())
    # the output layer: int8 as CTranslate2's (int8-dynamic) and llama.cpp's Q8_0 (int8 with
    # scratchlm's grouped kernel), else 16-bit weights
    head = Int8Linear if quant.output_format(quantize) == "int8" else quant.HalfLinear
    assert isinstance(q.lm_head, head)
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == 2 * 4 + (head is Int8Linear)
    ppl_fp = evaluate_lm(fp, tok, data)["perplexity"]
    ppl_q = evaluate_lm(q, tok, data)["perplexity"]
    assert ppl_fp < 0.5 * data.vocab_size  # it did learn something
    assert abs(ppl_q / ppl_fp - 1) < 0.015, (ppl_fp, ppl_q)
    ids = torch.tensor([tok.encode("ROMEO:\nWhat say you, my lord?")])
    prompts = [torch.tensor([tok.encode(p)]) for p in ("ROMEO:\nWhat ", "KING: I have ", "O, she is ")]
    with torch.inference_mode():
        a, b = fp(ids), q(ids)
        assert (a - b).norm() / a.norm() < 0.05
        same = [(_greedy(fp, p) == _greedy(q, p)).float().mean().item() for p in prompts]
    assert sum(same) / len(same) >= 0.8, same


@needs_int8
@pytest.mark.parametrize("kernel", ["weight_only", "dynamic", pytest.param("w8a8", marks=OURS),
                                    pytest.param("w8a32", marks=OURS), pytest.param("w8a8g", marks=OURS)])
@pytest.mark.parametrize("family", ["gpt", "llama", "seq2seq_transformer"])
def test_every_linear_is_swapped_and_logits_stay_close(family, kernel):
    model = tiny_model(family, vocab_size=61).eval()
    q = copy.deepcopy(model)
    names = quantize_int8(q, kernel=kernel)
    fused = copy.deepcopy(model)
    assert quant.fuse_linears(fused) == ([] if family != "llama" else [
        f"model.layers.{i}.{n}" for i in range(model.config.n_layer)
        for n in ("self_attn.qkv_proj", "mlp.gate_up_proj")])
    assert names == [n for n, m in fused.named_modules() if isinstance(m, nn.Linear)] and names
    assert isinstance(q.lm_head, quant.HalfLinear)
    assert all(isinstance(q.get_submodule(n), Int8Linear) for n in names if n != "lm_head")
    ids = torch.randint(3, 61, (2, 9))
    with torch.inference_mode():
        if family == "seq2seq_transformer":
            a = model(ids, memory=model.encode(ids, torch.ones_like(ids, dtype=torch.bool)))
            b = q(ids, memory=q.encode(ids, torch.ones_like(ids, dtype=torch.bool)))
        else:
            a, b = model(ids), q(ids)
    assert a.shape == b.shape and (a - b).norm() / a.norm() < 0.05
    with pytest.raises(ScratchLMError, match="cannot be saved"):
        q.state_dict()


@needs_int8
def test_int8_decodes_with_the_cache_in_greedy_sampling_and_beam():
    model = tiny_model("llama", vocab_size=61).eval()
    quantize_int8(model)
    start = torch.randint(3, 61, (2, 5))
    with torch.inference_mode():
        full = model(start)  # (B, T, V) without a cache
        cache = model.init_cache(batch_size=2, max_len=16)
        step, cache = model(start, cache=cache)
    torch.testing.assert_close(step, full)  # same rows through the same kernels
    sampled = list(generate_tokens(model, start, eos_id=None, config=GenerationConfig(
        max_new_tokens=6, temperature=0.9, top_k=10, seed=1, ignore_eos=True)))
    assert len(sampled) == 6
    beams = beam_search(model, start[:1], config=BeamConfig(num_beams=1, max_new_tokens=6), eos_id=None)
    assert beams[0][0].tokens == _greedy(model, start[:1], n=6)[0].tolist()  # beam 1 == greedy


def test_bfloat16_casts_the_model_and_decodes():
    model = tiny_model("gpt", vocab_size=61)
    apply_precision(model, replace(choose_precision(dtype="float32"), dtype=torch.bfloat16))
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.init_cache(batch_size=1, max_len=8).k.dtype == torch.bfloat16
    assert _greedy(model, torch.tensor([[5, 6, 7]]), n=4).shape == (1, 4)


def test_auto_follows_the_measured_capabilities(monkeypatch):
    caps = capabilities()
    for speedup, want in ((3.0, torch.bfloat16), (0.5, torch.float32), (None, torch.float32)):
        monkeypatch.setattr(quant, "capabilities", lambda s=speedup: replace(caps, bf16_speedup=s))
        p = choose_precision(dtype="auto")
        assert p.dtype == want and p.warning is None and "auto" in p.describe()
    slow = choose_precision(dtype="bfloat16")  # the last one: bf16 not measured fast
    assert slow.dtype == torch.bfloat16 and "slow" in slow.warning and "\n" not in slow.warning
    assert choose_precision(dtype="auto", quantize="int8").dtype == torch.float32
    monkeypatch.setattr(quant, "capabilities", lambda: replace(caps, bf16_speedup=3.0))
    if kernels.library() is not None:  # scratchlm's kernels, whatever bf16 does
        assert "groups of 32, as llama.cpp's Q8_0 (scratchlm" in choose_precision(quantize="int8").describe()
        assert "int8 activations per row (scratchlm" in choose_precision(quantize="int8-dynamic").describe()
    monkeypatch.setattr(kernels, "library", lambda: None)  # torch's kernels
    assert "bf16 activations (weight-only)" in choose_precision(quantize="int8").describe()
    assert "int8 activations (fbgemm" in choose_precision(quantize="int8-dynamic").describe()


def test_bad_input_is_one_clear_line(monkeypatch):
    with pytest.raises(ScratchLMError, match="--dtype must be"):
        choose_precision(dtype="fp8")
    with pytest.raises(ScratchLMError, match="--quantize must be"):
        choose_precision(quantize="int3")
    with pytest.raises(ScratchLMError, match="fp32 between"):
        choose_precision(dtype="bfloat16", quantize="int8")
    with pytest.raises(ScratchLMError, match="CPU only"):
        choose_precision(quantize="int8", device="cuda")
    with pytest.raises(ScratchLMError, match="not rnn"):
        quantize_int8(tiny_model("rnn", vocab_size=61))
    caps = capabilities()
    monkeypatch.setattr(quant, "capabilities", lambda: replace(caps, int8_engine=None))
    with pytest.raises(ScratchLMError, match="needs fbgemm"):
        quantize_int8(tiny_model("gpt", vocab_size=61), kernel="dynamic")
    monkeypatch.setattr(quant, "capabilities", lambda: replace(caps, bf16_speedup=None))
    monkeypatch.setattr(kernels, "library", lambda: None)
    p = choose_precision(quantize="int8")  # no fast bf16 nor our kernels: activations quantized too
    assert "int8 activations" in p.describe() and "drift" in p.warning


# ----------------------------------------------------------------------------- the CLI
def _cli(capsys, *argv):
    from scratchlm.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@needs_int8
def test_cli_generate_and_evaluate_in_int8(trained, capsys):
    path, data = trained
    code, out, err = _cli(capsys, "generate", path, "--prompt", "ROMEO:", "--greedy",
                          "--max-new-tokens", "12", "--quantize", "int8")
    assert code == 0 and out.startswith("ROMEO:") and len(out) > len("ROMEO:\n")
    assert "AVX2" in err and "precision: int8 weights" in err  # the header on stderr
    code, out, err = _cli(capsys, "generate", path, "--prompt", "ROMEO:", "--num-beams", "3",
                          "--max-new-tokens", "6", "--quantize", "int8")
    assert code == 0 and out.startswith("ROMEO:")


def test_cli_bad_precision_is_one_line(trained, tmp_path, capsys, monkeypatch):
    from scratchlm.modeldir import save_model_dir

    path, data = trained
    code, out, err = _cli(capsys, "generate", path, "--prompt", "a", "--quantize", "int8",
                          "--dtype", "bfloat16")
    assert code == 1 and out == "" and err.count("\n") == 1 and "--dtype auto or float32" in err
    rnn = tmp_path / "rnn"
    save_model_dir(rnn, tiny_model("rnn", vocab_size=data.vocab_size), data.tokenizer())
    code, out, err = _cli(capsys, "generate", rnn, "--prompt", "a", "--quantize", "int8")
    assert code == 1 and out == "" and err.count("\n") == 1 and "not rnn" in err
    caps = capabilities()
    monkeypatch.setattr(quant, "capabilities", lambda: replace(caps, bf16_speedup=0.01))
    code, out, err = _cli(capsys, "generate", path, "--prompt", "a", "--greedy",
                          "--max-new-tokens", "3", "--dtype", "bfloat16")
    assert code == 0 and "warning: --dtype bfloat16 will be slow" in err
    assert len([ln for ln in err.splitlines() if ln.startswith("warning")]) == 1


def test_fused_projections_compute_what_the_parts_did():
    """fuse_linears (q/k/v and gate/up in one matmul each), biases included, in fp32."""
    model = tiny_model("llama", vocab_size=61, qkv_bias=True, mlp_bias=True).eval()
    fused = copy.deepcopy(model)
    assert len(quant.fuse_linears(fused)) == 2 * model.config.n_layer
    assert fused.model.layers[0].self_attn.q_proj is None and quant.fuse_linears(fused) == []
    ids = torch.randint(3, 61, (2, 9))
    with torch.inference_mode():
        torch.testing.assert_close(fused(ids), model(ids))
