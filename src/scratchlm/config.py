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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scratchlm.errors import ScratchLMError
from scratchlm.models.config import DecoderConfig
from scratchlm.registry import build_model_config
from scratchlm.schema import build_section

# ----------------------------------------------------------------------------- sections
DEVICE_PATTERN = r"auto|cpu|mps|(cuda|xpu)(:\d+)?"


def check_device(name: str, key: str) -> None:
    """A device name torch knows: auto, cpu, mps, cuda, cuda:N (xpu likewise)."""
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise ScratchLMError(f"{key} must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


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
