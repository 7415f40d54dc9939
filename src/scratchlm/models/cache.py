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

    Prompts of different lengths share a batch left-padded: `pad` (B,) is how many padding
    positions open each row (`set_left_padding`). Their keys are masked out
    (`attention_mask`) and each row's token positions count from its first real token
    (`positions`), so a padded row computes what it computes alone.
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
        self.pad: torch.Tensor | None = None  # (B,) left-padding positions of each row
        self._mask: tuple | None = None  # (length, t, pad, mask) of the last attention_mask call
        self._spare: tuple[torch.Tensor, torch.Tensor] | None = None  # reorder's second buffer

    def set_left_padding(self, pad: torch.Tensor) -> None:
        """Rows start with pad[b] padding positions (set before the first forward pass)."""
        if self.length:
            raise ScratchLMError("left padding is set before the prompt is fed, on an empty cache")
        if pad.shape != (self.batch_size,):
            raise ScratchLMError(f"pad must be ({self.batch_size},), one count a row; got {tuple(pad.shape)}")
        self.pad = pad.to(device=self.k.device, dtype=torch.long) if bool(pad.any()) else None

    def positions(self, start: int, t: int) -> torch.Tensor | None:
        """(B, t) positions of the next t tokens counted from each row's first real token
        (0 on padding); None without left padding (positions are start .. start+t-1)."""
        if self.pad is None:
            return None
        at = torch.arange(start, start + t, device=self.pad.device)  # (t,)
        return (at[None, :] - self.pad[:, None]).clamp_min(0)  # (B, t)

    def attention_mask(self, t: int) -> torch.Tensor | None:
        """(B, 1, t, length + t) bool for the next t queries over all keys (call before
        `update`): causal, no padding keys, and a padding query sees itself (no empty row,
        whose softmax would be NaN); None without left padding."""
        if self.pad is None:
            return None
        m = self._mask
        if m is not None and m[0] == self.length and m[1] == t and m[2] is self.pad:
            return m[3]  # every layer of one forward pass asks for the same mask
        end = self.length + t
        keys = torch.arange(end, device=self.pad.device)  # (S,)
        queries = keys[self.length :]  # (t,) absolute positions
        causal = keys[None, :] <= queries[:, None]  # (t, S)
        real = keys[None, :] >= self.pad[:, None]  # (B, S)
        mask = (causal[None] & real[:, None]) | (keys[None, :] == queries[:, None])[None]  # (B, t, S)
        self._mask = (self.length, t, self.pad, mask[:, None])
        return self._mask[3]

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
        """Select batch rows (beam search): row i of the result is row index[i] of this cache.

        Only the filled positions [0, length) are copied, into a second buffer that is kept
        for the next reorder of the same batch size (beam search reorders every step: copying
        all max_len positions, or allocating fresh buffers, costs many times more than the
        positions in use). Positions past `length` hold stale values and are never read."""
        if self.pad is not None:
            self.pad = self.pad.index_select(0, index)
            if not bool(self.pad.any()):  # the padded rows have left: no mask needed
                self.pad = None
        if self.k.requires_grad or self.v.requires_grad:  # keep the autograd graph (no out=)
            self.k, self.v, self._spare = self.k.index_select(1, index), self.v.index_select(1, index), None
            return self
        n, end = index.shape[0], self.length
        shape = (self.k.shape[0], n, *self.k.shape[2:])
        if self._spare is not None and self._spare[0].shape == shape:
            new_k, new_v = self._spare
        else:
            new_k = torch.empty(shape, device=self.k.device, dtype=self.k.dtype)
            new_v = torch.empty(shape, device=self.v.device, dtype=self.v.dtype)
        torch.index_select(self.k[:, :, :, :end], 1, index, out=new_k[:, :, :, :end])
        torch.index_select(self.v[:, :, :, :end], 1, index, out=new_v[:, :, :, :end])
        self._spare = (self.k, self.v) if self.k.shape == shape else None
        self.k, self.v = new_k, new_v
        return self


