"""Evaluate a model directory.

Decoder-only models: `scratchlm evaluate MODEL_DIR --data DATA_DIR` prints loss, perplexity
and bits per byte on a prepared data directory's validation split.

Encoder-decoders: `scratchlm evaluate MODEL_DIR --data PAIRS --metric bleu|chrf|rouge|ppl`
translates the sources of PAIRS (a prepared pairs directory, by default its test split; a
dataset directory; or a .tsv/.jsonl file) and scores them against the references: sacreBLEU
BLEU and chrF with their signatures, ROUGE-1/2/L (rouge-score), or the references'
teacher-forced loss and perplexity.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from scratchlm.data.pairs import PairData, is_pairs_dir, load_splits, read_pairs
from scratchlm.data.pretrain import TokenData
from scratchlm.errors import ScratchLMError
from scratchlm.eval.perplexity import evaluate_lm
from scratchlm.eval.translation import METRICS, score_pairs
from scratchlm.fileio import atomic_file
from scratchlm.modeldir import load

HELP = "perplexity (language models) or BLEU/chrF/ROUGE (seq2seq models) on held-out data"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--data", required=True, help="prepared data directory, or a pairs .tsv/.jsonl file")
    p.add_argument("--split", default=None,
                   help="split to score (language models: val [default] or train; pairs: test "
                        "[default], valid or train)")
    p.add_argument("--metric", action="append", choices=METRICS,
                   help="seq2seq metric (repeatable; default: bleu and chrf)")
    p.add_argument("--num-beams", type=int, default=1, help="seq2seq: beam size (1: greedy)")
    p.add_argument("--max-sentences", type=int, default=None, help="seq2seq: score only the first N pairs")
    p.add_argument("--lang", default=None, help="target language for BLEU/ROUGE tokenization (e.g. zh)")
    p.add_argument("--hyps-out", default=None, help="seq2seq: write the translations here")
    p.add_argument("--max-tokens", type=int, default=None, help="LM: evaluate only this many tokens")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    model, tokenizer = load(args.model_dir, device=torch.device(args.device))
    if getattr(model, "is_encoder_decoder", False):
        return _seq2seq(args, model, tokenizer)
    if args.metric and set(args.metric) != {"ppl"}:
        raise ScratchLMError("BLEU/chrF/ROUGE score translations of a seq2seq model; for a language "
                             "model use --metric ppl (the default)")
    if is_pairs_dir(args.data):
        raise ScratchLMError(f"{args.data} holds parallel pairs, but {args.model_dir} is a decoder-only "
                             "language model; evaluate it on a text data directory")
    data = TokenData(args.data)
    split = args.split or "val"
    r = evaluate_lm(model, tokenizer, data, split=split, max_tokens=args.max_tokens,
                    show_progress=True)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{split}: loss {r['loss']:.4f}  perplexity {r['perplexity']:.3f}  "
              f"bits/byte {r['bits_per_byte']:.4f}  ({r['tokens']:,} tokens, {r['bytes']:,} bytes)")
    return 0


def _load_pairs(path: str, split: str) -> tuple[list[tuple[str, str]], str | None]:
    p = Path(path)
    if p.is_file():
        return read_pairs(p).pairs, None
    if (p / "meta.json").is_file() and is_pairs_dir(p) and (p / "tokenizer").is_dir():
        data = PairData(p)
        return data.texts(split), data.meta.get("tgt_lang")
    if is_pairs_dir(p):
        splits = load_splits(p)
        if split not in splits:
            raise ScratchLMError(f"{p} has no {split} split (it has {', '.join(splits)})")
        return splits[split].pairs, None
    raise ScratchLMError(f"{p} is not a pairs file or directory (prepare one with `scratchlm prepare`)")


def _seq2seq(args: argparse.Namespace, model, tokenizer) -> int:
    split = args.split or "test"
    pairs, lang = _load_pairs(args.data, split)
    if args.max_sentences:
        pairs = pairs[: args.max_sentences]
    if not pairs:
        raise ScratchLMError(f"no pairs to score in {args.data} ({split})")
    metrics = args.metric or ["bleu", "chrf"]
    results, hyps = score_pairs(model, tokenizer, pairs, metrics=metrics, beam=args.num_beams,
                                lang=args.lang or lang)
    if args.hyps_out and hyps:
        with atomic_file(args.hyps_out) as f:
            f.write("".join(h.replace("\n", " ") + "\n" for h in hyps))
    if args.json:
        out = {k: (v if isinstance(v, dict) else {"score": v.score, "signature": v.signature})
               for k, v in results.items()}
        print(json.dumps({"pairs": len(pairs), "split": split, "beam": args.num_beams, **out}))
        return 0
    print(f"{len(pairs)} pairs ({split}), {'beam ' + str(args.num_beams) if args.num_beams > 1 else 'greedy'}")
    for k, v in results.items():
        if isinstance(v, dict):
            print(f"{k}: loss {v['loss']:.4f}  perplexity {v['perplexity']:.3f}  ({v['tokens']:,} target tokens)")
        else:
            print(v)
    return 0
