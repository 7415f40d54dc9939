"""Inference precision: int8 weights by swapping `nn.Linear` modules, bf16, and `auto`.

int8 replaces every `nn.Linear` of a model with `Int8Linear`, as LoRA swaps its layers
(peft/lora.py): the model class is unchanged, only its linear layers are. Embeddings, norms
and attention stay fp32. Which kernel an `Int8Linear` runs (`int8_kernel`):

- Where scratchlm's own kernels run (models/kernels: AVX-512 VNNI and a C compiler):
  `quantize="int8"` is `w8a8g`, llama.cpp's Q8_0 scheme: weights and activations in groups
  of 32 along K, one scale each, int8 x int8 products (vpdpbusd) summed per group into fp32.
  The output layer too, as in llama.cpp's Q8_0 files. Measured on SmolLM2-135M-Instruct,
  the 143 ChatterBot test prompts, the first 16 greedy tokens equal to fp32's: 128/143
  (bench/precision_quality.py), as with int8 weights x fp32 activations and an fp16 output
  layer (129/143), which it replaces (one row of GPT-2's 124M linears and head: 3.96 vs
  4.43 ms; 8 rows 6.43 vs 11.51 ms; bench/int8_kernels.py on a 2-core Sapphire Rapids).
  `quantize="int8-dynamic"` is `w8a8`: one activation scale per row, faster at several rows
  (8 rows: 5.31 ms), but LLMs' outlier activation channels make its greedy outputs drift
  (SmolLM2: 20/143 with every layer so; see `Int8Linear`).
- Elsewhere: `int8` is torch's weight-only kernel where bf16 is fast (int8 weight x bf16
  activations, `torch._weight_int8pack_mm`: the quality of bf16), else fbgemm's dynamic
  W8A8 (Jacob et al. 2018; activations quantized per tensor); its output layer keeps 16-bit
  weights (`HalfLinear`), because one int8 scale per vocabulary row flips near-tied argmaxes.
  `int8-dynamic` is fbgemm's W8A8 in every layer, the output layer included, as
  CTranslate2's int8.

Decoding one token per row, an int8 model whose family has `layer_specs()` (gpt, llama,
seq2seq_transformer) runs every layer in one native call (`kernels.DecodeLayers`, set as
`model.fused_decode` here): the int8 matmuls above with the norms, RoPE, attention and
activations between them in C, as CTranslate2 and llama.cpp run a layer, instead of ~190
PyTorch ops a layer. Whole-model decoding against CTranslate2 and llama.cpp is in
docs/benchmarks.md, "Precision".

    precision = choose_precision(dtype="auto", quantize="int8", device="cpu")
    model = apply_precision(model, precision)   # in place; also returned
    print(precision.describe())

A quantized model is for inference: it cannot be trained or saved.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from scratchlm.errors import ScratchLMError
from scratchlm.hardware import capabilities
from scratchlm.models import kernels

DTYPES = ("auto", "float32", "bfloat16")
QUANTIZE = ("none", "int8", "int8-dynamic")


class Int8Linear(nn.Module):
    """An `nn.Linear` with int8 weights (symmetric): one scale per output channel, or per
    channel and group of 32 inputs for `w8a8g`. `kernel` is one of scratchlm's kernels
    (`kernels.KINDS`, see the module docstring) or one of torch's, below.

    torch's two kernels. `weight_only` (what `--quantize int8` uses where bf16 is fast): the int8
    weight times bf16 activations (`torch._weight_int8pack_mm`), bf16 out; activations are
    never quantized, so the quality is bf16's. Otherwise `dynamic` (fbgemm, W8A8): each call
    quantizes its activations per tensor and multiplies in int8 with int32 accumulation
    (VNNI where the CPU has it): faster, but LLMs' outlier activation channels (SmolLM2's
    down_proj inputs peak at 720x their mean) lose the small channels, so greedy tokens drift
    (measured: top-1 agreement with fp32 0.51 over four chat prompts, bf16 0.96). Activations
    are quantized with 7 bits (`reduce_range`) on CPUs without VNNI: AVX2's 8-bit multiply-add
    saturates its 16-bit pair sums with full-range operands."""

    def __init__(self, base: nn.Linear, *, kernel: str = "weight_only", reduce_range: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.kernel, self.reduce_range = kernel, reduce_range
        w = base.weight.detach().float().cpu()  # (out, in)
        scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)  # (out,)
        bias = None if base.bias is None else base.bias.detach().float().cpu()
        if kernel == "w8a8g":  # one scale per row and group of 32 along K, as llama.cpp's Q8_0
            self._packed = kernels.PackedInt8(*group_int8(w), bias, kind=kernel)
            return
        if kernel in kernels.KINDS:  # scratchlm's own (models/kernels), packed for decoding
            q = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
            self._packed = kernels.PackedInt8(q, scale, bias, kind=kernel)
            return
        if kernel == "weight_only":
            self.register_buffer("qweight", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
            self.register_buffer("scales", scale.to(torch.bfloat16))
            self.register_buffer("bias", bias)
            return
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # torch marks its quantized tensors as deprecated
            warnings.simplefilter("ignore")
            qw = torch.quantize_per_channel(w, scale.double(), zero, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qw, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # (N, in)
        if self.kernel in kernels.KINDS:
            y = self._packed(rows).to(x.dtype)
        elif self.kernel == "weight_only":
            y = torch._weight_int8pack_mm(rows.to(torch.bfloat16), self.qweight, self.scales)  # (N, out)
            y = y.to(x.dtype) if self.bias is None else y.to(x.dtype) + self.bias.to(x.dtype)
        else:
            y = torch.ops.quantized.linear_dynamic(rows.float(), self._packed, self.reduce_range)
            y = y.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def state_dict(self, *args, **kwargs):
        raise ScratchLMError("an int8-quantized model is for inference and cannot be saved; "
                             "save the fp32 model (load it without quantize)")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 {self.kernel}"


def group_int8(w: torch.Tensor, group: int = kernels.GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 in groups of `group` along each row (Q8_0's scheme): w (N, K) ->
    int8 (N, K) and scales (N, ceil(K / group)); a ragged last group is padded with zeros."""
    n, k = w.shape
    kp = -(-k // group) * group
    wg = torch.nn.functional.pad(w, (0, kp - k)).view(n, kp // group, group)  # (N, K/g, g)
    scale = (wg.abs().amax(2, keepdim=True) / 127).clamp_min(1e-12)  # (N, K/g, 1)
    q = (wg / scale).round().clamp(-127, 127).to(torch.int8).view(n, kp)[:, :k]
    return q.contiguous(), scale[..., 0]


class HalfLinear(nn.Module):
    """An `nn.Linear` with fp16 weights and fp32 activations and accumulation (fbgemm's
    `linear_dynamic_fp16`): the output layer of an int8 model (see the module docstring)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        bias = None if base.bias is None else base.bias.detach().float().cpu()
        self._packed = torch.ops.quantized.linear_prepack_fp16(base.weight.detach().float().cpu(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()  # (N, in)
        y = torch.ops.quantized.linear_dynamic_fp16(rows, self._packed)  # (N, out)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    state_dict = Int8Linear.state_dict

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp16 weights"


OUTPUT_LAYER = "lm_head"  # every family's vocabulary projection


def int8_kernel(quantize: str = "int8") -> str:
    """The Int8Linear kernel for --quantize here. Where scratchlm's kernels run (AVX-512 VNNI,
    a C compiler): `int8` is `w8a8g` (Q8_0-style groups), `int8-dynamic` `w8a8` (per row).
    Elsewhere `int8` is torch's weight-only kernel where bf16 is fast (quality of bf16), else
    fbgemm's dynamic W8A8, and `int8-dynamic` is fbgemm's."""
    if kernels.library() is not None:
        return "w8a8g" if quantize == "int8" else "w8a8"
    if quantize == "int8" and capabilities().fast_bf16:
        return "weight_only"
    return "dynamic"


def output_format(quantize: str) -> str:
    """How --quantize stores the output layer: "int8" (int8-dynamic; int8 where scratchlm's
    grouped kernel runs) or "fp16" (`HalfLinear`: int8 with one scale per vocabulary row
    flips near-tied argmaxes)."""
    return "int8" if quantize == "int8-dynamic" or int8_kernel(quantize) == "w8a8g" else "fp16"


def fuse_linears(model: nn.Module) -> list[str]:
    """Where a module lists `fusable` groups (fused name -> layers reading the same input),
    replace the layers by one `nn.Linear` over their stacked weights, in place; returns the
    fused names. For inference only: the parts are gone (None), so are their state-dict names.

    One matmul instead of three (q/k/v) or two (gate/up) matters most when decoding one
    token: each call costs ~10-20 us of dispatch and dtype conversion beside its arithmetic.
    Per-row int8 scales are the same fused or not, so quality is unchanged."""
    fused = []
    for name, module in list(model.named_modules()):
        for target, parts in getattr(module, "fusable", {}).items():
            layers = [getattr(module, p) for p in parts]
            if not all(isinstance(layer, nn.Linear) for layer in layers):
                continue  # already fused, or not plain linear layers
            for layer in layers:
                if hasattr(layer, "merge"):  # a LoRA layer: fold the adapter in first
                    layer.merge()
            w = torch.cat([layer.weight.detach() for layer in layers])  # (sum of outs, in)
            bias = None
            if any(layer.bias is not None for layer in layers):
                bias = torch.cat([layer.bias.detach() if layer.bias is not None
                                  else w.new_zeros(layer.out_features) for layer in layers])
            one = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                one.weight.copy_(w)
                if bias is not None:
                    one.bias.copy_(bias)
            setattr(module, target, one.eval())
            for p in parts:
                setattr(module, p, None)
            fused.append(f"{name}.{target}" if name else target)
    return fused


def quantize_int8(model: nn.Module, *, kernel: str | None = None, output: str = "fp16") -> list[str]:
    """Swap every `nn.Linear` of `model` (LoRA layers merged, `fusable` ones fused first) for
    an `Int8Linear`, the output layer for a `HalfLinear` where fbgemm runs (`output="fp16"`)
    or an `Int8Linear` too (`output="int8"`, int8-dynamic), in place; returns the swapped names.
    `kernel`: weight_only or dynamic (default: `int8_kernel()`). Raises where int8 cannot run."""
    from scratchlm.registry import families_with, get_family

    family = getattr(getattr(model, "config", None), "family", None)
    if family is None or not get_family(family).int8:
        raise ScratchLMError(f"--quantize int8 covers the {', '.join(families_with('int8'))} families, "
                             f"not {family or type(model).__name__}; use --quantize none")
    kernel = kernel or int8_kernel()
    caps = capabilities()
    if kernel == "dynamic" and not caps.fast_int8:
        raise ScratchLMError(f"--quantize int8 needs fbgemm (an x86 CPU with AVX2) or fast bf16; "
                             f"this one has torch ISA {caps.isa} and quantized engines "
                             f"{torch.backends.quantized.supported_engines}; use --quantize none")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ScratchLMError("--quantize int8 runs on CPU only; use --device cpu or --quantize none")
    if caps.fast_int8:  # the dynamic kernel and HalfLinear run on this engine
        torch.backends.quantized.engine = caps.int8_engine
    fuse_linears(model)
    swapped = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        if hasattr(module, "merge"):  # a LoRA layer: fold the adapter into the weight first
            module.merge()
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if name == OUTPUT_LAYER and not caps.fast_int8:
            continue  # HalfLinear needs fbgemm: the output layer stays fp32
        setattr(owner, leaf, HalfLinear(module) if name == OUTPUT_LAYER and output == "fp16"
                else Int8Linear(module, kernel=kernel, reduce_range=not caps.vnni))
        swapped.append(name)
    if hasattr(model, "layer_specs"):  # decoding a token: all layers in one call where they can
        model.fused_decode = kernels.DecodeLayers.build(model.layer_specs())
    return swapped


@dataclass(frozen=True)
class Precision:
    """What a model computes in, and why (`reason` says what `auto` found)."""

    dtype: torch.dtype
    quantize: str
    reason: str = ""
    warning: str | None = None  # a one-line warning for stderr (e.g. slow bf16)

    def describe(self) -> str:
        kernel = {"weight_only": "int8 weights x bf16 activations (weight-only)",
                  "dynamic": "int8 weights x int8 activations (fbgemm dynamic)",
                  "w8a32": "int8 weights x fp32 activations (weight-only, scratchlm AVX-512 kernel)",
                  "w8a8": "int8 weights x int8 activations per row (scratchlm VNNI kernel"
                          + ("; AMX-INT8 tiles from 16 rows)" if kernels.amx() else ")"),
                  "w8a8g": "int8 weights and activations in groups of 32, as llama.cpp's Q8_0 "
                           "(scratchlm VNNI kernel)"}
        head = "; output layer fp16 weights" if capabilities().fast_int8 else "; output layer fp32"
        if output_format(self.quantize) == "int8":
            head = "; output layer too"
        what = (kernel[int8_kernel(self.quantize)] + head if self.quantize != "none"
                else f"{str(self.dtype).removeprefix('torch.')} weights and activations")
        return f"precision: {what}" + (f" ({self.reason})" if self.reason else "")


def choose_precision(*, dtype: str = "auto", quantize: str = "none",
                     device: str | torch.device = "cpu") -> Precision:
    """Resolve --dtype/--quantize for this machine. `auto` is bf16 where bf16 matmuls are fast
    (CUDA, or a CPU whose measured bf16 GEMM beats fp32) unless int8 is asked for, whose
    kernels take fp32 activations; fp32 elsewhere."""
    if dtype not in DTYPES:
        raise ScratchLMError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if quantize not in QUANTIZE:
        raise ScratchLMError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    dev = torch.device(device)
    if quantize != "none":
        if dev.type != "cpu":
            raise ScratchLMError(f"--quantize {quantize} runs on CPU only; use --device cpu or --quantize none")
        if dtype == "bfloat16":
            raise ScratchLMError(f"--quantize {quantize} keeps fp32 between its int8 matmuls; "
                                 "pass --dtype auto or float32 with it")
        warning = None
        if quantize == "int8" and int8_kernel(quantize) == "dynamic":
            warning = ("warning: no fast bf16 here, so --quantize int8 quantizes activations too "
                       "(fbgemm); greedy outputs of LLMs may drift from fp32's")
        return Precision(torch.float32, quantize, "the rest of the model in fp32", warning)
    if dev.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if dtype == "auto":
            return Precision(torch.bfloat16 if bf16_ok else torch.float32, "none", "auto: CUDA")
        return Precision(getattr(torch, dtype), "none")
    caps = capabilities()
    speed = ("not measured: no bf16 instructions" if caps.bf16_speedup is None
             else f"bf16 GEMM {caps.bf16_speedup:.1f}x fp32 here")
    if dtype == "auto":
        return Precision(torch.bfloat16 if caps.fast_bf16 else torch.float32, "none", f"auto: {speed}")
    if dtype == "bfloat16" and not caps.fast_bf16:
        return Precision(torch.bfloat16, "none", warning=(
            f"warning: --dtype bfloat16 will be slow on this CPU ({speed}); --dtype float32 is faster"))
    return Precision(getattr(torch, dtype), "none")


def apply_precision(model: nn.Module, precision: Precision) -> nn.Module:
    """Cast or quantize `model` in place for inference; returns it (eval mode)."""
    model.eval()
    if precision.quantize != "none":
        model.float()
        quantize_int8(model, kernel=int8_kernel(precision.quantize), output=output_format(precision.quantize))
    else:
        model.to(dtype=precision.dtype)
    return model


def place(model: nn.Module, *, device: str | torch.device = "cpu",
          dtype: torch.dtype | str | None = None, quantize: str = "none") -> nn.Module:
    """`scratchlm.load`'s last step: move the model, then cast or quantize it (eval mode).
    A torch dtype (or None: as built, fp32) casts as asked; a name is resolved for this
    machine by `choose_precision` (its warning, if any, goes to `warnings`)."""
    model.to(device=device)
    if not isinstance(dtype, str) and quantize == "none":
        return model.to(dtype=dtype).eval()
    name = dtype if isinstance(dtype, str) else str(dtype or torch.float32).removeprefix("torch.")
    precision = choose_precision(dtype=name, quantize=quantize, device=device)
    if precision.warning:
        warnings.warn(precision.warning, stacklevel=3)
    return apply_precision(model, precision)