class SourceRows:
    """Which source each batch row decodes, so a reorder can skip what depends on the source
    alone (encoder states, cross-attention keys/values, the source mask).

    Beam search reorders rows at every step, but only among the beams of one source: after
    the first expansion the source of every row stays the same, and copying the source's
    tensors would move the same numbers into the same places (for a Transformer
    encoder-decoder, n_layer x B x K x S x d_model floats, every step)."""

    def __init__(self, batch_size: int, device: torch.device | str) -> None:
        self.ids = torch.arange(batch_size, device=device)  # (B,) the source of each row

    def moved(self, index: torch.Tensor) -> bool:
        """Record the reorder `index` (row i <- row index[i]); True if some row now decodes a
        different source than before (so the per-source tensors must be selected too)."""
        new = self.ids.index_select(0, index)
        moved = new.shape != self.ids.shape or not torch.equal(new, self.ids)
        self.ids = new
        return moved


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


class Seq2SeqRNNState(RNNState):
    """Decoding state of an RNN encoder-decoder: the decoder's hidden state plus what it
    attends over, all batch-first except h/c:

        h, c     (n_layer, B, H)  decoder hidden (and cell) state
        memory   (B, S, Hm)       encoder states;  keys (B, S, H): their precomputed score side
        mask     (B, S) bool      True at real source tokens
        feed     (B, H)           attentional vector of the previous step (input feeding)
        attention (B, T, S)       the attention weights of the most recent call (for plots)
    """

    def __init__(
        self, *, h: torch.Tensor, c: torch.Tensor | None, memory: torch.Tensor,
        keys: torch.Tensor | None, mask: torch.Tensor, feed: torch.Tensor | None,
    ) -> None:
        super().__init__(h=h, c=c)
        self.memory, self.keys, self.mask, self.feed = memory, keys, mask, feed
        self.attention: torch.Tensor | None = None
        self.sources = SourceRows(mask.shape[0], mask.device)

    def reorder(self, index: torch.Tensor) -> Seq2SeqRNNState:
        super().reorder(index)
        if self.sources.moved(index):  # else every row keeps its source's memory
            self.memory = self.memory.index_select(0, index)
            self.mask = self.mask.index_select(0, index)
            if self.keys is not None:
                self.keys = self.keys.index_select(0, index)
        if self.feed is not None:
            self.feed = self.feed.index_select(0, index)
        if self.attention is not None:
            self.attention = self.attention.index_select(0, index)
        return self


class EncoderDecoderCache:
    """Decoding state of a Transformer encoder-decoder: the decoder's self-attention KV cache,
    which grows by one position a step, and the cross-attention keys/values of the source,
    computed once per source:

        self_kv            KVCache, (n_layer, B, n_head, max_len, head_dim)
        cross_k, cross_v   (n_layer, B, n_head, S, head_dim)
        mask               (B, S) bool, True at real source tokens
    """

    def __init__(
        self, *, self_kv: KVCache, cross_k: torch.Tensor, cross_v: torch.Tensor, mask: torch.Tensor
    ) -> None:
        self.self_kv, self.cross_k, self.cross_v, self.mask = self_kv, cross_k, cross_v, mask
        self.sources = SourceRows(mask.shape[0], mask.device)

    @property
    def length(self) -> int:
        return self.self_kv.length

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    def check_room(self, t: int) -> None:
        self.self_kv.check_room(t)

    def advance(self, t: int) -> None:
        self.self_kv.advance(t)

    def reorder(self, index: torch.Tensor) -> EncoderDecoderCache:
        self.self_kv.reorder(index)
        if self.sources.moved(index):  # else every row keeps its source's keys/values
            self.cross_k = self.cross_k.index_select(1, index)
            self.cross_v = self.cross_v.index_select(1, index)
            self.mask = self.mask.index_select(0, index)
        return self


class EncoderOutput:
    """What an encoder hands the decoder: `model.encode(src_ids, src_mask)` returns it.

        states  (B, S, Hm)   one vector per source token
        mask    (B, S) bool  True at real source tokens
        final   RNN encoders only: the decoder's initial (h, c), each (n_layer, B, H)
    """

    def __init__(
        self, states: torch.Tensor, mask: torch.Tensor,
        final: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> None:
        self.states, self.mask, self.final = states, mask, final

    @property
    def batch_size(self) -> int:
        return self.states.shape[0]

    def reorder(self, index: torch.Tensor) -> EncoderOutput:
        final = None
        if self.final is not None:
            h, c = self.final
            final = (h.index_select(1, index), None if c is None else c.index_select(1, index))
        return EncoderOutput(self.states.index_select(0, index), self.mask.index_select(0, index),
                             final)
