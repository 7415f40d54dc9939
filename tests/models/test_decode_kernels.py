"""decode.c: one token's attention (`attend_one`) and whole int8 decoder layers in one call
(`DecodeLayers`) compute what the PyTorch modules compute, and run only where they apply."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from scratchlm.models import attention, kernels
from scratchlm.models.attention import capture_attention
from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.models.layers import RotaryEmbedding, rotate
from scratchlm.models.llama import Llama, LlamaConfig
from scratchlm.models.quant import apply_precision, choose_precision
from scratchlm.models.seq2seq_transformer import Seq2SeqTransformer, Seq2SeqTransformerConfig

pytestmark = pytest.mark.skipif(kernels.library() is None, reason=f"scratchlm's kernels: {kernels.why_not()}")


def _reference(q, k, v, kc, vc, past, rotary, pad):
    """RoPE, cache write and SDPA through torch ops, as causal_attention does them."""
    if rotary is not None:
        q, k = rotate(q, *rotary), rotate(k, *rotary)
    kc[:, :, past : past + 1], vc[:, :, past : past + 1] = k, v
    keys, vals = kc[:, :, : past + 1], vc[:, :, : past + 1]
    mask = None
    if pad is not None:  # keys before pad[r] are padding; a padding query sees itself
        pos = torch.arange(past + 1)
        mask = ((pos[None, :] >= pad[:, None]) | (pos[None, :] == past))[:, None, None, :]
    return F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


# (B, n_head, n_kv, hd, past): GQA with RoPE, MHA without, hd not a multiple of 16, enough
# work for threads, more positions than the kernel's stack buffer
@pytest.mark.parametrize("b,nh,nkv,hd,past", [(1, 9, 3, 64, 40), (3, 4, 4, 40, 7), (2, 12, 12, 64, 200),
                                                (1, 2, 1, 32, 1500), (2, 4, 2, 16, 0)])
@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_attend_one_is_rope_cache_write_and_sdpa(b, nh, nkv, hd, past, rope, padded):
    g = torch.Generator().manual_seed(past + hd)
    q, k, v = (torch.randn(b, h, 1, hd, generator=g) for h in (nh, nkv, nkv))
    kc, vc = torch.randn(b, nkv, past + 5, hd, generator=g), torch.randn(b, nkv, past + 5, hd, generator=g)
    rotary = None
    if rope:  # per-row positions, as left padding gives
        table = RotaryEmbedding(hd, max_len=past + 1)
        pos = torch.randint(0, past + 1, (b, 1), generator=g)
        rotary = table.rows(past, 1, pos)  # (B, 1, 1, hd) each
    pad = torch.randint(0, past + 2, (b,), generator=g) if padded else None  # past + 1: a padding query
    kc2, vc2 = kc.clone(), vc.clone()
    want = _reference(q, k, v, kc2, vc2, past, rotary, pad)
    got = kernels.attend_one(q, k, v, kc, vc, past, rotary=rotary, pad=pad)
    assert got.shape == (b, nh, 1, hd)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kc, kc2, rtol=1e-6, atol=1e-6)  # the new key written, rotated
    assert torch.equal(vc, vc2)


def _model(family, quantize, seed=0, **cfg):
    torch.manual_seed(seed)
    if family == "llama":
        m = Llama(LlamaConfig(vocab_size=97, n_layer=3, n_head=6, n_kv_head=2, d_model=96, block_size=128))
    elif family == "llama-hd20":  # a head size that is not a multiple of 16
        m = Llama(LlamaConfig(vocab_size=97, n_layer=2, n_head=6, n_kv_head=3, d_model=120, block_size=128))
    elif family == "gpt":
        m = GPT(GPTConfig(vocab_size=97, n_layer=3, n_head=4, d_model=64, block_size=128))
    else:
        m = Seq2SeqTransformer(Seq2SeqTransformerConfig(vocab_size=97, n_layer=3, n_head=4, d_model=64,
                                                        block_size=64, dropout=0.0, **cfg))
    with torch.no_grad():
        for p in m.parameters():  # larger than init, so that every part of a layer matters
            p.normal_(0, 0.2)
    return apply_precision(m, choose_precision(dtype="float32", quantize=quantize, device="cpu"))


def _steps(m, ids, cache, monkeypatch):
    """Each decoding step after a 5-token prompt, run both ways from copies of one cache:
    lists of the fused and the modules' logits (B, 1, vocab). The modules run all in PyTorch
    (no `attend_one`, which shares code with the fused layers)."""
    fused = m.fused_decode
    m.fused_decode = None
    _, cache = m(ids[:, :5], cache=cache)
    out = {True: [], False: []}
    for i in range(5, ids.shape[1]):
        for use in (True, False):
            m.fused_decode = fused if use else None
            with monkeypatch.context() as mp:
                if not use:
                    mp.setattr(attention, "_decode_one", lambda *a: None)
                logits, c = m(ids[:, i : i + 1], cache=copy.deepcopy(cache))
            out[use].append(logits)
        cache = c  # go on from the modules' cache
    m.fused_decode = fused
    return out[True], out[False]


def _check_close(got, want):
    scale = max(w.abs().max().item() for w in want)
    diffs = sorted((g - w).abs().max().item() for g, w in zip(got, want, strict=True))
    # The same int8 products; norms and softmax sum in another order, which now and then
    # moves an activation across a rounding step of its int8 quantization: rare, small steps.
    assert diffs[len(diffs) // 2] < 1e-5 * scale, diffs
    assert diffs[-1] < 0.05 * scale, diffs
    same = sum(torch.equal(g.argmax(-1), w.argmax(-1)) for g, w in zip(got, want, strict=True))
    assert same >= len(got) - 1


@pytest.mark.parametrize("family", ["llama", "gpt"])
@pytest.mark.parametrize("quantize", ["int8", "int8-dynamic"])
@pytest.mark.parametrize("padded", [False, True])
def test_fused_layers_compute_what_the_blocks_compute(family, quantize, padded, monkeypatch):
    m = _model(family, quantize)
    assert isinstance(m.fused_decode, kernels.DecodeLayers)
    ids = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(1))
    cache = m.init_cache(batch_size=3, max_len=24)
    if padded:  # a strided view, as a caller may pass
        cache.set_left_padding(torch.tensor([[0, 9], [2, 9], [4, 9]])[:, 0])
    with torch.inference_mode():
        _check_close(*_steps(m, ids, cache, monkeypatch))


def test_fused_layers_at_many_rows_and_an_odd_head_size(monkeypatch):
    # 17 rows: w8a8 on AMX tiles where the CPU grants them; head size 20
    m = _model("llama-hd20", "int8-dynamic")
    ids = torch.randint(0, 97, (17, 12), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        _check_close(*_steps(m, ids, m.init_cache(batch_size=17, max_len=12), monkeypatch))


# Marian's shape (post-norm, swish) and the others: pre-norm, relu, erf GELU
@pytest.mark.parametrize("pre_norm,activation", [(False, "swish"), (True, "relu"), (True, "gelu")])
@pytest.mark.parametrize("quantize", ["int8", "int8-dynamic"])
def test_fused_encoder_decoder_layers_compute_what_the_layers_compute(pre_norm, activation, quantize, monkeypatch):
    m = _model("seq2seq", quantize, pre_norm=pre_norm, activation=activation)
    assert isinstance(m.fused_decode, kernels.DecodeLayers)
    g = torch.Generator().manual_seed(2)
    src, ids = torch.randint(0, 97, (3, 11), generator=g), torch.randint(0, 97, (3, 20), generator=g)
    src_mask = torch.arange(11)[None, :] < torch.tensor([11, 6, 3])[:, None]  # padded sources
    with torch.inference_mode():
        cache = m.init_cache(batch_size=3, max_len=20, memory=m.encode(src, src_mask))
        _check_close(*_steps(m, ids, cache, monkeypatch))


def test_fused_layers_replace_the_blocks_only_where_they_apply(monkeypatch):
    m = _model("llama", "int8")
    calls = []
    block_forward = type(m.model.layers[0]).forward
    monkeypatch.setattr(type(m.model.layers[0]), "forward", lambda self, *a, **k: calls.append(1) or block_forward(self, *a, **k))
    ids = torch.randint(0, 97, (2, 8))
    with torch.inference_mode():
        cache = m.init_cache(batch_size=2, max_len=16)
        _, cache = m(ids, cache=cache)  # a prompt: the blocks
        assert len(calls) == 3
        _, cache = m(ids[:, :1], cache=cache)  # one token: every layer in one call
        assert len(calls) == 3
        with capture_attention() as weights:  # attention maps need the blocks
            _, cache = m(ids[:, :1], cache=cache)
        assert len(calls) == 6 and len(weights) == 3
        m(ids[:, :1])  # no cache: the blocks
        assert len(calls) == 9
        m.train()  # training mode (dropout): the blocks
        _, cache = m(ids[:, :1], cache=cache)
    assert len(calls) == 12


def test_no_fused_layers_without_int8_kernels():
    torch.manual_seed(0)
    m = Llama(LlamaConfig(vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, d_model=64, block_size=64))
    assert m.fused_decode is None  # fp32
    assert kernels.DecodeLayers.build(m.layer_specs()) is None  # nn.Linear layers, unfused q/k/v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_rows_is_index_select_over_the_filled_positions(dtype):
    src = torch.randn(3, 5, 4, 12, 8).to(dtype)  # (n_layer, B, H, max_len, hd)
    index = torch.tensor([4, 4, 0, 2, 1, 3, 3])  # repeats, a new batch size
    dst = torch.zeros(3, 7, 4, 12, 8, dtype=dtype)
    kernels.gather_rows(src, dst, index, 9)
    assert torch.equal(dst[:, :, :, :9], src.index_select(1, index)[:, :, :, :9])
    assert not dst[:, :, :, 9:].any()  # past `end`: untouched


@pytest.mark.parametrize("rows,v,k", [(40, 58101, 10), (3, 17, 4), (2, 1000, 256), (5, 33, 33)])
def test_top_logprobs_is_topk_of_log_softmax(rows, v, k):
    x = torch.randn(rows, v) * 4
    x[0, 5] = x[0, 9] = x[0].max() + 1  # a tie for the top: lower index first
    vals, idx = kernels.top_logprobs(x, k)
    ref = x.log_softmax(-1)
    want = ref.topk(k, dim=-1).values
    torch.testing.assert_close(vals, want, rtol=0, atol=1e-5)  # lse summed in another order
    torch.testing.assert_close(ref.gather(1, idx), vals, rtol=0, atol=1e-5)  # each value is its index's
    assert (vals[:, 1:] <= vals[:, :-1]).all()
    assert idx[0, :2].tolist() == [5, 9]
    assert all(len(set(r)) == k for r in idx.tolist())  # no index twice


def test_top_logprobs_with_masked_logits():
    x = torch.full((2, 50), float("-inf"))
    x[0, [3, 7, 40]] = torch.tensor([1.0, 3.0, 2.0])
    x[1] = torch.randn(50)
    vals, idx = kernels.top_logprobs(x, 5)
    assert idx[0, :3].tolist() == [7, 40, 3]
    assert torch.isinf(vals[0, 3:]).all() and set(idx[0, 3:].tolist()) == {0, 1}  # filled with -inf at the first others
    torch.testing.assert_close(vals[0, :3], x[0].log_softmax(-1)[[7, 40, 3]])
    torch.testing.assert_close(vals[1], x[1].log_softmax(-1).topk(5).values)


def test_top_logprobs_nan_and_bad_k():
    x = torch.randn(3, 2560)
    x[0, 371] = x[1, 115] = float("nan")  # lane 3 of a chunk's last block: NaN must not become a chunk max
    vals, idx = kernels.top_logprobs(x, 3)
    clean = x.nan_to_num(nan=float("-inf"))
    assert torch.equal(idx[:2], clean[:2].topk(3).indices) and torch.isnan(vals[:2]).all()  # as log_softmax: NaN
    assert torch.equal(idx[2], x[2].topk(3).indices)
    few = torch.tensor([[float("nan"), 1.0, float("nan"), 2.0]])
    assert kernels.top_logprobs(few, 4)[1].tolist() == [[3, 1, 0, 2]]  # numbers first, then the first NaNs
    for k in (0, 5, kernels.MAX_TOPK + 1):
        with pytest.raises(ValueError, match="top_logprobs"):
            kernels.top_logprobs(torch.randn(2, 4 if k == 5 else 1000), k)
