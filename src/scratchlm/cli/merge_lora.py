"""Merge a LoRA adapter into its base model and write a plain model directory:
`scratchlm merge-lora RUN_DIR|ADAPTER_DIR --out MODEL_DIR [--checkpoint final|best|last]
[--base MODEL_DIR]`.

RUN_DIR is a `scratchlm finetune --method lora` run (its final/ adapter unless --checkpoint
says otherwise); ADAPTER_DIR is any directory with adapter_config.json and
adapter_model.safetensors, ours or one `peft` saved. The base model is --base, else the
adapter's base_model_name_or_path. The result is W + (alpha / r) B A in every adapted layer:
a model directory that generate, evaluate, finetune and `transformers` load like any other.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scratchlm.cli.options import add_overwrite
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import claim_out_dir, read_json
from scratchlm.modeldir import save_model_dir
from scratchlm.peft import is_adapter_dir, load_with_adapter, lora_layers, unload_lora

HELP = "merge a LoRA adapter (a finetune run or a PEFT adapter dir) into its base model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a LoRA finetune run or an adapter directory")
    p.add_argument("--out", required=True, help="the merged model directory to write")
    add_overwrite(p)
    p.add_argument("--checkpoint", choices=("final", "best", "last"), default="final",
                   help="which of the run's adapters (default final)")
    p.add_argument("--base", help="base model directory (default: the adapter's base)")


def adapter_dir(path: Path, checkpoint: str) -> Path:
    if is_adapter_dir(path):
        return path
    if not path.is_dir():
        raise ScratchLMError(f"{path} does not exist")
    d = path / checkpoint
    if is_adapter_dir(d):
        return d
    if (d / "config.json").is_file():
        raise ScratchLMError(f"{d} is a full model directory (a --method full run), not a LoRA "
                             "adapter: there is nothing to merge")
    found = [c for c in ("final", "best", "last") if is_adapter_dir(path / c)]
    hint = f"; it has --checkpoint {' / '.join(found)}" if found else ""
    raise ScratchLMError(f"{path} holds no LoRA adapter at {checkpoint}/{hint}")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    src = adapter_dir(Path(args.run_dir), args.checkpoint)
    out = Path(args.out)
    try:
        base = args.base or read_json(src / "adapter_config.json").get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        base = args.base  # load_with_adapter says what is wrong with the adapter
    claim_out_dir(out, overwrite=args.overwrite, kind="model directory",
                  inputs=[args.run_dir, src, base if base and Path(base).exists() else None])
    model, tokenizer = load_with_adapter(src, base=args.base)
    n = len(lora_layers(model))
    unload_lora(model, merge=True)
    save_model_dir(out, model, tokenizer)
    print(f"merged the adapter {src} ({n} layers) into {out}")
    return 0
