"""Configuration: one dataclass per section, YAML recipes, dotted CLI overrides.

A run config has three sections: `model` (the family's own dataclass, chosen by
`model.family`), `train` and `data`. Values come from, in order: the dataclass defaults, the
family's named preset (`model.preset`), a YAML file, then `--section.key VALUE` overrides.
Unknown keys and wrong types raise ScratchLMError naming the key and the closest valid one.

    cfg = load_run_config("configs/demo.yaml", overrides=["--model.n_layer", "6"])
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scratchlm.errors import ScratchLMError


# ----------------------------------------------------------------------------- sections
def check_sizes(cfg: Any, positive: tuple[str, ...]) -> None:
    """The checks every model config shares: sizes > 0, dropout in [0, 1)."""
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ScratchLMError(f"model.{name} must be positive, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ScratchLMError(f"model.dropout must be in [0, 1), got {cfg.dropout}")


DEVICE_PATTERN = r"auto|cpu|mps|(cuda|xpu)(:\d+)?"


def check_device(name: str, key: str) -> None:
    """A device name torch knows: auto, cpu, mps, cuda, cuda:N (xpu likewise)."""
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise ScratchLMError(f"{key} must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


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


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    eval_every: int = 250
    eval_batches: int = 20
    save_every: int = 500
    log_every: int = 10
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (autocast); auto: bf16 on CUDA, else fp32
    compile: bool = False  # torch.compile the model (on CPU it needs a C++ compiler)
    threads: int = 0  # torch CPU threads of each process (0: torch's default, one per core)
    # Several processes (torchrun): auto (none on one process, ddp on several) | none | ddp |
    # fsdp; batch_size is per process (global batch = batch_size x grad_accum x processes).
    strategy: str = "auto"
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    # Where metrics go: metrics.jsonl always (resume and loss.png read it), plus tensorboard
    # (event files in RUN/tensorboard) when listed: [jsonl] or [jsonl, tensorboard].
    report_to: list[str] = field(default_factory=lambda: ["jsonl"])
    # Model selection and early stopping: which validation number picks best/ (val_loss is
    # lower-is-better; val_bleu and val_chrf, computed by seq2seq runs, higher-is-better),
    # and how many evaluations without improvement end the run (0: never stop early).
    best_metric: str = "val_loss"  # val_loss | val_bleu | val_chrf
    patience: int = 0
    # Sequence-to-sequence training.
    label_smoothing: float = 0.0
    teacher_forcing: float = 1.0  # probability of feeding the gold token at the start
    teacher_forcing_end: float = 1.0  # ... and at max_steps (scheduled sampling when < 1)
    teacher_forcing_schedule: str = "linear"  # linear | inverse_sigmoid
    val_translate: int = 200  # valid pairs translated for val_bleu/val_chrf at each eval (0: off)
    val_beam: int = 1  # beam size of those translations (1: greedy)
    # Continue training a model that exists (a model directory, HF directory or GGUF file):
    # its weights, config and tokenizer; fresh optimizer and schedule (scratchlm.train.init_from).
    init_from: str = ""

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "save_every",
                     "log_every", "eval_batches"):
            if getattr(self, name) <= 0:
                raise ScratchLMError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ScratchLMError(f"train.lr must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            raise ScratchLMError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.best_metric not in ("val_loss", "val_bleu", "val_chrf"):
            raise ScratchLMError(
                f"train.best_metric must be val_loss, val_bleu or val_chrf, got {self.best_metric!r}"
            )
        if self.threads < 0:
            raise ScratchLMError(f"train.threads must be >= 0 (0: torch's default), got {self.threads}")
        if self.patience < 0 or self.val_translate < 0 or self.val_beam < 1:
            raise ScratchLMError("train.patience and train.val_translate must be >= 0, train.val_beam >= 1")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ScratchLMError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("teacher_forcing", "teacher_forcing_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ScratchLMError(f"train.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.teacher_forcing_schedule not in ("linear", "inverse_sigmoid"):
            raise ScratchLMError("train.teacher_forcing_schedule must be linear or inverse_sigmoid")
        if self.strategy not in ("auto", "none", "ddp", "fsdp"):
            raise ScratchLMError(f"train.strategy must be auto, none, ddp or fsdp, got {self.strategy!r}")
        if "jsonl" not in self.report_to or not set(self.report_to) <= {"jsonl", "tensorboard"}:
            raise ScratchLMError(f"train.report_to must be [jsonl] or [jsonl, tensorboard] "
                                 f"(metrics.jsonl is always written), got {self.report_to!r}")
        check_device(self.device, "train.device")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ScratchLMError(
                f"train.dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}"
            )


@dataclass
class DataConfig:
    dir: str = ""  # a directory written by `scratchlm prepare`


LORA_TARGETS_ALL = "all-linear"


@dataclass
class LoRAConfig:
    """LoRA (Hu et al. 2021): W x + (alpha / r) * B A x, with A (r, in) and B (out, r)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05  # on the adapter's input only
    targets: str = LORA_TARGETS_ALL  # all-linear (every linear but lm_head) | q_proj,v_proj,...
    rslora: bool = False  # scale by alpha / sqrt(r) (Kalajdzievski 2023) instead of alpha / r

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ScratchLMError(f"lora.r must be positive, got {self.r}")
        if self.alpha <= 0:
            raise ScratchLMError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ScratchLMError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_list():
            raise ScratchLMError("lora.targets is empty; use all-linear or names like q_proj,v_proj")

    def target_list(self) -> list[str]:
        return [t.strip() for t in self.targets.split(",") if t.strip()]


