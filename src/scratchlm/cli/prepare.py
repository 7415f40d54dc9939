"""Tokenize text into train/val token files, or translation pairs into a pairs data directory.
Text: `scratchlm prepare INPUT... --out DATA_DIR [--tokenizer char|bpe|DIR|tokenizer.json|FILE.gguf]`;
INPUT is text, .jsonl/.json/.parquet/.csv/.tsv/.arrow (the document in `--text-field`), a
datasets directory, compressed or not, a directory or a glob (docs/data.md); `--on-bad skip`
skips malformed rows instead of stopping at the first.
Pairs: a dataset directory holding train.tsv, val.tsv (or valid.tsv) and test.tsv (found by itself), a .tsv
or .jsonl file with `--format pairs`, or `--src-file A --tgt-file B`; add `--max-len N`
and `--on-long truncate|skip|refuse` to bound sentence length.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scratchlm.cli.options import add_overwrite
from scratchlm.data.pairs import EMPTY_POLICIES, LONG_POLICIES, is_pairs_dataset, prepare_pairs
from scratchlm.data.pretrain import prepare
from scratchlm.data.readers import BAD_POLICIES
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import claim_out_dir

HELP = "tokenize text files (or translation pairs) into train/val token files"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="text or record files (.txt, .jsonl, .json, .parquet, .csv, .tsv, .arrow; "
                        ".gz/.xz/.zst), directories, globs or datasets directories; or one "
                        "pairs file / pairs dataset directory")
    p.add_argument("--out", required=True, help="data directory to write")
    add_overwrite(p)
    p.add_argument("--format", choices=["auto", "text", "pairs"], default="auto",
                   help="auto: pairs for a directory holding train.tsv or train.jsonl, else text; "
                        "pairs: a .tsv (src<TAB>tgt) or .jsonl ({src, tgt}) file")
    p.add_argument("--src-file", help="pairs from two line-aligned files: the source side")
    p.add_argument("--tgt-file", help="... and the target side")
    p.add_argument("--tokenizer", default="char",
                   help="char or bpe (trained on the input; for pairs, on both sides of train), "
                        "a tokenizer/model directory, a tokenizer.json or a GGUF file")
    p.add_argument("--vocab-size", type=int, default=8000, help="for a new bpe tokenizer")
    p.add_argument("--val-fraction", "--valid-fraction", dest="val_fraction", type=float,
                   default=0.1, help="held out for validation (pairs: only without a val split)")
    p.add_argument("--max-len", type=int, default=256,
                   help="pairs: most tokens a side may have, <|eos|> included")
    p.add_argument("--on-long", choices=LONG_POLICIES, default="truncate",
                   help="pairs: what to do with a side over --max-len")
    p.add_argument("--on-empty", choices=EMPTY_POLICIES, default="skip",
                   help="pairs: what to do with an empty line or side")
    p.add_argument("--text-field", default="text",
                   help="text: the column/field holding each document in .jsonl/.parquet/.csv/"
                        "datasets inputs (default text)")
    p.add_argument("--src-field", default="src", help="pairs: the source field/column (default src)")
    p.add_argument("--tgt-field", default="tgt", help="pairs: the target field/column (default tgt)")
    p.add_argument("--on-bad", choices=BAD_POLICIES, default="refuse",
                   help="a malformed row (broken JSON, missing or non-string field): stop with "
                        "FILE:LINE (refuse) or skip it and count it (skip)")
    p.add_argument("--src-lang", help="pairs: source language code, e.g. en (default: the dataset's meta.json)")
    p.add_argument("--tgt-lang", help="pairs: target language code, e.g. zh; picks BLEU's tokenizer")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    two_files = args.src_file or args.tgt_file
    if two_files and not (args.src_file and args.tgt_file):
        raise ScratchLMError("give both --src-file and --tgt-file (line-aligned source and target)")
    if two_files and (args.inputs or args.format == "text"):
        raise ScratchLMError("--src-file/--tgt-file replace INPUT; give one or the other")
    if not (args.inputs or two_files):
        raise ScratchLMError("give INPUT files or directories, or --src-file and --tgt-file")
    claim_out_dir(args.out, overwrite=args.overwrite, kind="data directory",
                  inputs=[*args.inputs, args.src_file, args.tgt_file,
                          args.tokenizer if Path(args.tokenizer).exists() else None])
    auto_pairs = args.format == "auto" and len(args.inputs) == 1 and is_pairs_dataset(args.inputs[0])
    if not (two_files or args.format == "pairs" or auto_pairs):
        return _run_text(args)
    if len(args.inputs) > 1:
        raise ScratchLMError("pairs come from one .tsv/.jsonl file or dataset directory; "
                             f"got {len(args.inputs)} inputs")
    data = (args.src_file, args.tgt_file) if two_files else args.inputs[0]
    meta = prepare_pairs(data, out=args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                         max_len=args.max_len, on_long=args.on_long, on_empty=args.on_empty,
                         valid_fraction=args.val_fraction, src_lang=args.src_lang,
                         tgt_lang=args.tgt_lang, src_field=args.src_field,
                         tgt_field=args.tgt_field, on_bad=args.on_bad)
    counts = ", ".join(f"{c['pairs']:,} {s}" for s, c in meta["splits"].items())
    print(f"wrote {args.out}: {counts} pairs ({meta['tokenizer_kind']} tokenizer, "
          f"{meta['vocab_size']} tokens, {meta['dtype']}; longest source {meta['max_src_len']}, "
          f"target {meta['max_tgt_len']} tokens)")
    return 0


def _run_text(args: argparse.Namespace) -> int:
    meta = prepare(args.inputs, out=args.out, tokenizer=args.tokenizer,
                   vocab_size=args.vocab_size, val_fraction=args.val_fraction,
                   field=args.text_field, on_bad=args.on_bad)
    s = meta["splits"]
    print(f"wrote {args.out}: {s['train']['tokens']:,} train and {s['val']['tokens']:,} val tokens "
          f"({meta['tokenizer_kind']} tokenizer, {meta['vocab_size']} tokens, {meta['dtype']})")
    return 0
