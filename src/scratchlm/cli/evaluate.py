"""Evaluate a model on a prepared data directory's validation split:
`scratchlm evaluate MODEL_DIR --data DATA_DIR` prints loss, perplexity and bits per byte."""

from __future__ import annotations

import argparse
import json

import torch

from scratchlm.data.pretrain import TokenData
from scratchlm.eval.perplexity import evaluate_lm
from scratchlm.modeldir import load

HELP = "loss, perplexity and bits per byte on a validation split"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--data", required=True, help="data directory from `scratchlm prepare`")
    p.add_argument("--split", default="val", choices=["val", "train"])
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate only this many tokens")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    model, tokenizer = load(args.model_dir, device=torch.device(args.device))
    data = TokenData(args.data)
    r = evaluate_lm(model, tokenizer, data, split=args.split, max_tokens=args.max_tokens,
                    show_progress=True)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{args.split}: loss {r['loss']:.4f}  perplexity {r['perplexity']:.3f}  "
              f"bits/byte {r['bits_per_byte']:.4f}  ({r['tokens']:,} tokens, {r['bytes']:,} bytes)")
    return 0
