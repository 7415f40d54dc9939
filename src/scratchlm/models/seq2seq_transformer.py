"""Transformer encoder-decoder (Vaswani et al. 2017), pre-norm by default (Xiong et al. 2020).

    encoder:  m = Enc(E[x] * sqrt(d) + P)                  self-attention over real tokens
    decoder:  o = Dec(E[y] * sqrt(d) + P, m)               causal self-attention, then
                                                           cross-attention to m
    output:   p(y_t | y_<t, x) = softmax(W_out o_t)        W_out tied to E by default

Positions P are sinusoidal (interleaved sin/cos, or Marian's [sin | cos] halves) or learned.
An optional `final_logits_bias` (Marian's) is added to the logits. The decoding state (EncoderDecoderCache) holds the
decoder's self-attention KV cache and the cross-attention keys/values of the source, which
are computed once per source in `init_cache`, not once per step:

    memory = model.encode(src_ids, src_mask)                # EncoderOutput (B, S, d)
    logits = model(tgt_in, memory=memory)                   # (B, T, V), teacher forcing
    cache = model.init_cache(batch_size=B, max_len=L, memory=memory)
    logits, cache = model(tokens, cache=cache)              # incremental; cache.reorder(index)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.errors import ScratchLMError
from scratchlm.models import kernels
from scratchlm.models.attention import causal_attention, one_call_step, padded_attention
from scratchlm.models.cache import EncoderDecoderCache, EncoderOutput, KVCache
from scratchlm.models.config import check_sizes, encoder_decoder_tied_weights
from scratchlm.models.layers import Dropout, output_logits

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "swish": F.silu}


@dataclass
class Seq2SeqTransformerConfig:
    family: str = "seq2seq_transformer"
    preset: str | None = None
    vocab_size: int = 0  # 0: taken from the prepared data's (joint) tokenizer
    n_layer: int = 3  # decoder layers
    n_enc_layer: int | None = None  # None: same as n_layer
    n_head: int = 4
    d_model: int = 256
    d_ff: int | None = None  # None: 4 * d_model
    block_size: int = 256  # longest source and longest target, in tokens
    positions: str = "sinusoidal"  # sinusoidal | learned
    sinusoid_layout: str = "interleaved"  # interleaved (sin, cos, sin, ...) | split (Marian: sin... cos...)
    pre_norm: bool = True  # False: post-norm, as in the original paper and Marian
    activation: str = "relu"  # relu | gelu | swish
    dropout: float = 0.1
    share_embeddings: bool = True  # one embedding for source and target (joint vocabulary)
    tie_embeddings: bool = True  # W_out = target embedding (Press & Wolf 2017)
    scale_embedding: bool = True  # multiply embeddings by sqrt(d_model)
    norm_eps: float = 1e-5
    init_std: float = 0.02
    final_logits_bias: bool = False  # a fixed (1, vocab) bias added to the logits (Marian)

    def __post_init__(self) -> None:
        check_sizes(self, ("n_layer", "n_head", "d_model", "block_size"))
        if self.sinusoid_layout not in ("interleaved", "split"):
            raise ScratchLMError(
                f"model.sinusoid_layout must be interleaved or split, got {self.sinusoid_layout!r}"
            )
        if self.d_model % self.n_head:
            raise ScratchLMError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})"
            )
        if self.positions not in ("sinusoidal", "learned"):
            raise ScratchLMError(f"model.positions must be sinusoidal or learned, got {self.positions!r}")
        if self.activation not in ACTIVATIONS:
            raise ScratchLMError(f"model.activation must be one of {', '.join(ACTIVATIONS)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def enc_layers(self) -> int:
        return self.n_enc_layer or self.n_layer

    def tied_weights(self) -> dict[str, str]:
        return encoder_decoder_tied_weights(self.share_embeddings, self.tie_embeddings)


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"n_layer": 1, "n_head": 2, "d_model": 32, "block_size": 64, "dropout": 0.0},
    "small": {"n_layer": 3, "n_head": 4, "d_model": 256},
    # Transformer-base (Vaswani et al. 2017) and the Marian opus-mt models' shape.
    "base": {"n_layer": 6, "n_head": 8, "d_model": 512, "d_ff": 2048},
}


def sinusoids(n: int, d: int) -> torch.Tensor:
    """(n, d): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d))."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return pe


