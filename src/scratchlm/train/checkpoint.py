"""Checkpoints: a model directory plus `trainer_state.pt` (optimizer, step, RNG states).

Everything in trainer_state.pt is tensors and plain containers, so it loads with
`torch.load(weights_only=True)`: a checkpoint can never run code.

A checkpoint is built in a temp directory and swapped in whole (fileio.atomic_dir: one
atomic exchange where the OS has it, else two renames), so a kill at any moment leaves a
complete `last/` or, between the two renames, a complete `.last.old-PID` that `recover`
moves back before the next run looks for `last/`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_dir, clean_leftovers
from scratchlm.modeldir import write_model_files
from scratchlm.tokenizers import Tokenizer

STATE_FILE = "trainer_state.pt"
# What a run writes in its directory (each through a temp name beside it).
RUN_NAMES = ("last", "best", "final", "metrics.jsonl", "config.yaml", "loss.png")


def recover(run_dir: str | os.PathLike) -> None:
    """Before a run uses its directory: remove the temp files and directories that dead
    writers left (a kill -9 during a save), and put back a `last/` a kill took out in the
    middle of its swap. What a live process is writing is left alone."""
    for name in RUN_NAMES:
        clean_leftovers(Path(run_dir) / name)


def save_checkpoint(
    path: str | os.PathLike, *, model: torch.nn.Module, tokenizer: Tokenizer,
    state: dict[str, Any],
    write: Callable[[Path, torch.nn.Module, Tokenizer], None] = write_model_files,
) -> None:
    """`write` puts the model's files in the directory: a whole model directory by default
    (a LoRA run passes one that writes only its adapter)."""
    with atomic_dir(path) as tmp:
        write(tmp, model, tokenizer)
        torch.save(state, tmp / STATE_FILE)


def load_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path) / STATE_FILE
    if not p.is_file():
        raise ScratchLMError(f"{p} is missing: nothing to resume from")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt file
        raise ScratchLMError(f"{p} is corrupt ({type(e).__name__}); cannot resume") from None


def rng_state() -> dict[str, Any]:
    out: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out

