"""Arguments several verbs share (each verb's own file adds them to its parser)."""

from __future__ import annotations

import argparse


def add_overwrite(p: argparse.ArgumentParser) -> None:
    """The --overwrite flag of every verb that writes a directory (see fileio.claim_out_dir)."""
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds an earlier scratchlm output (never other files)")
