"""Our Q4_K / Q6_K writers (interop/kquants.py) against the `gguf` package's readers, and the
tensor types a q4_k_m / q4_0 export gets (llama-quantize's choice). That the bytes equal
llama-quantize's own is checked where llama.cpp is built (tests/interop/test_llamacpp.py)."""

from __future__ import annotations

import numpy as np
import pytest

from scratchlm.interop.gguf_write import quant_type
from scratchlm.interop.kquants import QK_K, quantize_q4_k, quantize_q6_k

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType


def _weights() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 2 * QK_K)).astype(np.float32) * 0.02
    x[0] = 0  # an all-zero row
    x[1, :QK_K] = 0.5  # a constant super-block
    x[2, :32] = -3.0  # one sub-block far larger than the rest
    x[3] = np.abs(x[3])  # all positive: the min is 0
    x[4, 7] = 40.0  # an outlier
    return x


@pytest.mark.parametrize(("fn", "qtype", "nbytes", "bound"),
                         [(quantize_q4_k, Q.Q4_K, 144, 0.1), (quantize_q6_k, Q.Q6_K, 210, 0.025)])
def test_kquant_bytes_read_back_by_gguf(fn, qtype, nbytes, bound):
    x = _weights()
    data = fn(x)
    assert data.dtype == np.uint8 and data.shape == (24, 2 * nbytes)
    assert gguf.GGML_QUANT_SIZES[qtype] == (QK_K, nbytes)
    y = gguf.quants.dequantize(data, qtype)
    assert y.shape == x.shape
    assert np.all(y[0] == 0)  # zeros stay zeros
    assert np.abs(y[1, :QK_K] - 0.5).max() < 1e-3  # a constant block comes back
    rel = np.sqrt(((y - x) ** 2).mean(-1)[1:] / (x ** 2).mean(-1)[1:])  # per row
    assert rel.max() < bound, rel
    # 4-bit Q4_K is no worse than 4-bit Q4_0 (gguf's writer) on the same Gaussian rows
    if qtype == Q.Q4_K:
        q40 = gguf.quants.dequantize(gguf.quants.quantize(x[5:], Q.Q4_0), Q.Q4_0)
        ours = np.sqrt(((y[5:] - x[5:]) ** 2).mean() / (x[5:] ** 2).mean())
        assert ours < np.sqrt(((q40 - x[5:]) ** 2).mean() / (x[5:] ** 2).mean())


def test_kquants_refuse_rows_not_a_multiple_of_256():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_q4_k(np.zeros((2, 576), np.float32))


def test_q4_k_m_types_are_llama_quantize_s():
    n = 8  # use_more_bits(i, 8): layers 0, 3, 6, 7 get 6 bits in attn_v / ffn_down
    six = [i for i in range(n) if quant_type(f"blk.{i}.attn_v.weight", (256, 256), "q4_k_m", True, n) == Q.Q6_K]
    assert six == [0, 3, 6, 7]
    assert [quant_type(f"blk.{i}.ffn_down.weight", (256, 512), "q4_k_m", True, n) for i in (0, 1)] == [Q.Q6_K, Q.Q4_K]
    assert quant_type("blk.1.attn_qkv.weight", (768, 256), "q4_k_m", True, n) == Q.Q4_K  # gpt2's fused
    assert quant_type("blk.1.attn_q.weight", (256, 256), "q4_k_m", True, n) == Q.Q4_K
    assert quant_type("blk.1.attn_q.weight", (576, 576), "q4_k_m", True, n) == Q.Q5_0  # 576 % 256
    assert quant_type("blk.0.attn_v.weight", (192, 576), "q4_k_m", True, n) == Q.Q8_0  # Q6_K's fallback
    assert quant_type("blk.0.attn_v.weight", (192, 100), "q4_k_m", True, n) == Q.F16  # not even 32
    for outtype in ("q4_0", "q4_1", "q4_k_m"):  # the output matrix: 6 bits, or 8 where 256 fails
        assert quant_type("output.weight", (1000, 256), outtype, False, n) == Q.Q6_K
        assert quant_type("token_embd.weight", (1000, 256), outtype, True, n) == Q.Q6_K
        assert quant_type("token_embd.weight", (1000, 576), outtype, True, n) == Q.Q8_0
    assert quant_type("token_embd.weight", (1000, 256), "q4_k_m", False, n) == Q.Q4_K  # untied
    assert quant_type("token_embd.weight", (1000, 256), "q4_0", False, n) == Q.Q4_0
    assert quant_type("output.weight", (1000, 256), "q8_0", False, n) == Q.Q8_0
    assert quant_type("blk.0.attn_norm.weight", (256,), "q4_k_m", True, n) == Q.F32
    assert quant_type("position_embd.weight", (64, 256), "q4_k_m", True, n) == Q.F32


def test_kquants_encode_in_chunks_the_same(monkeypatch):
    from scratchlm.interop import kquants

    x = _weights()
    whole = quantize_q4_k(x), quantize_q6_k(x)
    monkeypatch.setattr(kquants, "CHUNK", 5)  # 48 super-blocks: 10 chunks, the last short
    assert np.array_equal(quantize_q4_k(x), whole[0]) and np.array_equal(quantize_q6_k(x), whole[1])
    assert quantize_q4_k(x[7]).shape == (2 * 144,)  # one row
