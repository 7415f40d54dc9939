"""LoRA (Hu et al. 2021) by swapping `nn.Linear` modules, and adapters in PEFT's format.

A target linear layer W becomes `LoRALinear`, which computes

    y = W x + b + s * B A dropout(x),   A (r, in), B (out, r),  s = alpha / r

(s = alpha / sqrt(r) with rsLoRA, Kalajdzievski 2023). B starts at zero, so a fresh adapter
leaves the model's outputs exactly as they were. `LoRALinear` subclasses `nn.Linear` and
keeps the base layer's own `weight` and `bias` parameters, so the model's other code and its
state-dict names are unchanged; the adapter adds `<name>.lora_A` and `<name>.lora_B`.

    names = apply_lora(model, r=8, alpha=16, dropout=0.05, targets=["q_proj", "v_proj"])
    mark_only_lora_trainable(model)          # base frozen
    save_adapter("adapter/", model, base_model="path/to/base")   # PEFT files
    merge_lora(model); unmerge_lora(model)   # fold into W and back
    model = unload_lora(model)               # plain nn.Linear layers again (merged)
    load_adapter(model, "adapter/")          # our adapters, or ones `peft` saved

An adapter directory is what `peft` writes and reads: `adapter_config.json` and
`adapter_model.safetensors` with keys `base_model.model.<Hugging Face module name>.lora_A.weight`
(and `lora_B`). Our module names are Hugging Face's, so no renaming is needed; GPT-2's
projections are Conv1D there, hence `fan_in_fan_out: true`, but the A and B matrices are the
same either way.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from scratchlm.config import LORA_TARGETS_ALL
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_dir, read_json, write_json
from scratchlm.models.layers import Dropout

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
# The output layer is never a target: "all-linear" leaves it out, as peft does.
OUTPUT_LAYERS = ("lm_head",)


class LoRALinear(nn.Linear):
    """A linear layer with a low-rank update. Built from an existing `nn.Linear`, whose
    weight and bias parameters it keeps (same objects, same state-dict names)."""

    def __init__(
        self, base: nn.Linear, *, r: int, alpha: float, dropout: float = 0.0,
        rslora: bool = False,
    ) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.r, self.alpha, self.rslora = r, alpha, rslora
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as peft and nn.Linear do
        self.lora_dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """s * B A, (out, in): what merging adds to W."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        h = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., out)
        return out + h * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, r={self.r}, alpha={self.alpha}, "
                f"scaling={self.scaling:.4g}, merged={self.merged}")


# ----------------------------------------------------------------------------- targets
def linear_names(model: nn.Module) -> list[str]:
    """Every linear layer's full name (LoRA layers included), in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _short_names(names: list[str]) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n in names})


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of target names: the full name, or its last dotted parts."""
    return name == target or name.endswith("." + target)


def resolve_targets(model: nn.Module, targets: str | list[str]) -> list[str]:
    """Full names of the linear layers that `targets` selects: "all-linear" (every linear
    layer but the output layer), a list of names (matched as peft does: `q_proj` selects every
    `...q_proj`), or a comma-separated string of them."""
    linears = linear_names(model)
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    if targets == [LORA_TARGETS_ALL]:
        return [n for n in linears if n.rsplit(".", 1)[-1] not in OUTPUT_LAYERS]
    chosen: list[str] = []
    for t in targets:
        if t in OUTPUT_LAYERS:
            raise ScratchLMError(f"LoRA target {t!r} is the output layer, which LoRA does not "
                                 f"adapt here; choose among {', '.join(_short_names(linears))}")
        hits = [n for n in linears if _matches(n, t)]
        if not hits:
            allowed = [n for n in linears if n.rsplit(".", 1)[-1] not in OUTPUT_LAYERS]
            raise ScratchLMError(
                f"LoRA target {t!r} matches no linear layer of this {_family(model)} model; its "
                f"linear layers are {', '.join(_short_names(allowed))} (or use all-linear)"
            )
        chosen += [n for n in hits if n not in chosen and n.rsplit(".", 1)[-1] not in OUTPUT_LAYERS]
    return [n for n in linears if n in chosen]  # module order


