"""Attention: the kernels the Transformer families share, and the RNN attentions.

`causal_attention` is scaled dot-product attention (Vaswani et al. 2017) through
`F.scaled_dot_product_attention`, with an optional KV cache and grouped-query attention
(Ainslie et al. 2023): k/v may have fewer heads than q. `padded_attention` attends over keys
with padding (encoder self-attention, cross-attention). `RNNAttention` is the additive
(Bahdanau) and dot/general/concat (Luong) attention of RNN encoder-decoders.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.models import kernels
from scratchlm.models.cache import KVCache
from scratchlm.models.layers import rotate

_captured: list[list[torch.Tensor]] = []  # the open capture_attention() lists, innermost last


@contextlib.contextmanager
def capture_attention() -> Iterator[list[torch.Tensor]]:
    """Within it, every `causal_attention` call (one a layer, in order) also appends its
    attention weights (B, nh, T, S) to the yielded list, for plots (`scratchlm attention` on a
    decoder-only model). They are computed explicitly, as SDPA does not return them; the
    output is unchanged."""
    weights: list[torch.Tensor] = []
    _captured.append(weights)
    try:
        yield weights
    finally:
        _captured.remove(weights)


def _native_ok(x: torch.Tensor, cache: KVCache | None) -> bool:
    """Whether a native kernel may take this one-token step (models/kernels): fp32 x on CPU
    into a contiguous fp32 KVCache with room for it, no autograd recording, no
    `capture_attention()` open (attention maps need the modules), the kernels built here."""
    return (isinstance(cache, KVCache) and not _captured and x.dtype == torch.float32
            and x.device.type == "cpu" and cache.k.dtype == torch.float32 and cache.k.is_contiguous()
            and cache.v.is_contiguous() and cache.length < cache.max_len
            and not (torch.is_grad_enabled() and (x.requires_grad or cache.k.requires_grad))
            and kernels.library() is not None)


def one_call_step(model: nn.Module, x: torch.Tensor, cache: KVCache | None) -> bool:
    """Whether this decoding step may run every layer in one native call (the model's
    `fused_decode`, models/kernels DecodeLayers): one token per row (x (B, 1, d)), inference
    mode (no dropout), and what `_native_ok` asks."""
    return (model.fused_decode is not None and not model.training and x.shape[1] == 1
            and _native_ok(x, cache))


def _record(q: torch.Tensor, k: torch.Tensor, past: int) -> None:
    """Append softmax(q k^T / sqrt(hd)) with query i seeing keys 0 .. past+i."""
    rep = q.shape[1] // k.shape[1]  # GQA: each kv head serves `rep` query heads
    k = k.repeat_interleave(rep, dim=1)  # (B, nh, S, hd)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, nh, T, S)
    t, s = scores.shape[-2:]
    causal = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=past)
    _captured[-1].append(scores.masked_fill(~causal, float("-inf")).softmax(-1))


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """`F.scaled_dot_product_attention`, except that on CPU bf16 q/k/v that need gradients
    (training under bf16 autocast) are attended in fp32, out of autocast, and the output cast
    back. torch's CPU flash-attention backward is slow in bf16: forward + backward measured on
    a 2-core Sapphire Rapids, ms in bf16 / fp32: SmolLM2's (4, 9 heads, 128, 64) 10.0 / 4.6,
    the nanoGPT recipe's (12, 4, 64, 32) 7.7 / 1.6, GPT-2's (4, 12, 256, 64) 22.9 / 23.2. The
    casts are of activations, not weights, and attention keeps fp32 precision."""
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and q.requires_grad:
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cache: KVCache | None,
    layer: int,
    dropout_p: float = 0.0,
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """q: (B, nh, T, hd); k, v: (B, n_kv, T, hd) for the new positions. Returns (B, nh, T, hd).

    `rotary`: RoPE's (cos, sin) at the new positions, (T, hd) or (B, 1, T, hd) per row
    (`RotaryEmbedding.rows`), applied here to q and k: decoding one token, the rotation, the
    cache write and the attention are then one kernel call (`_decode_one`)."""
    t = q.shape[2]
    if t == 1 and cache is not None and dropout_p == 0.0:
        y = _decode_one(q, k, v, cache, layer, rotary)
        if y is not None:
            return y
    if rotary is not None:
        q, k = rotate(q, *rotary), rotate(k, *rotary)
    past = 0
    padded = None
    if cache is not None:
        past = cache.length
        padded = cache.attention_mask(t)  # (B, 1, T, past+T) with left-padded rows, else None
        k, v = cache.update(layer, k, v)  # (B, n_kv, past+T, hd)
    if _captured and padded is None:
        _record(q, k, past)
    # GQA: each kv head serves n_head // n_kv query heads; SDPA broadcasts without copying.
    gqa = k.shape[1] != q.shape[1]
    if padded is not None:
        return sdpa(q, k, v, attn_mask=padded, dropout_p=dropout_p, enable_gqa=gqa)
    if past == 0:
        return sdpa(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=gqa)
    if t == 1:
        # One new token attends to everything cached: no mask needed.
        return sdpa(q, k, v, dropout_p=dropout_p, enable_gqa=gqa)
    # Several new tokens after a prefix: query i sees keys 0 .. past+i.
    s = k.shape[2]
    mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=past)
    return sdpa(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)


def _decode_one(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache, layer: int,
    rotary: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor | None:
    """One token per row through `kernels.attend_one` (RoPE, cache write and attention in one
    call; ~40 PyTorch ops a layer otherwise), or None where it does not apply: no kernels on
    this CPU, not fp32 on CPU, autograd recording, attention weights being captured, or
    more than `kernels.MAX_HEAD_DIM` per head (`_native_ok`). Same results as the path below
    to ~1e-6 (tests/models/test_decode_kernels.py)."""
    if not _native_ok(q, cache) or q.shape[-1] > kernels.MAX_HEAD_DIM:
        return None
    if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
        return None
    if not (k.dtype == v.dtype == torch.float32) or (rotary is not None and rotary[0].dtype != torch.float32):
        return None
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    k_cache, v_cache = cache.buffers()
    return kernels.attend_one(q, k, v, k_cache[layer], v_cache[layer], cache.length, rotary=rotary, pad=cache.pad)


def padded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor,
    *,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention over keys some of which are padding (encoder self-attention, cross-attention).

    q: (B, nh, T, hd); k, v: (B, nh, S, hd); key_mask: (B, S) bool, True at real tokens.
    Returns ((B, nh, T, hd), weights (B, nh, T, S) if need_weights else None). With
    need_weights the softmax is computed here (SDPA does not return it); otherwise SDPA."""
    mask = key_mask[:, None, None, :]  # (B, 1, 1, S), broadcast over heads and queries
    if not need_weights:
        return sdpa(q, k, v, attn_mask=mask, dropout_p=dropout_p), None
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, nh, T, S)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    out = F.dropout(weights, dropout_p) @ v if dropout_p > 0 else weights @ v
    return out, weights


