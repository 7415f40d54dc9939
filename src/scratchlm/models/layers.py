"""Building blocks that more than one family shares unchanged."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.models import kernels


class Dropout(nn.Dropout):
    """nn.Dropout, whose mask on CPUs where scratchlm's kernels run is a hash of a seed from
    torch's generator (kernels.dropout): ~20x faster than torch's CPU Bernoulli sampling, and
    the backward pass keeps no mask. Same distribution, different draws; elsewhere (and under
    torch.compile, which cannot trace a ctypes call) torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and not self.inplace and kernels.dropout_ok(x, self.p)
                and not torch.compiler.is_compiling()):
            return kernels.dropout(x, self.p)
        return super().forward(x)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), as in Llama: x / rms(x) * weight."""

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Compute in fp32 like the reference implementations, then cast back.
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight


ROPE_TYPES = ("default", "linear", "llama3")


def rope_inv_freq(
    head_dim: int, *, theta: float = 10000.0, rope_type: str = "default", factor: float = 1.0,
    low_freq_factor: float = 1.0, high_freq_factor: float = 4.0, original_max_len: int = 0,
) -> torch.Tensor:
    """RoPE's inverse frequencies (hd/2,), with the position-scaling schemes of HF transformers.

    - "default": theta^(-2i/hd).
    - "linear" (position interpolation, Chen et al. 2023): the default divided by `factor`.
    - "llama3" (Llama 3.1): wavelengths longer than original_max_len / low_freq_factor are
      divided by `factor`, those shorter than original_max_len / high_freq_factor are kept,
      and the band between is interpolated smoothly.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / factor
    if rope_type == "llama3":
        low_wavelen = original_max_len / low_freq_factor
        high_wavelen = original_max_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (original_max_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"unknown RoPE type {rope_type!r} (known: {', '.join(ROPE_TYPES)})")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021, RoFormer), "rotate half" layout as in HF Llama.

    `inv_freq` (hd/2,) replaces the default frequencies (see `rope_inv_freq` for scaled RoPE)."""

    def __init__(
        self, head_dim: int, *, max_len: int, theta: float = 10000.0,
        inv_freq: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if inv_freq is None:
            inv_freq = rope_inv_freq(head_dim, theta=theta)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._build(max_len)

    def _build(self, max_len: int) -> None:
        pos = torch.arange(max_len, dtype=torch.float32, device=self.inv_freq.device)
        freqs = torch.outer(pos, self.inv_freq)  # (L, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (L, hd)
        self.register_buffer("cos", emb.cos(), persistent=False)
        # sin with its first half negated: rotate_half(x) * sin == x.roll(hd/2) * this, as
        # rotate_half(x) = cat(-x2, x1) and x.roll(hd/2) = cat(x2, x1), exactly
        sin = emb.sin()
        self.register_buffer("sin", torch.cat([-sin[:, : sin.shape[1] // 2], sin[:, sin.shape[1] // 2 :]], -1),
                             persistent=False)

    def forward(self, x: torch.Tensor, *, start: int) -> torch.Tensor:
        """x: (B, nh, T, hd) rotated to positions start .. start+T-1."""
        return rotate(x, *self.rows(start, x.shape[2]))

    def rows(self, start: int, t: int, position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) for positions start .. start+t-1, (t, hd) each, or at per-token positions
        `position_ids` (B, t), (B, 1, t, hd) each: what `rotate` takes for x (B, nh, t, hd)."""
        if start + t > self.cos.shape[0]:
            self._build(start + t)
        if position_ids is not None:  # (positions never exceed start + t - 1)
            return self.cos[position_ids].unsqueeze(1), self.sin[position_ids].unsqueeze(1)
        return self.cos[start : start + t], self.sin[start : start + t]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE's rotation, x * cos + rotate_half(x) * sin, with `sin` as RotaryEmbedding keeps
    it (first half negated): three ops and a roll instead of chunk, neg, cat and three ops,
    with the same products and sums (while decoding a token, each op costs more in dispatch
    than in arithmetic)."""
    return x * cos.to(x.dtype) + x.roll(x.shape[-1] // 2, -1) * sin.to(x.dtype)


class SwiGLU(nn.Module):
    """Gated MLP with SiLU (Shazeer 2020, "GLU Variants Improve Transformer")."""

    # For inference, models/quant.py may replace gate/up by one layer (`fuse_linears`).
    fusable = {"gate_up_proj": ("gate_proj", "up_proj")}

    def __init__(self, d_model: int, d_ff: int, *, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.gate_up_proj: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


# At most this many rows take the decoding path of `output_logits`.
_DECODE_ROWS = 64


def output_logits(head: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """`head(h)`, (..., d) -> (..., vocab), with a faster path for decoding on CPU.

    While decoding, the output projection is a matrix-vector product (one row per sequence)
    over the largest matrix of a small model. On CPU, MKL reads an (vocab, d) weight much
    more slowly in that product than a contiguous (d, vocab) copy (measured by
    bench/lm_head_gemv.py: 1.3x at 1 row, 1.7x at 8 rows for GPT-2's head). So without
    autograd and for few rows, we multiply by a transposed copy kept beside the layer; it is
    rebuilt whenever the weight changes (another tensor, or an in-place update), and it costs
    one more copy of the head's weight in memory while it lives.
    """
    if not isinstance(head, nn.Linear):  # e.g. models/quant.py's Int8Linear: its own kernel
        return head(h)
    w = head.weight
    rows = h.numel() // h.shape[-1]
    # Only without autograd: a frozen head (LoRA) still passes gradients to h, and a copy made
    # under inference_mode (while generating) cannot take part in a backward pass.
    needs_grad = torch.is_grad_enabled() and (w.requires_grad or h.requires_grad)
    if h.device.type != "cpu" or rows > _DECODE_ROWS or needs_grad:
        return head(h)
    if w.is_inference():  # no version counter to tell an in-place update: no cached copy
        return head(h)
    key = (w.data_ptr(), w._version, w.dtype, tuple(w.shape))
    cached = head.__dict__.get("_decode_weight_t")
    if cached is None or cached[0] != key:
        cached = (key, w.detach().t().contiguous())  # (d, vocab)
        head.__dict__["_decode_weight_t"] = cached
    out = h @ cached[1]
    return out if head.bias is None else out + head.bias