def _family(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "family", type(model).__name__)


def _conv1d(model: nn.Module) -> bool:
    """Does transformers store this family's projections as Conv1D (in, out)? (GPT-2)"""
    from scratchlm.registry import get_family

    family = getattr(getattr(model, "config", None), "family", None)
    return family is not None and get_family(family).conv1d


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# ----------------------------------------------------------------------------- the swap
def apply_lora(
    model: nn.Module, *, r: int, alpha: float, dropout: float = 0.0,
    targets: str | list[str] = LORA_TARGETS_ALL, rslora: bool = False,
) -> list[str]:
    """Swap the target linear layers of `model` (in place) for LoRALinear; returns their
    names. A and B are created on the base weight's device and dtype (A drawn from torch's
    RNG: seed it first for reproducible runs)."""
    if r <= 0 or alpha <= 0:
        raise ScratchLMError(f"LoRA needs r > 0 and alpha > 0, got r={r}, alpha={alpha}")
    if lora_layers(model):
        raise ScratchLMError("the model already has LoRA layers; unload them first")
    names = resolve_targets(model, targets)
    for name in names:
        base = model.get_submodule(name)
        _set_module(model, name, LoRALinear(base, r=r, alpha=alpha, dropout=dropout, rslora=rslora))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def mark_only_lora_trainable(model: nn.Module) -> None:
    """Freeze every parameter but the adapters' A and B."""
    for p in model.parameters():
        p.requires_grad_(False)
    for m in lora_layers(model).values():
        m.lora_A.requires_grad_(True)
        m.lora_B.requires_grad_(True)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each shared tensor counted once."""
    seen: dict[int, tuple[int, bool]] = {}
    for p in model.parameters():
        seen[id(p)] = (p.numel(), p.requires_grad)
    return sum(n for n, t in seen.values() if t), sum(n for n, _ in seen.values())


def trainable_summary(model: nn.Module) -> str:
    trainable, total = count_parameters(model)
    return (f"trainable params: {trainable:,} / {total:,} "
            f"({100 * trainable / max(total, 1):.4f}%)")


def merge_lora(model: nn.Module) -> None:
    for m in lora_layers(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_layers(model).values():
        m.unmerge()


def unload_lora(model: nn.Module, *, merge: bool = True) -> nn.Module:
    """Replace every LoRALinear by a plain nn.Linear holding the same weight parameter, with
    the update merged in (merge=True) or dropped (merge=False). Returns the model."""
    for name, m in lora_layers(model).items():
        if merge:
            m.merge()
        else:
            m.unmerge()
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                          device="meta")
        plain.weight, plain.bias = m.weight, m.bias
        _set_module(model, name, plain)
    return model


# ----------------------------------------------------------------------------- PEFT files
def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights under peft's key names."""
    out = {}
    for name, m in lora_layers(model).items():
        out[f"{PREFIX}{name}.lora_A.weight"] = m.lora_A.detach().to("cpu").contiguous()
        out[f"{PREFIX}{name}.lora_B.weight"] = m.lora_B.detach().to("cpu").contiguous()
    return out


def adapter_config(model: nn.Module, *, base_model: str | None = None) -> dict[str, Any]:
    """adapter_config.json for `peft.LoraConfig` describing the model's adapters."""
    layers = lora_layers(model)
    if not layers:
        raise ScratchLMError("the model has no LoRA layers to save")
    first = next(iter(layers.values()))
    if any((m.r, m.alpha, m.rslora) != (first.r, first.alpha, first.rslora) for m in layers.values()):
        raise ScratchLMError("LoRA layers with different r/alpha/rslora cannot be saved as one adapter")
    names = list(layers)
    # Short names (q_proj) when they select exactly these layers, as peft writes them.
    short = _short_names(names)
    every = [n for n in linear_names(model) if any(_matches(n, t) for t in short)]
    targets = short if sorted(every) == sorted(names) else names
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": first.r,
        "lora_alpha": first.alpha,
        "lora_dropout": dropout,
        "target_modules": targets,
        "use_rslora": first.rslora,
        "bias": "none",
        # GPT-2's projections are Conv1D (in, out) in transformers.
        "fan_in_fan_out": _conv1d(model),
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
        "inference_mode": True,
        "revision": None,
    }


