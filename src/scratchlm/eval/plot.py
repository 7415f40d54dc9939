"""Loss curves of a run directory (metrics.jsonl) as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_file


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ScratchLMError(f"{run_dir} has no metrics.jsonl; is it a run directory from `scratchlm train`?")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ScratchLMError(f"{path} line {i} is not JSON") from None
    if not rows:
        raise ScratchLMError(f"{path} is empty: the run logged nothing yet")
    return rows


def plot_run(run_dir: str | Path, *, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    out = Path(out) if out else Path(run_dir) / "loss.png"
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", linewidth=1.5, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(f"{Path(run_dir).name}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(out, mode="wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return out
