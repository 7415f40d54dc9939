"""Explicit decoding state: the KV cache of Transformer decoders, RNN hidden states, and the
states of encoder-decoders, all keeping one contract (`DecodeState`).

The decoder protocol (DESIGN.md): `cache = model.init_cache(batch_size=B, max_len=L)`, then
`logits, cache = model(tokens, cache=cache)` any number of times. The cache is a plain value
that beam search can `reorder(index)`; the model never hides state of its own.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from scratchlm.errors import ScratchLMError
from scratchlm.models import kernels


@runtime_checkable
class DecodeState(Protocol):
    """What generate, beam search and the server's batch engine may do with a decoding state.
    Every state here keeps this contract (tests/models/test_state_protocol.py checks it for
    every family); nothing outside models/ reads or writes a state's tensors or fields.

        batch_size          rows in the state
        length              positions fed so far, the same for every row (left padding
                            counts: a padded row's first positions are masked, not absent)
        check_room(t)       raise ScratchLMError if t more positions do not fit
        advance(t)          t positions were fed (the model calls it at the end of forward)
        reorder(index)      row i becomes row index[i] (beam search; rows leaving a batch)
        append_rows(other)  other's rows after ours (same kind, and same length where rows have
                            positions: rows joining a batch)
        grow(max_len)       room for max_len positions (a no-op where nothing is preallocated)

    Left padding (`set_left_padding(pad, skip=...)`) is there only for the states of models
    with `supports_left_padding` (decoder-only Transformers): KVCache.
    """

    @property
    def batch_size(self) -> int: ...
    @property
    def length(self) -> int: ...
    def check_room(self, t: int) -> None: ...
    def advance(self, t: int) -> None: ...
    def reorder(self, index: torch.Tensor) -> DecodeState: ...
    def append_rows(self, other: DecodeState) -> DecodeState: ...
    def grow(self, max_len: int) -> None: ...


def _same_kind(a, b) -> None:
    if type(a) is not type(b):
        raise TypeError(f"cannot append rows of {type(b).__name__} to {type(a).__name__}")
    if a.length != b.length:
        raise ValueError(f"states of different lengths ({a.length}, {b.length}) cannot share a batch")


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

    def set_left_padding(self, pad: torch.Tensor, *, skip: bool = False) -> None:
        """Rows start with pad[b] padding positions (set before the first forward pass).
        With `skip` (every row padded alike), those positions count as fed without being
        computed: they are masked, so nothing there is ever read (the server uses this to
        start a shorter prompt at a running batch's length)."""
        if self.length:
            raise ScratchLMError("left padding is set before the prompt is fed, on an empty cache")
        if pad.shape != (self.batch_size,):
            raise ScratchLMError(f"pad must be ({self.batch_size},), one count a row; got {tuple(pad.shape)}")
        self.pad = pad.to(device=self.k.device, dtype=torch.long).contiguous() if bool(pad.any()) else None
        if skip:
            if self.pad is not None and not bool((self.pad == self.pad[0]).all()):
                raise ValueError("skip needs the same padding in every row")
            self.length = int(pad[0]) if len(pad) else 0

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

    def buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole key and value buffers, (n_layer, B, n_kv, max_len, hd) each: for kernels
        that write position `length` themselves (models/kernels)."""
        return self.k, self.v

    def advance(self, t: int) -> None:
        self.length += t

    def append_rows(self, other: KVCache) -> KVCache:
        """Other's rows after ours (same length and max_len; each row keeps its padding)."""
        _same_kind(self, other)
        if self.max_len != other.max_len:
            raise ValueError("KV caches of different sizes cannot share a batch; grow() one first")
        if self.pad is not None or other.pad is not None:  # left padding per row (none: 0)
            self.pad = torch.cat([c.pad if c.pad is not None else
                                  torch.zeros(c.batch_size, dtype=torch.long, device=c.k.device)
                                  for c in (self, other)])
        self.k = torch.cat([self.k, other.k], 1)  # (n_layer, B_a + B_b, n_kv, max_len, hd)
        self.v = torch.cat([self.v, other.v], 1)
        self._mask = self._spare = None
        return self

    def grow(self, max_len: int) -> None:
        """Room for max_len positions (more than now: the filled ones are kept)."""
        extra = max_len - self.max_len
        if extra <= 0:
            return
        shape = (*self.k.shape[:3], extra, self.k.shape[4])
        self.k = torch.cat([self.k, self.k.new_zeros(shape)], 3)  # (L, B, n_kv, max_len, hd)
        self.v = torch.cat([self.v, self.v.new_zeros(shape)], 3)
        self._spare = None

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
        if self._gather_natively(index, new_k):  # one memcpy per layer, row and head (models/kernels)
            kernels.gather_rows(self.k, new_k, index, end)
            kernels.gather_rows(self.v, new_v, index, end)
        else:
            torch.index_select(self.k[:, :, :, :end], 1, index, out=new_k[:, :, :, :end])
            torch.index_select(self.v[:, :, :, :end], 1, index, out=new_v[:, :, :, :end])
        self._spare = (self.k, self.v) if self.k.shape == shape else None
        self.k, self.v = new_k, new_v
        return self

    def _gather_natively(self, index: torch.Tensor, new: torch.Tensor) -> bool:
        """Whether `reorder` may copy through kernels.gather_rows: CPU, contiguous buffers, the
        kernels built here, and every index in range (it does not check them)."""
        return (self.k.device.type == "cpu" and self.k.is_contiguous() and self.v.is_contiguous()
                and new.is_contiguous() and kernels.library() is not None
                and (len(index) == 0 or (int(index.min()) >= 0 and int(index.max()) < self.batch_size)))


class SourceRows:
    """Which source each batch row decodes, so a reorder can skip what depends on the source
    alone (encoder states, cross-attention keys/values, the source mask).

    Beam search reorders rows at every step, but only among the beams of one source: after
    the first expansion the source of every row stays the same, and copying the source's
    tensors would move the same numbers into the same places (for a Transformer
    encoder-decoder, n_layer x B x K x S x d_model floats, every step)."""

    def __init__(self, batch_size: int, device: torch.device | str) -> None:
        self.ids = torch.arange(batch_size, device=device)  # (B,) the source of each row

    def append(self, other: SourceRows) -> None:
        """Other's rows after ours, their sources numbered after ours."""
        offset = int(self.ids.max()) + 1 if len(self.ids) else 0
        self.ids = torch.cat([self.ids, other.ids + offset])

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

    def check_room(self, t: int) -> None:
        """An RNN's state has no positions to run out of."""

    def advance(self, t: int) -> None:
        self.length += t

    def grow(self, max_len: int) -> None:
        """Nothing is preallocated."""

    def reorder(self, index: torch.Tensor) -> RNNState:
        """Select batch rows (beam search): row i of the result is row index[i]."""
        self.h = self.h.index_select(1, index)
        if self.c is not None:
            self.c = self.c.index_select(1, index)
        return self

    def append_rows(self, other: RNNState) -> RNNState:
        """Other's rows after ours. An RNN has no positions, so rows fed different numbers of
        tokens may share a batch (`length` becomes the larger)."""
        if type(self) is not type(other):
            raise TypeError(f"cannot append rows of {type(other).__name__} to {type(self).__name__}")
        self.length = max(self.length, other.length)
        self.h = torch.cat([self.h, other.h], 1)  # (n_layer, B_a + B_b, H)
        if self.c is not None:
            self.c = torch.cat([self.c, other.c], 1)
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

    def append_rows(self, other: Seq2SeqRNNState) -> Seq2SeqRNNState:
        """Other's rows after ours (their sources must be as long as ours: one mask width)."""
        super().append_rows(other)
        self.memory = torch.cat([self.memory, other.memory], 0)  # (B_a + B_b, S, Hm)
        self.mask = torch.cat([self.mask, other.mask], 0)
        if self.keys is not None:
            self.keys = torch.cat([self.keys, other.keys], 0)
        if self.feed is not None:
            self.feed = torch.cat([self.feed, other.feed], 0)
        self.attention = None  # of the last call, which the rows did not share
        self.sources.append(other.sources)
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

    def grow(self, max_len: int) -> None:
        self.self_kv.grow(max_len)

    def append_rows(self, other: EncoderDecoderCache) -> EncoderDecoderCache:
        """Other's rows after ours (their sources must be as long as ours: one mask width)."""
        _same_kind(self, other)
        self.self_kv.append_rows(other.self_kv)
        self.cross_k = torch.cat([self.cross_k, other.cross_k], 1)  # (n_layer, B_a + B_b, nh, S, hd)
        self.cross_v = torch.cat([self.cross_v, other.cross_v], 1)
        self.mask = torch.cat([self.mask, other.mask], 0)
        self.sources.append(other.sources)
        return self

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
