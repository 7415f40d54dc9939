"""GGUF: dequantisation of every supported type on synthetic blocks (exact against `gguf`'s
reference, and checked against the block layouts), a Llama GGUF round trip that transformers'
own GGUF loader agrees with, and the errors for what is not supported."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import scratchlm
from scratchlm.errors import ScratchLMError
from scratchlm.interop import gguf as ours
from scratchlm.interop import gguf_write as writer

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
ROWS, COLS = 3, 512  # two 256-element super-blocks per row


def _fp16_bytes(rng, n, scale):
    return (rng.standard_normal(n) * scale).astype(np.float16).view(np.uint8).reshape(n, 2)


def _synthetic(qtype, rng) -> np.ndarray:
    """Random blocks of `qtype` with finite scales, as the raw uint8 rows GGUF stores."""
    if qtype == Q.F32:
        return rng.standard_normal((ROWS, COLS)).astype(np.float32)
    if qtype == Q.F16:
        return rng.standard_normal((ROWS, COLS)).astype(np.float16)
    if qtype == Q.BF16:
        bits = rng.standard_normal((ROWS, COLS)).astype(np.float32).view(np.uint32) >> 16
        return bits.astype(np.uint16).view(np.uint8).reshape(ROWS, COLS * 2)
    elems, size = gguf.GGML_QUANT_SIZES[qtype]
    n = ROWS * COLS // elems
    blocks = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    scales = {Q.Q8_0: [0], Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q4_K: [0, 2],
              Q.Q5_K: [0, 2], Q.Q6_K: [size - 2]}[qtype]
    for at in scales:  # fp16 d (and min) fields: finite values
        blocks[:, at:at + 2] = _fp16_bytes(rng, n, 0.05)
    return blocks.reshape(ROWS, -1)


def _spec(qtype, raw: np.ndarray) -> np.ndarray | None:
    """The simple block formats written out from ggml's definitions, independently of gguf."""
    if qtype == Q.F32:
        return raw
    if qtype == Q.F16:
        return raw.astype(np.float32)
    if qtype == Q.BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    _, size = gguf.GGML_QUANT_SIZES[qtype]
    b = raw.reshape(-1, size)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)  # (n, 1)
    if qtype == Q.Q8_0:  # x = d * q, q int8
        return (d * b[:, 2:].view(np.int8)).reshape(ROWS, COLS)
    lo_hi = lambda qs: np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.float32)  # noqa: E731
    if qtype == Q.Q4_0:  # x = d * (q - 8), low nibbles first
        return (d * (lo_hi(b[:, 2:]) - 8)).reshape(ROWS, COLS)
    if qtype == Q.Q4_1:  # x = d * q + m
        m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        return (d * lo_hi(b[:, 4:]) + m).reshape(ROWS, COLS)
    if qtype in (Q.Q5_0, Q.Q5_1):  # q = nibble + 16 * (bit i of the 32-bit qh); Q5_0 centred, Q5_1 + m
        at = 2 if qtype == Q.Q5_0 else 4
        qh = b[:, at:at + 4].copy().view("<u4")  # (n, 1)
        high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.float32)  # (n, 32)
        q = lo_hi(b[:, at + 4:]) + 16 * high
        if qtype == Q.Q5_0:
            return (d * (q - 16)).reshape(ROWS, COLS)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        return (d * q + m).reshape(ROWS, COLS)
    return None


def _write(path, tensors: dict[str, tuple[np.ndarray, object]]) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    for name, (arr, qtype) in tensors.items():
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("name", ours.SUPPORTED_TYPES)
def test_dequantisation_matches_gguf_reference(name, tmp_path):
    qtype = Q[name]
    raw = _synthetic(qtype, np.random.default_rng(0))
    _write(tmp_path / "t.gguf", {"w": (raw, qtype)})
    (tensor,) = gguf.GGUFReader(str(tmp_path / "t.gguf")).tensors
    assert tensor.tensor_type == qtype
    got = ours.dequantize(tensor)
    assert got.shape == (ROWS, COLS) and got.dtype == np.float32
    reference = gguf.quants.dequantize(raw, qtype).reshape(ROWS, COLS)
    np.testing.assert_array_equal(got, reference)  # exact, bit for bit
    assert np.isfinite(got).all() and np.abs(got).max() > 0
    spec = _spec(qtype, raw)
    if spec is not None:
        np.testing.assert_array_equal(got, spec)
    else:  # the k-quants: transformers' independent torch dequantiser, where it has one
        try:
            from transformers.integrations.gguf.dequant import dequantize as hf_dequant
        except ImportError:
            return
        theirs = hf_dequant(torch.from_numpy(raw.reshape(-1)), int(qtype)).reshape(ROWS, COLS)
        np.testing.assert_allclose(got, theirs.numpy(), rtol=1e-6, atol=1e-7)


