"""Llama-style decoder (Touvron et al. 2023): RoPE, RMSNorm, SwiGLU MLP, grouped-query
attention, no biases, optionally tied embeddings.

Weight names are exactly Hugging Face `LlamaForCausalLM`'s (model.embed_tokens,
model.layers.N.self_attn.q_proj, ..., lm_head), so export is a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scratchlm.config import DecoderConfig
from scratchlm.errors import ScratchLMError
from scratchlm.models.attention import causal_attention
from scratchlm.models.cache import KVCache
from scratchlm.models.decoder import DecoderLM
from scratchlm.models.layers import RMSNorm, RotaryEmbedding, SwiGLU, output_logits


@dataclass
class LlamaConfig(DecoderConfig):
    family: str = "llama"
    rope_theta: float = 10000.0
    tie_embeddings: bool = False

    @property
    def ffn_dim(self) -> int:
        # Llama's 2/3 * 4d, rounded up to a multiple of 32.
        if self.d_ff:
            return self.d_ff
        d = int(8 * self.d_model / 3)
        return (d + 31) // 32 * 32


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 64, "block_size": 64},
    "small": {"n_layer": 4, "n_head": 4, "n_kv_head": 2, "d_model": 128, "block_size": 128},
    "16m": {"n_layer": 6, "n_head": 6, "n_kv_head": 2, "d_model": 384, "block_size": 256},
    # Shapes of SmolLM2-135M (vocabulary comes from its tokenizer).
    "smollm2-135m": {
        "n_layer": 30, "n_head": 9, "n_kv_head": 3, "d_model": 576, "d_ff": 1536,
        "block_size": 8192, "rope_theta": 100000.0, "tie_embeddings": True, "norm_eps": 1e-5,
    },
}


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)

    def forward(
        self, x: torch.Tensor, *, rope: RotaryEmbedding, start: int, cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = rope(q, start=start), rope(k, start=start)
        y = causal_attention(
            q, k, v, cache=cache, layer=layer, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, nh*hd)
        return self.o_proj(y)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.ffn_dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, *, rope: RotaryEmbedding, start: int, cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), rope=rope, start=start, cache=cache, layer=layer)
        x = x + self.drop(h)
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


class LlamaModel(nn.Module):
    """The backbone, under the attribute name `model` as in Hugging Face."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, max_len=cfg.block_size, theta=cfg.rope_theta)


class Llama(DecoderLM):
    residual_projections = ("o_proj", "down_proj")

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        if config.vocab_size <= 0:
            raise ScratchLMError("model.vocab_size must be set (it comes from the tokenizer)")
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.drop = nn.Dropout(config.dropout)
        self.init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self, input_ids: torch.Tensor, *, cache: KVCache | None = None, logits_to_keep: int = 0
    ) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        start = self._check_input(input_ids, cache)
        T = input_ids.shape[1]
        x = self.drop(self.model.embed_tokens(input_ids))  # (B, T, C)
        for i, block in enumerate(self.model.layers):
            x = block(x, rope=self.model.rotary, start=start, cache=cache, layer=i)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]  # only the last positions' logits (decoding)
        logits = output_logits(self.lm_head, self.model.norm(x))  # (B, T or logits_to_keep, vocab)
        return self._finish(logits, cache, T)