@dataclass
class FinetuneConfig:
    """What `scratchlm finetune` trains on and which parameters it trains."""

    method: str = "lora"  # lora | full
    base: str = ""  # the model directory being fine-tuned (set from the command line)
    data: str = ""  # SFT file: Alpaca JSON/JSONL, chat JSONL ("messages") or prompt/completion
    val_data: str = ""  # "": hold out val_fraction of `data`
    val_fraction: float = 0.05
    format: str = "auto"  # auto | alpaca | chat | prompt_completion
    max_len: int = 0  # tokens per example; 0: the model's context (model.block_size)
    truncation: str = "right"  # longer examples: right (cut the end) | left (keep the end) | drop
    bad_lines: str = "error"  # malformed lines / examples: error (stop) | skip (count and go on)
    packing: bool = False  # several short examples per row, no attention across them
    group_by_length: bool = True  # unpacked batches of similar lengths (less padding)
    freeze_embeddings: bool = False  # full: keep token (and position) embeddings fixed
    freeze_layers: int = 0  # full: keep the first N blocks fixed
    gradient_checkpointing: bool = False  # recompute block activations in backward

    def __post_init__(self) -> None:
        choices = {"method": ("lora", "full"), "truncation": ("right", "left", "drop"),
                   "bad_lines": ("error", "skip"),
                   "format": ("auto", "alpaca", "chat", "prompt_completion")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ScratchLMError(f"finetune.{name} must be one of {', '.join(allowed)}, "
                                     f"got {getattr(self, name)!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ScratchLMError(f"finetune.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_len < 0 or self.freeze_layers < 0:
            raise ScratchLMError("finetune.max_len and finetune.freeze_layers must be >= 0")


@dataclass
class RunConfig:
    model: Any = field(default_factory=DecoderConfig)  # the family's config dataclass
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # Fine-tuning sections: None (and left out of config.yaml) for pretraining runs.
    lora: LoRAConfig | None = None
    finetune: FinetuneConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


# ----------------------------------------------------------------------------- building
def _type_of(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and for CLI strings, convert) `value` against the annotation `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ScratchLMError as e:
                errors.append(e)
        raise errors[0]
    if origin is list:  # a YAML list, or comma-separated on the command line
        items = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise ScratchLMError(f"{key} must be a list of names (a,b), got {value!r}")
        return items
    want = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]
    if isinstance(value, str) and tp is not str:
        text = value.strip()
        try:
            if tp is bool:
                low = text.lower()
                if low in ("true", "yes", "1", "on"):
                    return True
                if low in ("false", "no", "0", "off"):
                    return False
                raise ValueError
            if tp is int:
                return int(text)
            return _coerce(float(text), float, key)
        except ValueError:
            raise ScratchLMError(f"{key} must be {want}, got {value!r}") from None
    if tp is float and isinstance(value, float | int) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ScratchLMError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ScratchLMError(f"{key} must be {want}, got {value!r}")
    return value


def _check_keys(cls: type, values: dict[str, Any], section: str) -> dict[str, Any]:
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for k, v in values.items():
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f"; did you mean {section}.{close[0]}?" if close else ""
            raise ScratchLMError(
                f"unknown config key {section}.{k}{hint} (valid: {', '.join(names)})"
            )
        out[k] = _coerce(v, _type_of(cls, k), f"{section}.{k}")
    return out


# Ranges by key name, for every section and model family (a rule applies where the key
# exists; None values mean "the default" and are not checked): (low, low_inclusive, high,
# high_inclusive). The dataclasses' own checks run first; these catch what they leave open.
RANGES: dict[str, tuple[float, bool, float, bool]] = {
    "norm_eps": (0.0, False, math.inf, False),
    "init_std": (0.0, False, math.inf, False),
    "rope_theta": (0.0, False, math.inf, False),
    "rope_factor": (0.0, False, math.inf, False),
    "rope_low_freq_factor": (0.0, False, math.inf, False),
    "rope_high_freq_factor": (0.0, False, math.inf, False),
    "rope_original_max_len": (0, True, math.inf, False),
    "n_kv_head": (1, True, math.inf, False),
    "n_enc_layer": (1, True, math.inf, False),
    "d_ff": (1, True, math.inf, False),
    "d_embed": (1, True, math.inf, False),
    "attn_head_dim": (1, True, math.inf, False),
    "min_lr_ratio": (0.0, True, 1.0, True),
    "weight_decay": (0.0, True, math.inf, False),
    "grad_clip": (0.0, True, math.inf, False),
    "beta1": (0.0, True, 1.0, False),
    "beta2": (0.0, True, 1.0, False),
    "val_beam": (1, True, math.inf, False),
    "seed": (0, True, 2**63, False),
    "val_fraction": (0.0, True, 1.0, False),
}


def _range_text(lo: float, lo_in: bool, hi: float, hi_in: bool) -> str:
    if hi == math.inf:
        return f"{'>=' if lo_in else '>'} {lo:g}"
    return f"in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def check_ranges(obj: Any, section: str) -> None:
    """Refuse a value outside its key's range (RANGES), naming the key."""
    for f in dataclasses.fields(obj):
        rule = RANGES.get(f.name)
        value = getattr(obj, f.name)
        if rule is None or value is None or isinstance(value, bool):
            continue
        lo, lo_in, hi, hi_in = rule
        if not ((value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)):
            raise ScratchLMError(f"{section}.{f.name} must be {_range_text(*rule)}, got {value}")


def build_section(cls: type, values: dict[str, Any], section: str) -> Any:
    obj = cls(**_check_keys(cls, values, section))
    check_ranges(obj, section)
    return obj


def build_model_config(values: dict[str, Any]) -> Any:
    """Pick the family's dataclass from `family`, fill it from its preset, then `values`."""
    from scratchlm.registry import get_family

    family = values.get("family", DecoderConfig.family)
    spec = get_family(family)
    preset = values.get("preset")
    merged: dict[str, Any] = {}
    if preset is not None:
        if preset not in spec.presets:
            close = difflib.get_close_matches(str(preset), spec.presets, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ScratchLMError(
                f"unknown model.preset {preset!r} for family {family!r}{hint} "
                f"(presets: {', '.join(spec.presets)})"
            )
        merged.update(spec.presets[preset])
    merged.update(values)
    merged["family"] = family
    return build_section(spec.config_cls, merged, "model")


SECTIONS = {"model": None, "train": TrainConfig, "data": DataConfig, "lora": LoRAConfig,
            "finetune": FinetuneConfig}
# Sections built only when a recipe or an override names them.
OPTIONAL_SECTIONS = ("lora", "finetune")


def parse_overrides(args: list[str]) -> dict[str, dict[str, str]]:
    """['--model.n_layer', '6', '--train.lr=3e-4'] -> {'model': {'n_layer': '6'}, 'train': {...}}."""
    out: dict[str, dict[str, str]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise ScratchLMError(
                f"unexpected argument {arg!r}; config overrides look like --section.key VALUE "
                f"(sections: {', '.join(SECTIONS)})"
            )
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ScratchLMError(f"--{key} needs a value")
            value = args[i + 1]
            i += 2
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            close = difflib.get_close_matches(section, SECTIONS, n=1)
            hint = f"; did you mean --{close[0]}.{name}?" if close else ""
            raise ScratchLMError(f"unknown config section in --{key}{hint}")
        out.setdefault(section, {})[name] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ScratchLMError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ScratchLMError(f"config file {path} is not valid YAML: {e}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ScratchLMError(f"config file {path} must be a mapping of sections")
    return data


def run_config_from_dict(
    data: dict[str, Any], overrides: dict[str, dict[str, Any]] | None = None
) -> RunConfig:
    for section in data:
        if section not in SECTIONS:
            close = difflib.get_close_matches(section, SECTIONS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ScratchLMError(f"unknown config section {section!r}{hint}")
    merged = {s: dict(data.get(s) or {}) for s in SECTIONS}
    for s, vals in (overrides or {}).items():
        merged[s].update(vals)
    named = set(data) | set(overrides or {})
    optional = {s: build_section(SECTIONS[s], merged[s], s) if s in named else None
                for s in OPTIONAL_SECTIONS}
    init_from = merged["train"].get("init_from")
    if init_from:  # the model is the source's; the model section may only repeat or adjust it
        from scratchlm.train.init_from import model_config

        model = model_config(str(init_from), merged["model"])
    else:
        model = build_model_config(merged["model"])
    return RunConfig(
        model=model,
        train=build_section(TrainConfig, merged["train"], "train"),
        data=build_section(DataConfig, merged["data"], "data"),
        **optional,
    )


def load_run_config(path: str | Path | None, *, overrides: list[str] = ()) -> RunConfig:
    data = load_yaml(path) if path else {}
    return run_config_from_dict(data, parse_overrides(list(overrides)))
