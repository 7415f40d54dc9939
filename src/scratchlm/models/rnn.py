"""Recurrent language model: GRU (Cho et al. 2014) or LSTM (Hochreiter & Schmidhuber 1997),
multi-layer, with dropout between layers and optionally tied input/output embeddings.

    h_t = RNN(E[x_t], h_{t-1});  p(x_{t+1} | x_<=t) = softmax(W h_t + b)

It speaks the same decoder protocol as the Transformers, so `generate`, `beam_search`, the
Trainer and `evaluate` work unchanged: `init_cache` returns an `RNNState` (the hidden state
of every layer) and `model(tokens, cache=state)` advances it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scratchlm.errors import ScratchLMError
from scratchlm.models.cache import RNNState
from scratchlm.models.config import check_rnn
from scratchlm.models.layers import Dropout, output_logits


@dataclass
class RNNConfig:
    family: str = "rnn"
    preset: str | None = None
    vocab_size: int = 0  # 0: taken from the prepared data's tokenizer
    cell: str = "lstm"  # lstm | gru
    n_layer: int = 2
    d_model: int = 256  # hidden size
    d_embed: int | None = None  # None: d_model
    block_size: int = 128  # training window (truncated backpropagation through time)
    dropout: float = 0.1
    tie_embeddings: bool = False  # needs d_embed == d_model
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_rnn(self)

    @property
    def embed_dim(self) -> int:
        return self.d_embed or self.d_model


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"n_layer": 1, "d_model": 64, "block_size": 64},
    "small": {"n_layer": 2, "d_model": 256, "block_size": 128},
    "medium": {"n_layer": 2, "d_model": 650, "block_size": 35, "dropout": 0.5},  # Zaremba et al. 2014
}


class RNNLM(nn.Module):
    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        if config.vocab_size <= 0:
            raise ScratchLMError("model.vocab_size must be set (it comes from the tokenizer)")
        self.config = config
        rnn_cls = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embed_dim)
        self.drop = Dropout(config.dropout)
        self.rnn = rnn_cls(config.embed_dim, config.d_model, num_layers=config.n_layer,
                           dropout=config.dropout if config.n_layer > 1 else 0.0, batch_first=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)
        nn.init.normal_(self.embed_tokens.weight, std=config.init_std)
        nn.init.normal_(self.lm_head.weight, std=config.init_std)
        nn.init.zeros_(self.lm_head.bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight  # Press & Wolf 2017

    @property
    def max_context(self) -> int | None:
        return None  # a recurrent state has no length limit

    def init_cache(self, *, batch_size: int, max_len: int = 0) -> RNNState:
        p = next(self.parameters())
        shape = (self.config.n_layer, batch_size, self.config.d_model)
        h = torch.zeros(shape, device=p.device, dtype=p.dtype)
        c = torch.zeros_like(h) if self.config.cell == "lstm" else None
        return RNNState(h=h, c=c)

    def num_params(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def forward(
        self, input_ids: torch.Tensor, *, cache: RNNState | None = None, logits_to_keep: int = 0
    ) -> torch.Tensor | tuple[torch.Tensor, RNNState]:
        if input_ids.dim() != 2:
            raise ScratchLMError(f"input_ids must be (batch, time), got shape {tuple(input_ids.shape)}")
        state = cache if cache is not None else self.init_cache(batch_size=input_ids.shape[0])
        x = self.drop(self.embed_tokens(input_ids))  # (B, T, E)
        hidden = (state.h, state.c) if self.config.cell == "lstm" else state.h
        out, new = self.rnn(x, hidden)  # out: (B, T, H); new: (L, B, H) [x2 for LSTM]
        if logits_to_keep:
            out = out[:, -logits_to_keep:]  # only the last positions' logits (decoding)
        logits = output_logits(self.lm_head, self.drop(out))  # (B, T or logits_to_keep, V)
        if cache is None:
            return logits
        if self.config.cell == "lstm":
            cache.h, cache.c = new
        else:
            cache.h = new
        cache.advance(input_ids.shape[1])
        return logits, cache