class RNNAttention(nn.Module):
    """Attention of one decoder state over the encoder states, for RNN encoder-decoders.

        score(h, m_s) = v^T tanh(W_q h + W_k m_s)     "bahdanau" (Bahdanau et al. 2015)
                      = h^T m_s                       "luong_dot" (Luong et al. 2015)
                      = h^T W_a m_s                   "luong_general"
                      = v^T tanh(W_a [h; m_s])        "luong_concat"
        a = softmax_s(score) over real (unpadded) source positions;  c = sum_s a_s m_s

    The part that depends only on the source (W_k m, W_a m, or the m-half of W_a [h; m]) is
    computed once per source by `keys(memory)` and kept in the decoding state.
    """

    KINDS = ("bahdanau", "luong_dot", "luong_general", "luong_concat")

    def __init__(self, kind: str, d_query: int, d_memory: int) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(kind)
        self.kind = kind
        if kind == "luong_dot" and d_query != d_memory:
            raise ValueError("luong_dot needs equal query and memory sizes")
        if kind == "luong_general":
            self.W_a = nn.Linear(d_memory, d_query, bias=False)
        elif kind in ("bahdanau", "luong_concat"):
            # [h; m] @ W_a^T = h @ W_q^T + m @ W_k^T: the concat score is the additive one.
            self.W_q = nn.Linear(d_query, d_query, bias=False)
            self.W_k = nn.Linear(d_memory, d_query, bias=True)
            self.v = nn.Linear(d_query, 1, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """(B, S, d_memory) -> (B, S, d_query): the source side of the score."""
        if self.kind == "luong_dot":
            return memory
        if self.kind == "luong_general":
            return self.W_a(memory)
        return self.W_k(memory)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query: (B, T, d_query); keys: (B, S, d_query); memory: (B, S, d_memory);
        mask: (B, S) True at real tokens. Returns context (B, T, d_memory), weights (B, T, S)."""
        if self.kind in ("luong_dot", "luong_general"):
            scores = query @ keys.transpose(1, 2)  # (B, T, S)
        else:
            hidden = torch.tanh(self.W_q(query)[:, :, None, :] + keys[:, None, :, :])  # (B, T, S, d)
            scores = self.v(hidden).squeeze(-1)  # (B, T, S)
        weights = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
        return weights @ memory, weights  # (B, T, d_memory), (B, T, S)
