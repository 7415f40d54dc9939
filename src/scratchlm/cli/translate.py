"""Translate with an encoder-decoder model directory:
`scratchlm translate MODEL_DIR --src TEXT` or `--input FILE` (one source a line; writes
--output FILE or stdout), greedy by default, `--num-beams K` for beam search, or sampling
with `--temperature T --top-k K --top-p P`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scratchlm.cli.generate import add_precision_arguments, load_for_inference
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_file
from scratchlm.generate import GenerationConfig
from scratchlm.generate.beam import BeamConfig
from scratchlm.generate.translate import LengthLimit, translate_nbest

HELP = "translate text with an encoder-decoder (seq2seq) model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--src", action="append", help="source text (repeatable)")
    src.add_argument("--input", help="file with one source sentence a line")
    p.add_argument("--output", help="write translations here, one a line (default: stdout)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams")
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--num-return-sequences", type=int, default=1, help="n-best list size (beam)")
    p.add_argument("--no-repeat-ngram-size", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="> 0: sample instead of greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-len-a", type=float, default=2.0, help="output <= a * source tokens + b")
    p.add_argument("--max-len-b", type=int, default=10)
    p.add_argument("--on-long", choices=["truncate", "refuse"], default="truncate",
                   help="sources longer than the model's positions")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    add_precision_arguments(p)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise ScratchLMError(f"{path} does not exist")
        sources = path.read_text(encoding="utf-8").splitlines()
    else:
        sources = args.src
    if not sources or any(not s.strip() for s in sources):
        raise ScratchLMError("empty source text; give non-empty sentences (one a line with --input)")
    model, tokenizer = load_for_inference(args, adapters=False)
    beam = None
    if args.num_beams > 1:
        beam = BeamConfig(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                          length_penalty=args.length_penalty,
                          num_return_sequences=args.num_return_sequences,
                          no_repeat_ngram_size=args.no_repeat_ngram_size)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    nbest = translate_nbest(model, tokenizer, sources, config=config, beam=beam,
                            batch_size=args.batch_size, on_long=args.on_long,
                            length=LengthLimit(args.max_len_a, args.max_len_b))
    lines = []
    for hyps in nbest:
        if len(hyps) == 1:
            lines.append(tokenizer.decode(hyps[0][0]))
        else:
            lines.extend(f"{tokenizer.decode(t)}\t{score:.4f}" for t, score in hyps)
    if args.output:
        with atomic_file(args.output) as f:
            f.write("".join(line + "\n" for line in lines))
        print(f"wrote {len(lines)} line(s) to {args.output}", file=sys.stderr)
    else:
        for line in lines:
            print(line)
    return 0
