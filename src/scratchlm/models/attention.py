"""Attention kernels shared by the Transformer families.

`causal_attention` is scaled dot-product attention (Vaswani et al. 2017) through
`F.scaled_dot_product_attention`, with an optional KV cache and grouped-query attention
(Ainslie et al. 2023): k/v may have fewer heads than q.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scratchlm.models.cache import KVCache


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cache: KVCache | None,
    layer: int,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """q: (B, nh, T, hd); k, v: (B, n_kv, T, hd) for the new positions. Returns (B, nh, T, hd)."""
    t = q.shape[2]
    past = 0
    if cache is not None:
        past = cache.length
        k, v = cache.update(layer, k, v)  # (B, n_kv, past+T, hd)
    # GQA: each kv head serves n_head // n_kv query heads; SDPA broadcasts without copying.
    gqa = k.shape[1] != q.shape[1]
    if past == 0:
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=gqa
        )
    if t == 1:
        # One new token attends to everything cached: no mask needed.
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, enable_gqa=gqa)
    # Several new tokens after a prefix: query i sees keys 0 .. past+i.
    s = k.shape[2]
    mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=past)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa
    )
