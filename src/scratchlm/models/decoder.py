"""What every decoder-only family has in common: the decoder protocol around its blocks.

    cache = model.init_cache(batch_size=B, max_len=L)
    logits = model(input_ids)                       # (B, T, vocab), no cache
    logits, cache = model(input_ids, cache=cache)   # incremental decoding
    logits, cache = model(input_ids, cache=cache, logits_to_keep=1)  # (B, 1, vocab): last only
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scratchlm.errors import ScratchLMError
from scratchlm.models import attention, kernels
from scratchlm.models.cache import KVCache
from scratchlm.models.config import DecoderConfig


class DecoderLM(nn.Module):
    config: DecoderConfig
    # Names of the linear layers that write into the residual stream: their init is scaled
    # by 1/sqrt(2 * n_layer) (GPT-2 paper, section 2.3).
    residual_projections: tuple[str, ...] = ()
    # Prompts of different lengths decode in one batch, left-padded (KVCache.set_left_padding).
    supports_left_padding = True
    # Every layer in one native call while decoding one token per row (models/kernels'
    # DecodeLayers, from the family's `layer_specs()`); set by models/quant.py for int8.
    fused_decode: kernels.DecodeLayers | None = None

    def layer_specs(self) -> list[kernels.LayerSpec]:
        """Each layer's structure for `kernels.DecodeLayers` (families that have one)."""
        return []

    @property
    def max_context(self) -> int | None:
        """Longest sequence the model can attend over (None: unlimited)."""
        return self.config.block_size

    def init_cache(self, *, batch_size: int, max_len: int) -> KVCache:
        p = next(self.parameters())
        return KVCache(
            n_layer=self.config.n_layer,
            batch_size=batch_size,
            n_kv_head=self.config.kv_heads,
            head_dim=self.config.head_dim,
            max_len=max_len,
            device=p.device,
            dtype=p.dtype,
        )

    def init_weights(self) -> None:
        std = self.config.init_std
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                scale = std / math.sqrt(2 * self.config.n_layer)
                is_resid = name.rsplit(".", 1)[-1] in self.residual_projections
                nn.init.normal_(m.weight, mean=0.0, std=scale if is_resid else std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=std)

    def num_params(self, *, non_embedding: bool = False) -> int:
        seen = {}
        for p in self.parameters():
            seen[id(p)] = p.numel()
        n = sum(seen.values())
        if non_embedding:
            n -= sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        return n

    def _check_input(self, input_ids: torch.Tensor, cache: KVCache | None,
                     packed: bool = False) -> int:
        """Validate shapes; return the position of the first new token. `packed`: the call
        has position_ids/attn_mask, which only packed training rows have."""
        if cache is not None and packed:
            raise ScratchLMError("position_ids/attn_mask are for packed training rows, not decoding")
        if input_ids.dim() != 2:
            raise ScratchLMError(f"input_ids must be (batch, time), got shape {tuple(input_ids.shape)}")
        start = 0 if cache is None else cache.length
        t = input_ids.shape[1]
        if start + t > self.config.block_size:
            raise ScratchLMError(
                f"sequence of {start + t} tokens is longer than the context "
                f"(model.block_size = {self.config.block_size})"
            )
        if cache is not None:
            cache.check_room(t)
        return start

    def _decode_fused(self, x: torch.Tensor, cache: KVCache | None, start: int,
                      rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> bool:
        """Run every layer on x (B, 1, C) in place through `fused_decode` where it applies
        (`attention.one_call_step`); False where the blocks must run. `rotary`: RoPE's rows at
        the new positions."""
        if not attention.one_call_step(self, x, cache):
            return False
        self.fused_decode(x.view(x.shape[0], x.shape[2]), *cache.buffers(), start, rotary=rotary, pad=cache.pad)
        return True

    @staticmethod
    def _kept(x: torch.Tensor, logits_to_keep: int, logits_mask: torch.Tensor | None) -> torch.Tensor:
        """The hidden states (B, T, C) whose logits are wanted: the last `logits_to_keep`
        positions (decoding), or the (N, C) positions of a (B, T) bool mask (fine-tuning needs
        no logits where labels are -100)."""
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        if logits_mask is not None:
            x = x[logits_mask]
        return x

    def _finish(
        self, logits: torch.Tensor, cache: KVCache | None, t: int
    ) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        if cache is None:
            return logits
        cache.advance(t)
        return logits, cache