def split_sinusoids(n: int, d: int) -> torch.Tensor:
    """(n, d), Marian's layout: PE[p, i] = sin(p / 10000^(2i/d)) for i < d/2, and the cosines
    in the second half. Computed in float64 as Hugging Face's Marian does, then float32."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(d, dtype=torch.float64)
    angles = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / d)  # (n, d)
    half = (d + 1) // 2
    pe = torch.empty(n, d, dtype=torch.float64)
    pe[:, :half] = torch.sin(angles[:, 0::2])
    pe[:, half:] = torch.cos(angles[:, 1::2])
    return pe.float()


class MultiHeadAttention(nn.Module):
    def __init__(self, cfg: Seq2SeqTransformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_head, self.head_dim, self.dropout = cfg.n_head, cfg.head_dim, cfg.dropout
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, nh, T, hd)"""
        return x.view(x.shape[0], x.shape[1], self.n_head, self.head_dim).transpose(1, 2)

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, nh, T, hd) -> (B, T, d), through the output projection"""
        return self.out_proj(y.transpose(1, 2).flatten(2))

    def kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys/values of the source: (B, S, d) -> 2 x (B, nh, S, hd)."""
        return self.heads(self.k_proj(memory)), self.heads(self.v_proj(memory))

    def _p(self) -> float:
        return self.dropout if self.training else 0.0

    def self_padded(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder self-attention over real tokens. x (B, S, d), mask (B, S)."""
        q, k, v = self.heads(self.q_proj(x)), self.heads(self.k_proj(x)), self.heads(self.v_proj(x))
        return self.merge(padded_attention(q, k, v, mask, dropout_p=self._p())[0])

    def self_causal(self, x: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        """Decoder self-attention, causal, through the KV cache. x (B, T, d)."""
        q, k, v = self.heads(self.q_proj(x)), self.heads(self.k_proj(x)), self.heads(self.v_proj(x))
        return self.merge(causal_attention(q, k, v, cache=cache, layer=layer, dropout_p=self._p()))

    def cross(
        self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, d) attends to source keys/values (B, nh, S, hd); weights (B, nh, T, S)."""
        y, w = padded_attention(self.heads(self.q_proj(x)), k, v, mask, dropout_p=self._p(),
                                need_weights=need_weights)
        return self.merge(y), w


class FeedForward(nn.Module):
    def __init__(self, cfg: Seq2SeqTransformerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff or 4 * cfg.d_model)
        self.fc2 = nn.Linear(cfg.d_ff or 4 * cfg.d_model, cfg.d_model)
        self.activation = cfg.activation
        self.act = ACTIVATIONS[cfg.activation]
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class Sublayer(nn.Module):
    """Residual around f with the norm before (pre-norm) or after (post-norm) it."""

    def __init__(self, cfg: Seq2SeqTransformerConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.drop = Dropout(cfg.dropout)
        self.pre_norm = cfg.pre_norm

    def forward(self, x: torch.Tensor, f) -> torch.Tensor:
        if self.pre_norm:
            return x + self.drop(f(self.norm(x)))
        return self.norm(x + self.drop(f(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: Seq2SeqTransformerConfig) -> None:
        super().__init__()
        self.self_attn, self.ffn = MultiHeadAttention(cfg), FeedForward(cfg)
        self.sub_attn, self.sub_ffn = Sublayer(cfg), Sublayer(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.sub_attn(x, lambda h: self.self_attn.self_padded(h, mask))
        return self.sub_ffn(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Seq2SeqTransformerConfig) -> None:
        super().__init__()
        self.self_attn, self.cross_attn = MultiHeadAttention(cfg), MultiHeadAttention(cfg)
        self.ffn = FeedForward(cfg)
        self.sub_self, self.sub_cross, self.sub_ffn = Sublayer(cfg), Sublayer(cfg), Sublayer(cfg)

    def forward(
        self, x: torch.Tensor, *, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
        cache: KVCache | None, layer: int, weights: list | None,
    ) -> torch.Tensor:
        x = self.sub_self(x, lambda h: self.self_attn.self_causal(h, cache, layer))

        def cross(h: torch.Tensor) -> torch.Tensor:
            y, w = self.cross_attn.cross(h, k, v, mask, need_weights=weights is not None)
            if weights is not None:
                weights.append(w)
            return y

        x = self.sub_cross(x, cross)
        return self.sub_ffn(x, self.ffn)

    def layer_spec(self) -> kernels.LayerSpec:
        sa, ca, n1, n2, n3 = self.self_attn, self.cross_attn, self.sub_self.norm, self.sub_cross.norm, self.sub_ffn.norm
        return kernels.LayerSpec(
            norm="layer", eps=n1.eps, attn_norm=(n1.weight, n1.bias), cross_norm=(n2.weight, n2.bias),
            mlp_norm=(n3.weight, n3.bias), qkv=(sa.q_proj, sa.k_proj, sa.v_proj), o=sa.out_proj,
            cross=(ca.q_proj, ca.out_proj), up=self.ffn.fc1, down=self.ffn.fc2,
            mlp={"swish": "silu"}.get(self.ffn.activation, self.ffn.activation), n_head=sa.n_head,
            n_kv=sa.n_head, head_dim=sa.head_dim, post_norm=not self.sub_self.pre_norm)


class Seq2SeqTransformer(nn.Module):
    is_encoder_decoder = True
    # Every decoder layer in one native call while decoding one token per row (models/kernels'
    # DecodeLayers, from `layer_specs()`); set by models/quant.py for int8.
    fused_decode: kernels.DecodeLayers | None = None

    def __init__(self, config: Seq2SeqTransformerConfig) -> None:
        super().__init__()
        if config.vocab_size <= 0:
            raise ScratchLMError("model.vocab_size must be set (it comes from the tokenizer)")
        self.config = c = config
        d = c.d_model
        self.src_embed = nn.Embedding(c.vocab_size, d)
        self.tgt_embed = self.src_embed if c.share_embeddings else nn.Embedding(c.vocab_size, d)
        if c.positions == "learned":
            self.src_pos = nn.Embedding(c.block_size, d)
            self.tgt_pos = nn.Embedding(c.block_size, d)
        else:
            table = split_sinusoids if c.sinusoid_layout == "split" else sinusoids
            self.register_buffer("sinusoids", table(c.block_size, d), persistent=False)
        if c.final_logits_bias:
            self.register_buffer("final_logits_bias", torch.zeros(1, c.vocab_size))
        self.drop = Dropout(c.dropout)
        self.encoder = nn.ModuleList([EncoderLayer(c) for _ in range(c.enc_layers)])
        self.decoder = nn.ModuleList([DecoderLayer(c) for _ in range(c.n_layer)])
        # Pre-norm stacks end with a norm; post-norm layers already end normalized.
        self.enc_norm = nn.LayerNorm(d, eps=c.norm_eps) if c.pre_norm else nn.Identity()
        self.dec_norm = nn.LayerNorm(d, eps=c.norm_eps) if c.pre_norm else nn.Identity()
        self.lm_head = nn.Linear(d, c.vocab_size, bias=False)
        self._init_weights()
        if c.tie_embeddings:
            self.lm_head.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        c = self.config
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=c.init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                # Scaled by sqrt(d) on the way in, so start at std d^-1/2 (as fairseq does).
                nn.init.normal_(m.weight, std=c.d_model**-0.5 if c.scale_embedding else c.init_std)

    @property
    def max_context(self) -> int | None:
        return self.config.block_size

    def layer_specs(self) -> list[kernels.LayerSpec]:
        return [layer.layer_spec() for layer in self.decoder]

    def num_params(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def _embed(self, ids: torch.Tensor, start: int, table: nn.Embedding, pos: str) -> torch.Tensor:
        T = ids.shape[1]
        if start + T > self.config.block_size:
            raise ScratchLMError(
                f"sequence of {start + T} tokens is longer than the model's positions "
                f"(model.block_size = {self.config.block_size})"
            )
        x = table(ids)  # (B, T, d)
        if self.config.scale_embedding:
            x = x * math.sqrt(self.config.d_model)
        if self.config.positions == "learned":
            x = x + getattr(self, pos)(torch.arange(start, start + T, device=ids.device))
        else:
            x = x + self.sinusoids[start : start + T].to(x.dtype)
        return self.drop(x)

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None) -> EncoderOutput:
        """src_ids (B, S), src_mask (B, S) True at real tokens (None: no padding)."""
        if src_mask is None:
            src_mask = torch.ones_like(src_ids, dtype=torch.bool)
        if bool((src_mask.sum(1) == 0).any()):
            raise ScratchLMError("a source sequence is empty (every source needs at least one token)")
        x = self._embed(src_ids, 0, self.src_embed, "src_pos")  # (B, S, d)
        for layer in self.encoder:
            x = layer(x, src_mask)
        return EncoderOutput(self.enc_norm(x), src_mask)

    def init_cache(
        self, *, batch_size: int, max_len: int, memory: EncoderOutput | None = None
    ) -> EncoderDecoderCache:
        if memory is None:
            raise ScratchLMError("an encoder-decoder needs the source: init_cache(memory=model.encode(src))")
        if memory.batch_size != batch_size:
            raise ScratchLMError(f"memory holds {memory.batch_size} sources, not {batch_size}")
        c = self.config
        p = memory.states
        self_kv = KVCache(n_layer=c.n_layer, batch_size=batch_size, n_kv_head=c.n_head,
                          head_dim=c.head_dim, max_len=max_len, device=p.device, dtype=p.dtype)
        kvs = [layer.cross_attn.kv(memory.states) for layer in self.decoder]
        return EncoderDecoderCache(self_kv=self_kv, cross_k=torch.stack([k for k, _ in kvs]),
                                   cross_v=torch.stack([v for _, v in kvs]), mask=memory.mask)

    def forward(
        self, tgt_ids: torch.Tensor, *, memory: EncoderOutput | None = None,
        cache: EncoderDecoderCache | None = None, logits_to_keep: int = 0,
    ) -> torch.Tensor | tuple[torch.Tensor, EncoderDecoderCache]:
        """tgt_ids (B, T): target tokens (starting with <|bos|>). Without a cache, pass
        memory= (teacher forcing over the whole target); returns logits (B, T, V)."""
        x = self._decode(tgt_ids, memory=memory, cache=cache, weights=None)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = output_logits(self.lm_head, x)  # (B, T, V)
        if self.config.final_logits_bias:  # in place: saves a (B, T, V) allocation (lm_head has no bias)
            logits += self.final_logits_bias.to(logits.dtype)
        if cache is None:
            return logits
        cache.advance(tgt_ids.shape[1])
        return logits, cache

    def _decode(self, tgt_ids, *, memory, cache, weights):
        if tgt_ids.dim() != 2:
            raise ScratchLMError(f"tgt_ids must be (batch, time), got shape {tuple(tgt_ids.shape)}")
        if cache is None and memory is None:
            raise ScratchLMError("pass memory=model.encode(src) or a cache from init_cache(memory=...)")
        start = 0 if cache is None else cache.length
        if cache is not None:
            cache.check_room(tgt_ids.shape[1])
        x = self._embed(tgt_ids, start, self.tgt_embed, "tgt_pos")  # (B, T, d)
        if cache is not None and one_call_step(self, x, cache.self_kv):
            self.fused_decode(x.view(x.shape[0], x.shape[2]), *cache.self_kv.buffers(), start,
                              cross=(cache.cross_k, cache.cross_v, cache.mask))
            return self.dec_norm(x)
        mask = memory.mask if cache is None else cache.mask
        for i, layer in enumerate(self.decoder):
            if cache is None:
                k, v = layer.cross_attn.kv(memory.states)  # (B, nh, S, hd)
            else:
                k, v = cache.cross_k[i], cache.cross_v[i]
            x = layer(x, k=k, v=v, mask=mask, cache=None if cache is None else cache.self_kv,
                      layer=i, weights=weights)
        return self.dec_norm(x)

    @torch.no_grad()
    def cross_attention(self, memory: EncoderOutput, tgt_ids: torch.Tensor) -> torch.Tensor:
        """Cross-attention weights of a teacher-forced pass: (n_layer, B, n_head, T, S)."""
        weights: list[torch.Tensor] = []
        self._decode(tgt_ids, memory=memory, cache=None, weights=weights)
        return torch.stack(weights)
