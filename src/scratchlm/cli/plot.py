"""Plot a run's loss curves: `scratchlm plot RUN_DIR [--out FILE.png]`."""

from __future__ import annotations

import argparse

from scratchlm.eval.plot import plot_run

HELP = "plot the loss curves of a run directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", help="PNG path (default RUN_DIR/loss.png)")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    print(f"wrote {plot_run(args.run_dir, out=args.out)}")
    return 0
