"""GPT-2 style decoder (Radford et al. 2019): learned positions, pre-LayerNorm, GELU MLP,
tied input/output embeddings, biases everywhere.

For packed fine-tuning rows (several examples in one row), `forward` also takes
`position_ids` (B, T) and a block-diagonal causal `attn_mask` (B, 1, T, T), True where a
query may attend: each example then sees only itself, at its own positions.

Weight names follow Hugging Face `GPT2LMHeadModel` (transformer.wte, transformer.h.N.attn.c_attn,
...), with `nn.Linear` in place of GPT-2's transposed Conv1D: export transposes those weights
(scratchlm.interop.hf).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.errors import ScratchLMError
from scratchlm.models import kernels
from scratchlm.models.attention import causal_attention, sdpa
from scratchlm.models.cache import KVCache
from scratchlm.models.config import DecoderConfig
from scratchlm.models.decoder import DecoderLM
from scratchlm.models.layers import Dropout, output_logits


@dataclass
class GPTConfig(DecoderConfig):
    family: str = "gpt"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_kv_head not in (None, self.n_head):
            raise ScratchLMError(
                "model.n_kv_head must equal model.n_head for the gpt family "
                "(grouped-query attention is a llama feature)"
            )

    @property
    def ffn_dim(self) -> int:
        return self.d_ff or 4 * self.d_model


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "d_model": 64, "block_size": 64},
    # nanoGPT's CPU recipe for Shakespeare.
    "small": {"n_layer": 4, "n_head": 4, "d_model": 128, "block_size": 64},
    "16m": {"n_layer": 6, "n_head": 6, "d_model": 384, "block_size": 256},
    "gpt2-124m": {"n_layer": 12, "n_head": 12, "d_model": 768, "block_size": 1024},
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "d_model": 1024, "block_size": 1024},
}


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.head_dim
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # fused q, k, v
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_dropout = Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, *, cache: KVCache | None, layer: int,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim)  # (B, T, 3, nh, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hd)
        p = self.dropout if self.training else 0.0
        if attn_mask is None:
            y = causal_attention(q, k, v, cache=cache, layer=layer, dropout_p=p)  # (B, nh, T, hd)
        else:  # packed rows: the mask is causal and block-diagonal
            y = sdpa(q, k, v, attn_mask=attn_mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.ffn_dim)
        self.c_proj = nn.Linear(cfg.ffn_dim, cfg.d_model)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2's "gelu_new" is the tanh approximation of GELU.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, *, cache: KVCache | None, layer: int,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache=cache, layer=layer, attn_mask=attn_mask)
        return x + self.mlp(self.ln_2(x))

    def layer_spec(self) -> kernels.LayerSpec:
        a, m = self.attn, self.mlp
        return kernels.LayerSpec(norm="layer", eps=self.ln_1.eps, attn_norm=(self.ln_1.weight, self.ln_1.bias),
                                 mlp_norm=(self.ln_2.weight, self.ln_2.bias), qkv=a.c_attn, o=a.c_proj, up=m.c_fc,
                                 down=m.c_proj, mlp="gelu_tanh", n_head=a.n_head, n_kv=a.n_head, head_dim=a.head_dim)


class GPT(DecoderLM):
    residual_projections = ("c_proj",)

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size <= 0:
            raise ScratchLMError("model.vocab_size must be set (it comes from the tokenizer)")
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.d_model),
                "wpe": nn.Embedding(config.block_size, config.d_model),
                "drop": Dropout(config.dropout),
                "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                "ln_f": nn.LayerNorm(config.d_model, eps=config.norm_eps),
            }
        )
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.init_weights()
        self.lm_head.weight = self.transformer.wte.weight  # tied (Press & Wolf 2017)

    def layer_specs(self) -> list[kernels.LayerSpec]:
        return [block.layer_spec() for block in self.transformer.h]

    def forward(
        self, input_ids: torch.Tensor, *, cache: KVCache | None = None, logits_to_keep: int = 0,
        position_ids: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
        logits_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        start = self._check_input(input_ids, cache, packed=position_ids is not None or attn_mask is not None)
        T = input_ids.shape[1]
        pos = torch.arange(start, start + T, device=input_ids.device)  # (T,)
        if position_ids is not None:
            pos = position_ids  # (B, T): positions restart at 0 for every packed example
        elif cache is not None and cache.pad is not None:
            pos = cache.positions(start, T)  # (B, T): left-padded rows count from their first token
        x = self.transformer.wte(input_ids) + self.transformer.wpe(pos)  # (B, T, C)
        x = self.transformer.drop(x)
        if not self._decode_fused(x, cache, start):
            for i, block in enumerate(self.transformer.h):
                x = block(x, cache=cache, layer=i, attn_mask=attn_mask)
        x = self._kept(x, logits_to_keep, logits_mask)  # (B, T or logits_to_keep, C) or (N, C)
        logits = output_logits(self.lm_head, self.transformer.ln_f(x))  # (B, T or logits_to_keep, vocab)
        return self._finish(logits, cache, T)
