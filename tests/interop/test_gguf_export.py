"""GGUF export for every architecture scratchlm writes (llama.cpp's llama, qwen2, gpt2) without
llama.cpp itself (tests/interop/test_llamacpp.py runs it): tensor names are those gguf-py lists
for the architecture, types are as documented, import gives back the same model, transformers'
own GGUF loader reads our qwen2 file as the Qwen2 model it came from, and what cannot be written
is refused in one line with nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

import scratchlm
from scratchlm.config import run_config_from_dict
from scratchlm.errors import ScratchLMError
from scratchlm.interop import gguf_write
from scratchlm.interop.gguf import load_gguf, read_metadata, tensor_names
from scratchlm.registry import build_model
from scratchlm.tokenizers.tokenizer import Tokenizer, train_tokenizer
from tests.cli.test_cli import assert_clean_error, cli, cli_in_process

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

# GGUF architecture -> model config: llama with GQA, qwen2 (q/k/v biases, tied), gpt.
SHAPES = {
    "llama": {"family": "llama", "n_kv_head": 2},
    "qwen2": {"family": "llama", "n_kv_head": 2, "qkv_bias": True, "tie_embeddings": True},
    "gpt2": {"family": "gpt"},
}


@pytest.fixture(scope="module")
def bpe(corpus):
    text = (corpus / "a.txt").read_text(encoding="utf-8")
    return train_tokenizer(kind="bpe", texts=[text], vocab_size=400)


def _model(arch: str, vocab: int, seed: int = 0):
    values = {**SHAPES[arch], "n_layer": 2, "n_head": 4, "d_model": 64, "block_size": 64,
              "vocab_size": vocab, "init_std": 0.2}
    torch.manual_seed(seed)
    model = build_model(run_config_from_dict({"model": values}).model).eval()
    with torch.no_grad():  # non-zero biases and norms, so that a misplaced one shows
        for k, v in model.named_parameters():
            if k.endswith("bias") or "norm" in k or "ln_" in k:
                v.add_(torch.randn_like(v) * 0.1)
    return model


def _names(arch: str, n_layer: int) -> set[str]:
    """Every tensor name gguf-py (llama.cpp's own Python package) allows for `arch`."""
    a = next(m for m, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    return {gguf.TENSOR_NAMES[t].format(bid=i) + suffix for t in gguf.MODEL_TENSORS[a]
            for i in range(n_layer) for suffix in (".weight", ".bias")}


@pytest.mark.parametrize(("arch", "shape"), [(a, a) for a in SHAPES] + [("llama", "qwen2")])
def test_every_architecture_round_trips(arch, shape, bpe, tmp_path):
    """(llama, qwen2): a model with q/k/v biases as llama.cpp's llama, biases permuted too."""
    model = _model(shape, bpe.vocab_size)
    assert gguf_write.gguf_architecture(model.config, arch if arch != shape else None) == arch
    path = gguf_write.save_gguf(tmp_path / "m.gguf", model, bpe, outtype="f32", arch=arch)
    reader = gguf.GGUFReader(str(path))
    meta = read_metadata(reader)
    assert meta["general.architecture"] == arch
    assert meta["tokenizer.ggml.pre"] == "gpt-2"  # the name llama.cpp's vocab loader knows
    names = {t.name for t in reader.tensors}
    assert names <= _names(arch, 2), names - _names(arch, 2)
    if shape == "qwen2":
        assert {"blk.0.attn_q.bias", "blk.1.attn_v.bias"} <= names and "output.weight" not in names
    back, tok = load_gguf(path)
    assert back.config.family == model.config.family
    if arch != "gpt2":
        assert back.config.qkv_bias == model.config.qkv_bias
        assert back.config.tie_embeddings == model.config.tie_embeddings
    x = torch.randint(0, bpe.vocab_size, (2, 24))
    with torch.no_grad():
        assert (back(x) - model(x)).abs().max().item() < 1e-5
    text = "ROMEO: What, ho! 12345 apothecary!\n\n  Thou  art"
    assert tok.encode(text) == bpe.encode(text)


def test_char_tokenizer_goes_in_as_sentencepiece(corpus, tmp_path):
    """The char kind (`make demo`'s) as llama.cpp's "llama" tokenizer model: spaces as ▁, byte
    tokens for unseen characters; read back, it gives the same ids and text."""
    text = (corpus / "a.txt").read_text(encoding="utf-8")
    char = train_tokenizer(kind="char", texts=[text])
    model = _model("gpt2", char.vocab_size)
    path = gguf_write.save_gguf(tmp_path / "c.gguf", model, char)
    meta = read_metadata(gguf.GGUFReader(str(path)))
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_space_prefix"] is False
    space = char.encode(" ")[0]
    assert meta["tokenizer.ggml.tokens"][space] == "\u2581"
    assert meta["tokenizer.ggml.token_type"][char.encode("\U0001f600")[0]] == 6  # unseen: BYTE
    back, tok = load_gguf(path)
    for s in ["ROMEO: What, ho!\n\n  Thou  art", " lead", "caf\u00e9 \u6211 \U0001f600", "<|eos|>"]:
        assert tok.encode(s) == char.encode(s), s
        assert tok.decode(tok.encode(s)) == char.decode(char.encode(s))
    x = torch.randint(0, char.vocab_size, (1, 24))
    with torch.no_grad():
        assert (back(x) - model(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("outtype", ["q8_0", "q4_0", "q4_1", "q4_k_m"])
def test_quantised_types(outtype, bpe, tmp_path):
    """Width 64 (not a multiple of 256): q4_k_m's Q4_K and Q6_K fall back to Q5_0 and Q8_0 as in
    llama-quantize, except the gpt's ffn_down (rows of 256). tests/interop/test_kquants.py has
    the whole table."""
    model = _model("llama", bpe.vocab_size)  # untied: output.weight is its own matrix
    path = gguf_write.save_gguf(tmp_path / "m.gguf", model, bpe, outtype=outtype)
    reader = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type for t in reader.tensors}
    want = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1, "q4_k_m": Q.Q5_0}[outtype]
    assert types["blk.0.attn_q.weight"] == types["blk.0.ffn_down.weight"] == want
    assert types["blk.1.ffn_down.weight"] == types["blk.1.attn_v.weight"] == (
        Q.Q8_0 if outtype == "q4_k_m" else want)  # q4_k_m: 6 bits -> Q6_K -> Q8_0 (rows of 64)
    assert types["token_embd.weight"] == want
    assert types["output.weight"] == Q.Q8_0  # 4-bit types keep the output matrix at 8 bits
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == Q.F32
    file_type = {"q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1",
                 "q4_k_m": "MOSTLY_Q4_K_M"}[outtype]
    assert read_metadata(reader)["general.file_type"] == gguf.LlamaFileType[file_type]
    # every matrix reads back (gguf's dequantisers) within its type's rounding
    ours = model.state_dict()
    for t in reader.tensors:
        if t.tensor_type == Q.F32 or ".attn_q." in t.name or ".attn_k." in t.name:  # (q/k: permuted)
            continue
        w = ours[tensor_names("llama", 2)[t.name]].numpy()
        back = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(w.shape)
        rel = np.sqrt(((back - w) ** 2).mean() / (w ** 2).mean())
        assert rel < (0.01 if t.tensor_type in (Q.Q8_0, Q.Q6_K) else 0.12), (t.name, rel)
    gpt = _model("gpt2", bpe.vocab_size)
    path = gguf_write.save_gguf(tmp_path / "g.gguf", gpt, bpe, outtype=outtype)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    assert types["position_embd.weight"] == types["blk.0.attn_qkv.bias"] == Q.F32
    assert types["blk.0.attn_qkv.weight"] == want
    assert types["token_embd.weight"] == (want if outtype == "q8_0" else Q.Q8_0)  # tied output
    if outtype == "q4_k_m":  # ffn_down has rows of 256: real k-quants
        assert types["blk.0.ffn_down.weight"] == Q.Q4_K
        assert types["blk.1.ffn_down.weight"] == Q.Q6_K


def test_a_q8_0_file_under_quantize_int8_keeps_its_own_int8_values(bpe, tmp_path):
    """Import expands Q8_0 to fp32; `--quantize int8`'s grouped kernel (llama.cpp's Q8_0
    scheme, models/quant.py) quantizes it back to the file's own int8 values and scales: every
    block's largest value is 127 steps, so requantizing loses nothing more."""
    from scratchlm.models.quant import group_int8

    path = gguf_write.save_gguf(tmp_path / "m.gguf", _model("llama", bpe.vocab_size), bpe, outtype="q8_0")
    loaded, _ = scratchlm.load(path)  # fp32, dequantized from the file
    linears = [m for m in loaded.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 7 + 1
    for layer in linears:
        w = layer.weight.detach()
        q, scale = group_int8(w)
        steps = scale.half().float().repeat_interleave(32, 1)[:, : w.shape[1]]  # the kernel's fp16 scales
        assert torch.equal(q.float() * steps, w)


def test_qwen2_export_is_what_transformers_reads_as_qwen2(bpe, tmp_path):
    """A transformers Qwen2 model -> scratchlm -> our qwen2 GGUF -> transformers' GGUF loader:
    the same logits (transformers maps GGUF names and RoPE order independently of us)."""
    transformers = pytest.importorskip("transformers")
    from transformers import PreTrainedTokenizerFast

    cfg = transformers.Qwen2Config(vocab_size=bpe.vocab_size, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True, initializer_range=0.2)
    torch.manual_seed(0)
    ref = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in ref.model.layers:  # Qwen2's q/k/v biases: non-zero
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.2)
    hf = tmp_path / "hf"
    ref.save_pretrained(hf)
    PreTrainedTokenizerFast(tokenizer_object=bpe.hf).save_pretrained(hf)
    model, tok = scratchlm.load(hf)
    assert gguf_write.gguf_architecture(model.config) == "qwen2"
    gguf_write.save_gguf(tmp_path / "q.gguf", model, tok, outtype="f32")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf").eval()
    assert type(theirs).__name__ == "Qwen2ForCausalLM"
    back, _ = scratchlm.load(tmp_path / "q.gguf")
    x = torch.randint(0, bpe.vocab_size, (2, 20))
    with torch.no_grad():
        want = ref(x).logits
        assert (theirs(x).logits - want).abs().max().item() < 1e-4
        assert (back(x) - want).abs().max().item() < 1e-4


def test_what_cannot_be_written_is_refused(bpe, corpus, tmp_path, capfd):
    model = _model("llama", bpe.vocab_size)
    src = tmp_path / "model"
    scratchlm.save_model_dir(src, model, bpe)
    dst = tmp_path / "out.gguf"
    proc = cli("convert", src, dst, "--outtype", "q5_k_m", check=False)
    assert_clean_error(proc, "llama-quantize MODEL.f16.gguf MODEL.Q5_K_M.gguf Q5_K_M")
    # The other commands in this process, through the same `main` as the real one above.
    for bad in ("q3_x", "guessed", "q4_1_some_f16"):  # not types llama-quantize makes
        proc = cli_in_process(capfd, "convert", src, dst, "--outtype", bad)
        assert_clean_error(proc, "unknown to llama.cpp")
    proc = cli_in_process(capfd, "convert", tmp_path / "nope", dst)
    assert_clean_error(proc, "does not exist")
    word = Tokenizer(HFTokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")), kind="other",
                     special_tokens={})
    with pytest.raises(ScratchLMError, match="needs a byte-level BPE or a char tokenizer"):
        gguf_write.save_gguf(dst, _model("llama", 2), word)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing written
    with pytest.raises(ScratchLMError, match="cannot be written as GGUF architecture 'qwen2'"):
        gguf_write.gguf_architecture(model.config, "qwen2")  # no q/k/v biases
    with pytest.raises(ScratchLMError, match="gpt and llama families"):
        gguf_write.gguf_architecture(build_model(run_config_from_dict(
            {"model": {"family": "rnn", "vocab_size": 10}}).model).config)
    out = cli_in_process(capfd, "convert", src, dst, "--outtype", "Q4_0")  # llama.cpp's spelling
    assert out.returncode == 0, out.stderr
    assert "llama.cpp architecture llama, q4_0" in out.stdout
    assert read_metadata(gguf.GGUFReader(str(dst)))["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_0
