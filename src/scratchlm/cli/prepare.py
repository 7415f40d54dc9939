"""Tokenize text into train/val token files:
`scratchlm prepare INPUT... --out DATA_DIR [--tokenizer char|bpe|TOKENIZER_DIR] [--vocab-size N] [--val-fraction F]`."""

from __future__ import annotations

import argparse

from scratchlm.data.pretrain import prepare

HELP = "tokenize text files into train/val token files"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="text files or directories")
    p.add_argument("--out", required=True, help="data directory to write")
    p.add_argument("--tokenizer", default="char",
                   help="char or bpe (trained on the input), or a tokenizer/model directory")
    p.add_argument("--vocab-size", type=int, default=8000, help="for a new bpe tokenizer")
    p.add_argument("--val-fraction", type=float, default=0.1)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    meta = prepare(args.inputs, out=args.out, tokenizer=args.tokenizer,
                   vocab_size=args.vocab_size, val_fraction=args.val_fraction)
    s = meta["splits"]
    print(f"wrote {args.out}: {s['train']['tokens']:,} train and {s['val']['tokens']:,} val tokens "
          f"({meta['tokenizer_kind']} tokenizer, {meta['vocab_size']} tokens, {meta['dtype']})")
    return 0
