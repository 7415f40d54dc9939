"""Train a tokenizer: `scratchlm tokenizer train --input FILES... --kind char|bpe --vocab-size N --out DIR`."""

from __future__ import annotations

import argparse

from scratchlm.cli.options import add_overwrite
from scratchlm.data.pretrain import resolve_tokenizer
from scratchlm.data.text import list_text_files
from scratchlm.fileio import atomic_dir, claim_out_dir

HELP = "train a character-level or byte-level BPE tokenizer"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a tokenizer on text files")
    t.add_argument("--input", nargs="+", required=True, help="text files or directories")
    t.add_argument("--kind", choices=["char", "bpe"], default="bpe")
    t.add_argument("--vocab-size", type=int, default=8000, help="for bpe (default 8000)")
    t.add_argument("--out", required=True, help="directory for tokenizer.json")
    add_overwrite(t)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    claim_out_dir(args.out, overwrite=args.overwrite, inputs=args.input, kind="tokenizer directory")
    files = list_text_files(args.input)
    tok = resolve_tokenizer(args.kind, files=files, vocab_size=args.vocab_size)
    with atomic_dir(args.out) as tmp:
        tok.save(tmp)
    print(f"wrote {args.out}/tokenizer.json ({tok.kind}, {tok.vocab_size} tokens)")
    return 0