def write_adapter_files(directory: Path, model: nn.Module, tokenizer=None, *,
                        base_model: str | None = None) -> None:
    """Write adapter_config.json + adapter_model.safetensors (and the tokenizer, when
    given, so the directory is self-contained) into an existing directory."""
    directory = Path(directory)
    if base_model is None:
        base_model = getattr(model, "lora_base_model", None)
    write_json(directory / CONFIG_FILE, adapter_config(model, base_model=base_model))
    save_file(adapter_state(model), str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(directory, model_max_length=model.config.block_size)


def save_adapter(path: str | os.PathLike, model: nn.Module, tokenizer=None, *,
                 base_model: str | None = None) -> Path:
    """Write an adapter directory atomically (replacing an old one at `path`)."""
    with atomic_dir(path) as tmp:
        write_adapter_files(tmp, model, tokenizer, base_model=base_model)
    return Path(path)


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    d = Path(path)
    if not (d / CONFIG_FILE).is_file():
        raise ScratchLMError(f"{d} is not a LoRA adapter directory (no {CONFIG_FILE})")
    try:
        cfg = read_json(d / CONFIG_FILE)
    except ValueError as e:
        raise ScratchLMError(f"{d / CONFIG_FILE} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type", "LORA") != "LORA":
        raise ScratchLMError(f"{d / CONFIG_FILE}: only LoRA adapters are supported, this one is "
                             f"{cfg.get('peft_type') if isinstance(cfg, dict) else cfg!r}")
    unsupported = [
        (cfg.get("use_dora"), "use_dora (DoRA)"),
        (cfg.get("rank_pattern"), "rank_pattern"),
        (cfg.get("alpha_pattern"), "alpha_pattern"),
        (cfg.get("modules_to_save"), "modules_to_save"),
        (cfg.get("layers_to_transform") is not None, "layers_to_transform"),
        (cfg.get("bias", "none") != "none", f"bias={cfg.get('bias')!r}"),
    ]
    bad = [what for flag, what in unsupported if flag]
    if bad:
        raise ScratchLMError(f"{d / CONFIG_FILE} uses {', '.join(bad)}, which scratchlm does not "
                             "support (plain LoRA on linear layers is)")
    return cfg


def _read_adapter_state(d: Path) -> dict[str, torch.Tensor]:
    if (d / WEIGHTS_FILE).is_file():
        try:
            return load_file(str(d / WEIGHTS_FILE))
        except (SafetensorError, OSError, ValueError) as e:
            raise ScratchLMError(f"{d / WEIGHTS_FILE} is corrupt ({e})") from None
    if (d / "adapter_model.bin").is_file():
        try:
            return torch.load(d / "adapter_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:  # pickle and zip errors of many kinds
            raise ScratchLMError(f"{d / 'adapter_model.bin'} is corrupt ({e})") from None
    raise ScratchLMError(f"{d} has no {WEIGHTS_FILE}")


_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<which>lora_[AB])(?:\.[^.]+)?\.weight$")


def _adapter_weights(d: Path) -> dict[str, dict[str, torch.Tensor]]:
    """module name -> {"lora_A": ..., "lora_B": ...} from an adapter's weights file."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in _read_adapter_state(d).items():
        m = _KEY.match(key)
        if m is None:
            raise ScratchLMError(f"{d}: adapter weight {key!r} is not a LoRA A/B matrix of a "
                                 "linear layer (embedding adapters are not supported)")
        out.setdefault(m["module"], {})[m["which"]] = value
    return out


def load_adapter_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Copy an adapter's A and B into the model's LoRA layers (which must be the same set,
    of the same shapes): how a LoRA run resumes from its checkpoint."""
    d = Path(path)
    weights = _adapter_weights(d)
    layers = lora_layers(model)
    _check_same_layers(d, set(weights), set(layers))
    for name, m in layers.items():
        pair = weights[name]
        if set(pair) != {"lora_A", "lora_B"}:
            raise ScratchLMError(f"{d}: {name} lacks {'lora_B' if 'lora_A' in pair else 'lora_A'}")
        for which in ("lora_A", "lora_B"):
            param = getattr(m, which)
            if pair[which].shape != param.shape:
                raise ScratchLMError(
                    f"{d} was made for a different base model: {name}.{which} has shape "
                    f"{tuple(pair[which].shape)}, this model needs {tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(pair[which])


def _check_same_layers(d: Path, found: set[str], wanted: set[str]) -> None:
    unknown, missing = sorted(found - wanted), sorted(wanted - found)
    if unknown or missing:
        what = []
        if unknown:
            what.append(f"it adapts {unknown[0]}" + (f" (+{len(unknown) - 1} more)" if len(unknown) > 1 else "")
                        + ", which this model does not have as a target")
        if missing:
            what.append(f"it has no weights for {missing[0]}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
        raise ScratchLMError(f"{d} does not fit this model (adapter for a different base model?): "
                             f"{'; '.join(what)}")


def load_adapter(model: nn.Module, path: str | os.PathLike, *, dropout: float | None = None) -> list[str]:
    """Apply the adapter at `path` (ours, or one `peft` saved) to `model` in place: its
    config picks the layers, r, alpha and rsLoRA; returns the adapted layer names."""
    d = Path(path)
    cfg = read_adapter_config(d)
    weights = _adapter_weights(d)
    targets = cfg.get("target_modules")
    linears = linear_names(model)
    if isinstance(targets, str) and targets != LORA_TARGETS_ALL:
        try:
            names = [n for n in linears if re.fullmatch(targets, n)]  # peft: a regex on full names
        except re.error as e:
            raise ScratchLMError(f"{d / CONFIG_FILE}: target_modules {targets!r} is not a valid "
                                 f"regular expression ({e})") from None
    elif targets is None:
        names = sorted(weights)
    else:
        try:
            names = resolve_targets(model, targets)
        except ScratchLMError as e:
            raise ScratchLMError(f"{d} does not fit this model: {e}") from None
    _check_same_layers(d, set(weights), set(names))
    try:
        r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    except (KeyError, TypeError, ValueError):
        raise ScratchLMError(f"{d / CONFIG_FILE} lacks a valid r / lora_alpha") from None
    apply_lora(model, r=r, alpha=alpha, targets=names,
               dropout=float(cfg.get("lora_dropout") or 0.0) if dropout is None else dropout,
               rslora=bool(cfg.get("use_rslora", False)))
    load_adapter_weights(model, d)
    model.lora_base_model = cfg.get("base_model_name_or_path")
    return names


def load_with_adapter(
    path: str | os.PathLike, *, base: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
):
    """(model, tokenizer) of a model directory, or of an adapter directory applied to its
    base model (`base`, else the adapter's base_model_name_or_path). Eval mode."""
    from scratchlm.modeldir import load
    from scratchlm.tokenizers import Tokenizer

    d = Path(path)
    if not is_adapter_dir(d):
        return load(d, device=device)
    cfg = read_adapter_config(d)
    base = base or cfg.get("base_model_name_or_path")
    if not base:
        raise ScratchLMError(f"{d / CONFIG_FILE} names no base model; pass --base MODEL_DIR")
    if not Path(base).is_dir():
        raise ScratchLMError(f"the base model {base} of adapter {d} is not a directory here; "
                             "pass --base MODEL_DIR")
    model, tokenizer = load(base)
    load_adapter(model, d)
    if (d / "tokenizer.json").is_file():
        tokenizer = Tokenizer.load(d)
    return model.to(device).eval(), tokenizer
