"""RNN encoder-decoder (Sutskever et al. 2014; Cho et al. 2014) with attention (Bahdanau et
al. 2015; Luong et al. 2015).

    encoder:  m_1..m_S = BiRNN(E[x_1..x_S])           (padding packed away)
    bridge:   s_0 = tanh(W_b [h_fwd; h_bwd])          per layer, from the final encoder states
    decoder, attention = "none":          s_t = RNN(E[y_{t-1}], s_{t-1});  o_t = s_t
             attention = "bahdanau":      c_t = attn(s_{t-1}, m);  s_t = RNN([E[y_{t-1}]; c_t], s_{t-1})
                                          o_t = tanh(W_c [s_t; c_t])
             attention = "luong_*":       s_t = RNN([E[y_{t-1}]; o_{t-1}], s_{t-1})   (input feeding)
                                          c_t = attn(s_t, m);  o_t = tanh(W_c [s_t; c_t])
    output:   p(y_t | y_<t, x) = softmax(W_out o_t + b)

The decoder protocol of the encoder-decoders (DESIGN.md):

    memory = model.encode(src_ids, src_mask)               # EncoderOutput
    logits = model(tgt_in, memory=memory)                  # (B, T, V), teacher forcing
    state = model.init_cache(batch_size=B, memory=memory)  # Seq2SeqRNNState
    logits, state = model(tokens, cache=state)             # step by step; state.reorder(index)

Steps that depend on the previous step's attention (Bahdanau; Luong with input feeding) run
as a loop over time; the others run the RNN over the whole target at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from scratchlm.errors import ScratchLMError
from scratchlm.models.attention import RNNAttention
from scratchlm.models.cache import EncoderOutput, Seq2SeqRNNState
from scratchlm.models.config import check_rnn, encoder_decoder_tied_weights
from scratchlm.models.layers import Dropout, output_logits

ATTENTIONS = ("none", *RNNAttention.KINDS)


@dataclass
class Seq2SeqRNNConfig:
    family: str = "seq2seq_rnn"
    preset: str | None = None
    vocab_size: int = 0  # 0: taken from the prepared data's (joint) tokenizer
    cell: str = "lstm"  # lstm | gru
    n_layer: int = 2
    d_model: int = 256  # hidden size (per direction in the encoder)
    d_embed: int | None = None  # None: d_model
    bidirectional: bool = True  # encoder
    attention: str = "bahdanau"  # none | bahdanau | luong_dot | luong_general | luong_concat
    input_feeding: bool = True  # Luong: feed o_{t-1} into step t (ignored by none/bahdanau)
    dropout: float = 0.2
    share_embeddings: bool = True  # one embedding for source and target (joint vocabulary)
    tie_embeddings: bool = False  # W_out = target embedding (needs d_embed == d_model)
    block_size: int = 256  # longest source or target, in tokens, that training data may have
    # None: PyTorch's defaults (RNN and linear weights uniform(+-1/sqrt(fan)), embeddings
    # N(0, 1)); a number: every weight uniform(-init_std, init_std), as Sutskever et al. (0.08).
    # Small uniform inits train far more slowly with Adam on small models (measured on the
    # reverse task in tests/models/test_seq2seq.py: 0.05 stalls, defaults converge).
    init_std: float | None = None

    def __post_init__(self) -> None:
        check_rnn(self)
        if self.attention not in ATTENTIONS:
            raise ScratchLMError(
                f"model.attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}"
            )

    @property
    def embed_dim(self) -> int:
        return self.d_embed or self.d_model

    @property
    def feeds_input(self) -> bool:
        return self.attention.startswith("luong") and self.input_feeding

    def tied_weights(self) -> dict[str, str]:
        return encoder_decoder_tied_weights(self.share_embeddings, self.tie_embeddings)


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"n_layer": 1, "d_model": 32, "block_size": 64, "dropout": 0.0},
    "small": {"n_layer": 2, "d_model": 256},
    "base": {"n_layer": 2, "d_model": 512, "dropout": 0.3},
}


class Seq2SeqRNN(nn.Module):
    is_encoder_decoder = True

    def __init__(self, config: Seq2SeqRNNConfig) -> None:
        super().__init__()
        if config.vocab_size <= 0:
            raise ScratchLMError("model.vocab_size must be set (it comes from the tokenizer)")
        self.config = c = config
        rnn_cls = nn.LSTM if c.cell == "lstm" else nn.GRU
        E, H, dirs = c.embed_dim, c.d_model, 2 if c.bidirectional else 1
        self.src_embed = nn.Embedding(c.vocab_size, E)
        self.tgt_embed = self.src_embed if c.share_embeddings else nn.Embedding(c.vocab_size, E)
        self.drop = Dropout(c.dropout)
        layer_drop = c.dropout if c.n_layer > 1 else 0.0
        self.encoder = rnn_cls(E, H, num_layers=c.n_layer, dropout=layer_drop, batch_first=True,
                               bidirectional=c.bidirectional)
        self.bridge_h = nn.Linear(dirs * H, H)
        self.bridge_c = nn.Linear(dirs * H, H) if c.cell == "lstm" else None
        d_mem = dirs * H
        self.memory_proj = None
        if c.attention == "luong_dot" and d_mem != H:  # dot scores need equal sizes
            self.memory_proj = nn.Linear(d_mem, H, bias=False)
            d_mem = H
        self.attn = None if c.attention == "none" else RNNAttention(c.attention, H, d_mem)
        d_in = E + (d_mem if c.attention == "bahdanau" else H if c.feeds_input else 0)
        self.decoder = rnn_cls(d_in, H, num_layers=c.n_layer, dropout=layer_drop, batch_first=True)
        self.combine = None if self.attn is None else nn.Linear(H + d_mem, H, bias=False)
        self.lm_head = nn.Linear(H, c.vocab_size)
        if c.init_std is not None:
            for p in self.parameters():
                nn.init.uniform_(p, -c.init_std, c.init_std)
        if c.tie_embeddings:
            self.lm_head.weight = self.tgt_embed.weight

    @property
    def max_context(self) -> int | None:
        return None  # recurrent: no positional limit on the target

    def num_params(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    # ------------------------------------------------------------------ encoder
    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None) -> EncoderOutput:
        """src_ids (B, S), src_mask (B, S) True at real tokens (None: no padding)."""
        if src_mask is None:
            src_mask = torch.ones_like(src_ids, dtype=torch.bool)
        B, S = src_ids.shape
        lengths = src_mask.sum(1)
        if bool((lengths == 0).any()):
            raise ScratchLMError("a source sequence is empty (every source needs at least one token)")
        x = self.drop(self.src_embed(src_ids))  # (B, S, E)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, final = self.encoder(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # (B, S, dirs*H)
        if self.memory_proj is not None:
            states = self.memory_proj(states)
        h_n, c_n = final if isinstance(final, tuple) else (final, None)
        h0 = torch.tanh(self.bridge_h(self._join_directions(h_n)))  # (L, B, H)
        c0 = None if c_n is None else torch.tanh(self.bridge_c(self._join_directions(c_n)))
        return EncoderOutput(self.drop(states), src_mask, (h0, c0))

    def _join_directions(self, x: torch.Tensor) -> torch.Tensor:
        """(L * dirs, B, H) -> (L, B, dirs * H): both directions' final states, per layer."""
        L = self.config.n_layer
        dirs = x.shape[0] // L
        return x.view(L, dirs, x.shape[1], x.shape[2]).permute(0, 2, 1, 3).flatten(2)

    # ------------------------------------------------------------------ decoder
    def init_cache(
        self, *, batch_size: int, max_len: int = 0, memory: EncoderOutput | None = None
    ) -> Seq2SeqRNNState:
        if memory is None:
            raise ScratchLMError("an encoder-decoder needs the source: init_cache(memory=model.encode(src))")
        if memory.batch_size != batch_size:
            raise ScratchLMError(f"memory holds {memory.batch_size} sources, not {batch_size}")
        h0, c0 = memory.final
        keys = None if self.attn is None else self.attn.keys(memory.states)
        feed = None
        if self.config.feeds_input:
            feed = memory.states.new_zeros(batch_size, self.config.d_model)
        return Seq2SeqRNNState(h=h0, c=c0, memory=memory.states, keys=keys, mask=memory.mask,
                               feed=feed)

    def forward(
        self, tgt_ids: torch.Tensor, *, memory: EncoderOutput | None = None,
        cache: Seq2SeqRNNState | None = None, logits_to_keep: int = 0,
    ) -> torch.Tensor | tuple[torch.Tensor, Seq2SeqRNNState]:
        """tgt_ids (B, T): target tokens so far (starting with <|bos|>). Without a cache, pass
        memory= (teacher forcing over the whole target); returns logits (B, T, V)."""
        if tgt_ids.dim() != 2:
            raise ScratchLMError(f"tgt_ids must be (batch, time), got shape {tuple(tgt_ids.shape)}")
        state = cache if cache is not None else self.init_cache(batch_size=tgt_ids.shape[0], memory=memory)
        emb = self.drop(self.tgt_embed(tgt_ids))  # (B, T, E)
        if self.config.attention == "bahdanau" or self.config.feeds_input:
            out, weights = self._decode_loop(emb, state)
        else:
            out, weights = self._decode_parallel(emb, state)
        state.attention = weights
        state.advance(tgt_ids.shape[1])
        if logits_to_keep:
            out = out[:, -logits_to_keep:]
        logits = output_logits(self.lm_head, self.drop(out))  # (B, T, V)
        return logits if cache is None else (logits, state)

    def _rnn(self, x: torch.Tensor, state: Seq2SeqRNNState) -> torch.Tensor:
        """Run the decoder RNN over x (B, T, d_in) from state, updating it; returns (B, T, H)."""
        hidden = (state.h, state.c) if self.config.cell == "lstm" else state.h
        out, new = self.decoder(x, hidden)
        if self.config.cell == "lstm":
            state.h, state.c = new
        else:
            state.h = new
        return out

    def _attend(self, query: torch.Tensor, state: Seq2SeqRNNState) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, T, H) -> context (B, T, Hm), weights (B, T, S)."""
        return self.attn(query, state.keys, state.memory, state.mask)

    def _decode_parallel(self, emb: torch.Tensor, state: Seq2SeqRNNState):
        """No attention, or Luong attention without input feeding: the RNN needs nothing
        from the attention, so it runs over all T steps in one call."""
        s = self._rnn(emb, state)  # (B, T, H)
        if self.attn is None:
            return s, None
        ctx, weights = self._attend(s, state)
        return torch.tanh(self.combine(torch.cat([s, ctx], -1))), weights

    def _decode_loop(self, emb: torch.Tensor, state: Seq2SeqRNNState):
        outs, all_weights = [], []
        for t in range(emb.shape[1]):
            e = emb[:, t : t + 1]  # (B, 1, E)
            if self.config.attention == "bahdanau":
                query = state.h[-1][:, None]  # s_{t-1}, top layer: (B, 1, H)
                ctx, w = self._attend(query, state)  # (B, 1, Hm), (B, 1, S)
                s = self._rnn(torch.cat([e, ctx], -1), state)  # (B, 1, H)
            else:  # Luong with input feeding
                s = self._rnn(torch.cat([e, state.feed[:, None]], -1), state)
                ctx, w = self._attend(s, state)
            o = torch.tanh(self.combine(torch.cat([s, ctx], -1)))  # (B, 1, H)
            if state.feed is not None:
                state.feed = o[:, 0]
            outs.append(o)
            all_weights.append(w)
        return torch.cat(outs, 1), torch.cat(all_weights, 1)

    @torch.no_grad()
    def cross_attention(self, memory: EncoderOutput, tgt_ids: torch.Tensor) -> torch.Tensor:
        """Attention weights of a teacher-forced pass, shaped like the Transformer's
        (n_layer=1, B, n_head=1, T, S); an error for attention = "none"."""
        if self.attn is None:
            raise ScratchLMError("this model has no attention (model.attention = none)")
        state = self.init_cache(batch_size=tgt_ids.shape[0], memory=memory)
        self(tgt_ids, cache=state)
        return state.attention[None, :, None]