def test_unsupported_quantisation_is_named(tmp_path):
    rng = np.random.default_rng(0)
    elems, size = gguf.GGML_QUANT_SIZES[Q.Q2_K]
    raw = rng.integers(0, 256, size=(2, 256 // elems * size), dtype=np.uint8)
    _write(tmp_path / "t.gguf", {"token_embd.weight": (raw, Q.Q2_K)})
    with pytest.raises(ScratchLMError, match=r"Q2_K, which is not supported \(supported: F32, F16, BF16, Q8_0"):
        ours.load_gguf(tmp_path / "t.gguf")


def test_unsupported_architecture_is_named(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "falcon")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ScratchLMError, match=r"architecture 'falcon' is not supported \(supported: llama"):
        ours.load_gguf(tmp_path / "t.gguf")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf")
    with pytest.raises(ScratchLMError, match="not a GGUF file"):
        scratchlm.load(tmp_path / "bad.gguf")


# ----------------------------------------------------------------------------- model round trip
@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    """A random transformers Llama (GQA) with a byte-level BPE tokenizer, saved as an HF dir."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                   "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(["What is the capital of France? Paris is."] * 20, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                                eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   rope_theta=1000.0, initializer_range=0.2)
    model = transformers.LlamaForCausalLM(cfg).eval()
    d = tmp_path_factory.mktemp("hf_llama")
    model.save_pretrained(d)
    fast.save_pretrained(d)
    return d, model, fast


@pytest.mark.parametrize("outtype", ["f32", "q8_0", "q4_0"])
def test_gguf_round_trip_agrees_with_transformers(outtype, hf_llama, tmp_path):
    transformers = pytest.importorskip("transformers")
    d, ref, fast = hf_llama
    model, tok = scratchlm.load(d)
    path = writer.save_gguf(tmp_path / "m.gguf", model, tok, outtype=outtype)
    back, tok2 = scratchlm.load(path)  # scratchlm.load takes a GGUF file too
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    x = torch.randint(0, tok.vocab_size, (2, 20))
    with torch.no_grad():
        ours_logits, their_logits, ref_logits = back(x), theirs(x).logits, ref(x).logits
    # Both readers dequantise the same bytes the same way.
    readers = (ours_logits - their_logits).abs().max().item()
    vs_ref = (ours_logits - ref_logits).abs().max().item()
    print(f"gguf {outtype}: ours vs transformers {readers:.2e}, vs the HF model {vs_ref:.2e}")
    assert readers < 1e-4
    # q8_0 / q4_0 round every weight to 8 / 4 bits: sanity bounds only (the llama.cpp tests
    # measure what quantisation costs in perplexity).
    if outtype == "q4_0":  # 4 bits: each matrix within 4-bit rounding, the output one at 8 bits
        for k, v in model.state_dict().items():
            err = ((back.state_dict()[k] - v).pow(2).mean() / v.pow(2).mean()).sqrt().item()
            assert err < (0.01 if k == "lm_head.weight" or v.ndim == 1 else 0.12), k
    else:
        tol = 1e-4 if outtype == "f32" else 0.15 * ref_logits.abs().max().item()
        assert (ours_logits - ref_logits).abs().max().item() < tol
    text = "What is the capital of France?<|im_end|>"
    assert tok2.encode(text) == tok.encode(text)
    their_tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert their_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert (tok2.bos_id, tok2.eos_id, tok2.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert tok2.chat_template == fast.chat_template


def test_llama3_rope_scaling_survives_gguf(hf_llama, tmp_path):
    d, _, _ = hf_llama
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 1000.0, "factor": 8.0,
                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192}
    (d / "config.json").write_text(json.dumps(cfg))
    try:
        model, tok = scratchlm.load(d)
    finally:
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000.0}
        (d / "config.json").write_text(json.dumps(cfg))
    back, _ = ours.load_gguf(writer.save_gguf(tmp_path / "m.gguf", model, tok))
    assert back.config.rope_type == "llama3" and back.config.rope_factor == 8.0
    assert back.config.rope_original_max_len == 8192
    x = torch.randint(0, tok.vocab_size, (1, 30))
    with torch.no_grad():
        assert (back(x) - model(x)).abs().max().item() < 1e-5


def test_sentencepiece_vocabulary_tokenizes_like_sentencepiece(tmp_path):
    """tokenizer.ggml.model "llama" (Llama 2, Mistral, TinyLlama): merges recovered from the
    scores, byte fallback, the prefix space; ids equal sentencepiece's own."""
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    import io

    from sentencepiece import sentencepiece_model_pb2

    buf = io.BytesIO()
    texts = ["The quick brown fox jumps over the lazy dog.", "Hello world, 我喜欢吃苹果!"] * 40
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=300, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2, remove_extra_whitespaces=False,
        normalization_rule_name="identity")
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buf.getvalue())
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([p.piece for p in proto.pieces])
    w.add_token_scores([p.score for p in proto.pieces])
    w.add_token_types([p.type for p in proto.pieces])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template("{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}")
    w.add_tensor("token_embd.weight", np.zeros((len(proto.pieces), 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = ours.tokenizer_from_metadata(ours.read_metadata(gguf.GGUFReader(str(tmp_path / "t.gguf"))))
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.kind) == (1, 2, 0, "sentencepiece")
    assert tok.chat_template.startswith("{{ bos_token }}")
    for s in ["The quick brown fox", "Hello world, 我喜欢吃苹果!", "unseen ✓ émoji 😀",
              "  two  spaces", "a\nb"]:
        ids = tok.encode(s)
        assert ids == sp.encode(s), s  # byte fallback for unseen characters included
        assert tok.decode(ids) == s
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
    s = "The lazy dog, 我喜欢 ✓"  # (transformers differs from sentencepiece on leading spaces)
    assert theirs(s, add_special_tokens=False)["input_ids"] == tok.encode(s)
