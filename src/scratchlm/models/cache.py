"""Explicit decoding state: the KV cache of Transformer decoders.

The decoder protocol (DESIGN.md): `cache = model.init_cache(batch_size=B, max_len=L)`, then
`logits, cache = model(tokens, cache=cache)` any number of times. The cache is a plain value
that beam search can `reorder(index)`; the model never hides state of its own.
"""

from __future__ import annotations

import torch

from scratchlm.errors import ScratchLMError


class KVCache:
    """Preallocated keys/values for every layer: (n_layer, B, n_kv_head, max_len, head_dim).

    `length` is how many positions are filled. A forward pass writes its new keys/values at
    [length, length + T) in every layer, then calls `advance(T)`.
    """

    def __init__(
        self,
        *,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        head_dim: int,
        max_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def check_room(self, t: int) -> None:
        if self.length + t > self.max_len:
            raise ScratchLMError(
                f"KV cache holds {self.max_len} positions; {self.length} are used and {t} more "
                f"were asked for (prompt plus new tokens longer than the cache)"
            )

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv, T, hd) at the current position; return all keys/values so far."""
        t = k.shape[2]
        end = self.length + t
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, n_kv, end, hd)

    def advance(self, t: int) -> None:
        self.length += t

    def reorder(self, index: torch.Tensor) -> KVCache:
        """Select batch rows (beam search): row i of the result is row index[i] of this cache."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)
        return self


class RNNState:
    """Hidden state of a stacked RNN: h (and c for an LSTM), each (n_layer, B, H).

    The layer dimension comes first, as torch.nn.RNN modules want it; the batch is dim 1."""

    def __init__(self, *, h: torch.Tensor, c: torch.Tensor | None = None) -> None:
        self.h = h
        self.c = c
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.h.shape[1]

    def reorder(self, index: torch.Tensor) -> RNNState:
        """Select batch rows (beam search): row i of the result is row index[i]."""
        self.h = self.h.index_select(1, index)
        if self.c is not None:
            self.c = self.c.index_select(1, index)
        return self
