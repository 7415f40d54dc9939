"""Llama-style decoder (Touvron et al. 2023): RoPE, RMSNorm, SwiGLU MLP, grouped-query
attention, no biases, optionally tied embeddings.

The same family holds the Llama-shaped models of other names, through optional fields that
default to plain Llama: Llama 3 (RoPE scaling, `rope_type: llama3`), Mistral, Qwen2 (biases
on q/k/v, `qkv_bias`), SmolLM2, and models whose head size is not d_model / n_head
(`attn_head_dim`).

For packed fine-tuning rows, `forward` also takes `position_ids` (B, T), where RoPE is
applied, and a block-diagonal causal `attn_mask` (B, 1, T, T), True where a query may attend.

Weight names are exactly Hugging Face `LlamaForCausalLM`'s (model.embed_tokens,
model.layers.N.self_attn.q_proj, ..., lm_head), so export is a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scratchlm.errors import ScratchLMError
from scratchlm.models import kernels
from scratchlm.models.attention import causal_attention, sdpa
from scratchlm.models.cache import KVCache
from scratchlm.models.config import DecoderConfig
from scratchlm.models.decoder import DecoderLM
from scratchlm.models.layers import (
    ROPE_TYPES,
    Dropout,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    output_logits,
    rope_inv_freq,
    rotate,
)


@dataclass
class LlamaConfig(DecoderConfig):
    family: str = "llama"
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    # RoPE position scaling, as Hugging Face's rope_parameters: default | linear | llama3.
    rope_type: str = "default"
    rope_factor: float = 1.0  # linear, llama3
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_original_max_len: int = 0  # llama3: the context the model was pretrained with
    attn_head_dim: int | None = None  # None: d_model // n_head
    qkv_bias: bool = False  # biases on q/k/v projections (Qwen2)
    o_bias: bool = False  # bias on the output projection (HF Llama's attention_bias sets both)
    mlp_bias: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rope_type not in ROPE_TYPES:
            raise ScratchLMError(
                f"model.rope_type must be one of {', '.join(ROPE_TYPES)}, got {self.rope_type!r}"
            )
        if self.rope_factor <= 0:
            raise ScratchLMError(f"model.rope_factor must be positive, got {self.rope_factor}")
        if self.rope_type == "llama3" and (
            self.rope_original_max_len <= 0 or self.rope_high_freq_factor <= self.rope_low_freq_factor
        ):
            raise ScratchLMError("rope_type llama3 needs model.rope_original_max_len > 0 and "
                                 "model.rope_high_freq_factor > model.rope_low_freq_factor")
        if self.attn_head_dim is not None and (self.attn_head_dim <= 0 or self.attn_head_dim % 2):
            raise ScratchLMError(f"model.attn_head_dim must be positive and even, got {self.attn_head_dim}")

    @property
    def head_dim(self) -> int:
        return self.attn_head_dim or self.d_model // self.n_head

    def rope_inv_freq(self):
        return rope_inv_freq(
            self.head_dim, theta=self.rope_theta, rope_type=self.rope_type, factor=self.rope_factor,
            low_freq_factor=self.rope_low_freq_factor, high_freq_factor=self.rope_high_freq_factor,
            original_max_len=self.rope_original_max_len,
        )

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
    # For inference, models/quant.py may replace q/k/v by one layer over their stacked
    # weights (`fuse_linears`): one matmul instead of three.
    fusable = {"qkv_proj": ("q_proj", "k_proj", "v_proj")}

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=cfg.o_bias)
        self.qkv_proj: nn.Module | None = None
        self.qkv_sizes = (cfg.n_head * cfg.head_dim, self.n_kv * cfg.head_dim, self.n_kv * cfg.head_dim)

    def forward(
        self, x: torch.Tensor, *, rope: RotaryEmbedding, start: int, cache: KVCache | None,
        layer: int, position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split(self.qkv_sizes, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        cos, sin = rope.rows(start, T, position_ids)  # (T, hd), or (B, 1, T, hd) at position_ids
        p = self.dropout if self.training else 0.0
        if attn_mask is None:  # RoPE is applied there (with the attention, in one call while decoding)
            y = causal_attention(q, k, v, cache=cache, layer=layer, dropout_p=p, rotary=(cos, sin))  # (B, nh, T, hd)
        else:  # packed rows: the mask is causal and block-diagonal
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            y = sdpa(q, k, v, attn_mask=attn_mask, dropout_p=p, enable_gqa=self.n_kv != self.n_head)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, nh*hd)
        return self.o_proj(y)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.ffn_dim, bias=cfg.mlp_bias)
        self.drop = Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, *, rope: RotaryEmbedding, start: int, cache: KVCache | None,
        layer: int, position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), rope=rope, start=start, cache=cache, layer=layer,
                           position_ids=position_ids, attn_mask=attn_mask)
        x = x + self.drop(h)
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))

    def layer_spec(self) -> kernels.LayerSpec:
        a, m, n1, n2 = self.self_attn, self.mlp, self.input_layernorm, self.post_attention_layernorm
        return kernels.LayerSpec(norm="rms", eps=n1.eps, attn_norm=(n1.weight, None), mlp_norm=(n2.weight, None),
                                 qkv=a.qkv_proj, o=a.o_proj, up=m.gate_up_proj, down=m.down_proj, mlp="swiglu",
                                 n_head=a.n_head, n_kv=a.n_kv, head_dim=a.head_dim)


class LlamaModel(nn.Module):
    """The backbone, under the attribute name `model` as in Hugging Face."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, max_len=cfg.block_size, theta=cfg.rope_theta,
                                      inv_freq=cfg.rope_inv_freq())


class Llama(DecoderLM):
    residual_projections = ("o_proj", "down_proj")

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        if config.vocab_size <= 0:
            raise ScratchLMError("model.vocab_size must be set (it comes from the tokenizer)")
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.drop = Dropout(config.dropout)
        self.init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def layer_specs(self) -> list[kernels.LayerSpec]:
        return [block.layer_spec() for block in self.model.layers]

    def forward(
        self, input_ids: torch.Tensor, *, cache: KVCache | None = None, logits_to_keep: int = 0,
        position_ids: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
        logits_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        start = self._check_input(input_ids, cache, packed=position_ids is not None or attn_mask is not None)
        T = input_ids.shape[1]
        if cache is not None and cache.pad is not None:
            position_ids = cache.positions(start, T)  # (B, T): left-padded rows count from their first token
        x = self.drop(self.model.embed_tokens(input_ids))  # (B, T, C)
        fused = T == 1 and self.fused_decode is not None  # RoPE rows only where they are used
        if not (fused and self._decode_fused(x, cache, start, self.model.rotary.rows(start, T, position_ids))):
            for i, block in enumerate(self.model.layers):
                x = block(x, rope=self.model.rotary, start=start, cache=cache, layer=i,
                          position_ids=position_ids, attn_mask=attn_mask)
        x = self._kept(x, logits_to_keep, logits_mask)  # (B, T or logits_to_keep, C) or (N, C)
        logits = output_logits(self.lm_head, self.model.norm(x))  # (B, T or logits_to_keep, vocab)
        return self._finish(logits, cache, T)
