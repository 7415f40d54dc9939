"""Model configuration shared by families: the decoder-only Transformers' base dataclass and
the checks every family's config runs. Each family's own dataclass lives in its file
(models/gpt.py, llama.py, rnn.py, seq2seq_*.py); registry.py picks one by `model.family`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scratchlm.errors import ScratchLMError


def check_sizes(cfg: Any, positive: tuple[str, ...]) -> None:
    """The checks every model config shares: sizes > 0, dropout in [0, 1)."""
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ScratchLMError(f"model.{name} must be positive, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ScratchLMError(f"model.dropout must be in [0, 1), got {cfg.dropout}")


def check_rnn(cfg: Any) -> None:
    """The checks the RNN families (rnn, seq2seq_rnn) share: the cell, the sizes, and tied
    embeddings needing model.d_embed equal to model.d_model."""
    if cfg.cell not in ("lstm", "gru"):
        raise ScratchLMError(f"model.cell must be lstm or gru, got {cfg.cell!r}")
    check_sizes(cfg, ("n_layer", "d_model", "block_size"))
    if cfg.tie_embeddings and (cfg.d_embed or cfg.d_model) != cfg.d_model:
        raise ScratchLMError("model.tie_embeddings needs model.d_embed equal to model.d_model")


def encoder_decoder_tied_weights(share_embeddings: bool, tie_embeddings: bool) -> dict[str, str]:
    """Parameter names of an encoder-decoder that alias another (saved once): alias -> source."""
    tied = {}
    if share_embeddings:
        tied["tgt_embed.weight"] = "src_embed.weight"
    if tie_embeddings:
        tied["lm_head.weight"] = tied.get("tgt_embed.weight", "tgt_embed.weight")
    return tied


@dataclass
class DecoderConfig:
    """Fields every decoder-only Transformer family shares. Families subclass it."""

    family: str = "llama"
    preset: str | None = None
    vocab_size: int = 0  # 0: taken from the prepared data's tokenizer
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None: same as n_head (no grouped-query attention)
    d_model: int = 128
    d_ff: int | None = None  # None: the family's default width for its MLP
    block_size: int = 256
    dropout: float = 0.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "d_model", "block_size"):
            if getattr(self, name) <= 0:
                raise ScratchLMError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise ScratchLMError(f"model.vocab_size must be >= 0, got {self.vocab_size}")
        if self.d_model % self.n_head:
            raise ScratchLMError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})"
            )
        if self.kv_heads <= 0 or self.n_head % self.kv_heads:
            raise ScratchLMError(
                f"model.n_head ({self.n_head}) must be a multiple of model.n_kv_head ({self.kv_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ScratchLMError(f"model.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head
