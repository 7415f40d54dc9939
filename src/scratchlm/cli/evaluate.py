"""Evaluate a model directory.

Decoder-only models: `scratchlm evaluate MODEL_DIR --data DATA_DIR` prints loss, perplexity
and bits per byte on a prepared data directory's validation split.

Encoder-decoders: `scratchlm evaluate MODEL_DIR --data PAIRS --metric bleu|chrf|rouge|ppl`
translates the sources of PAIRS (a prepared pairs directory, by default its test split; a
dataset directory; or a .tsv/.jsonl file) and scores them against the references: sacreBLEU
BLEU and chrF with their signatures, ROUGE-1/2/L (rouge-score), or the references'
teacher-forced loss and perplexity.

Decoder-only models on prompt -> reference records: `scratchlm evaluate MODEL_DIR --data
FILE.jsonl --metric rouge` reads an SFT file (prompt/completion, chat or Alpaca records, as
`scratchlm finetune` does), generates from each prompt (greedy, or --num-beams) and scores the
outputs against the completions / last assistant turns; `--metric ppl` (the default) gives the
teacher-forced loss of those spans, as fine-tuning's validation loss counts it. MODEL_DIR may
be a LoRA adapter directory (its base model is loaded from the adapter's config).

Log-likelihoods: `scratchlm evaluate MODEL_DIR --data FILE.jsonl --metric loglik` scores
records {"text": ...} or {"context": ..., "continuation": ...} with `scratchlm.score` (what
lm-eval's loglikelihood tasks and the server's `echo` + `logprobs` compute): the summed
log-probability, tokens, perplexity and greedy share; `--hyps-out FILE.jsonl` writes each
item's logprob, is_greedy, tokens and token_logprobs.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from scratchlm.cli.generate import add_precision_arguments, load_for_inference
from scratchlm.data.pairs import PairData, is_pairs_dir, load_splits, read_pairs
from scratchlm.data.pretrain import TokenData
from scratchlm.data.splits import check_split
from scratchlm.errors import ScratchLMError
from scratchlm.eval.completion import check_fit, completion_loss, read_items, score_completions
from scratchlm.eval.perplexity import evaluate_lm
from scratchlm.eval.score import read_score_items, score
from scratchlm.eval.translation import METRICS, score_pairs
from scratchlm.fileio import atomic_file
from scratchlm.generate.beam import BeamConfig
from scratchlm.generate.decode import GenerationConfig
from scratchlm.registry import is_encoder_decoder

HELP = ("perplexity on held-out text; BLEU/chrF/ROUGE of translations (seq2seq) or of "
        "completions of prompt -> reference files (language models)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--data", required=True,
                   help="prepared data directory; a pairs .tsv/.jsonl file (seq2seq); or an SFT "
                        ".jsonl/.json file of prompt -> reference records (decoder-only)")
    p.add_argument("--split", default=None,
                   help="split to score (language models: val [default] or train; pairs: test "
                        "[default], val or train; valid, validation and dev name val)")
    p.add_argument("--metric", action="append", choices=(*METRICS, "loglik"),
                   help="repeatable; seq2seq default: bleu and chrf; language models: ppl; "
                        "loglik: log-likelihoods of text / context+continuation records")
    p.add_argument("--num-beams", type=int, default=1, help="beam size (1: greedy)")
    p.add_argument("--max-sentences", type=int, default=None, help="score only the first N pairs/records")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens generated at most (SFT records: default 128; pairs: default the "
                        "translation length limit)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="sources/prompts decoded at once (default: 32 seq2seq sources, 8 prompts)")
    p.add_argument("--stop", action="append", default=[],
                   help="SFT records: stop string (repeatable; \\n and \\t are newline and tab)")
    p.add_argument("--lang", default=None, help="target language for BLEU/ROUGE tokenization (e.g. zh)")
    p.add_argument("--hyps-out", default=None,
                   help="write the outputs here, one a line (.jsonl: with prompt/source and reference)")
    p.add_argument("--max-tokens", type=int, default=None, help="LM: evaluate only this many tokens")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--device", default="cpu")
    add_precision_arguments(p)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.batch_size is not None and args.batch_size < 1:
        raise ScratchLMError("--batch-size must be at least 1")
    if args.max_sentences is not None and args.max_sentences < 1:
        raise ScratchLMError("--max-sentences must be at least 1 (leave it out to score everything)")
    model, tokenizer = load_for_inference(args)
    if args.metric and "loglik" in args.metric:
        return _loglik(args, model, tokenizer)
    if is_encoder_decoder(model):
        return _seq2seq(args, model, tokenizer)
    if Path(args.data).suffix in (".jsonl", ".json") and not Path(args.data).is_dir():
        return _completions(args, model, tokenizer)
    if args.metric and set(args.metric) != {"ppl"}:
        raise ScratchLMError("BLEU/chrF/ROUGE score generated text: for a language model pass an SFT "
                             "file of prompt -> reference records (--data FILE.jsonl); on a text "
                             "data directory use --metric ppl (the default)")
    if is_pairs_dir(args.data):
        raise ScratchLMError(f"{args.data} holds parallel pairs, but {args.model_dir} is a decoder-only "
                             "language model; evaluate it on a text data directory")
    data = TokenData(args.data)
    split = check_split(args.split or "val", list(data.splits), args.data)
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
        return splits[check_split(split, list(splits), str(p))].pairs, None
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
                                lang=args.lang or lang, batch_size=args.batch_size or 32,
                                max_new_tokens=args.max_new_tokens)
    _write_outputs(args.hyps_out, "source", pairs, hyps)
    return _report(args, len(pairs), split, results)


def _completions(args: argparse.Namespace, model, tokenizer) -> int:
    if args.split:
        raise ScratchLMError("--split is for data directories; an SFT file is scored whole "
                             "(--max-sentences N scores its first N records)")
    metrics = args.metric or ["ppl"]
    text_metrics = [m for m in metrics if m != "ppl"]
    results: dict = {}
    outputs: list[str] = []
    items = read_items(args.data, tokenizer=tokenizer, limit=args.max_sentences)
    if "ppl" in metrics:  # first: it is quick, and it checks nothing the decoding does not
        results["ppl"] = completion_loss(model, tokenizer, items, batch_size=args.batch_size or 8)
    if text_metrics:
        check_fit(model, tokenizer, items)
        stop = [s.replace("\\n", "\n").replace("\\t", "\t") for s in args.stop]
        max_new = args.max_new_tokens or 128
        config = GenerationConfig(max_new_tokens=max_new, temperature=0, stop=stop)
        beam = (BeamConfig(num_beams=args.num_beams, max_new_tokens=max_new)
                if args.num_beams > 1 else None)
        scores, outputs = score_completions(model, tokenizer, items, metrics=text_metrics,
                                            config=config, beam=beam, lang=args.lang,
                                            batch_size=args.batch_size or 8, show_progress=True)
        results.update(scores)
    _write_outputs(args.hyps_out, "prompt", [(it.prompt, it.reference) for it in items], outputs)
    return _report(args, len(items), Path(args.data).name, results)


def _loglik(args: argparse.Namespace, model, tokenizer) -> int:
    if set(args.metric) != {"loglik"}:
        raise ScratchLMError("--metric loglik scores its own records ({\"text\"} or "
                             "{\"context\", \"continuation\"}); run the other metrics separately")
    items = read_score_items(args.data, limit=args.max_sentences)
    scores = score(model, tokenizer, items, batch_size=args.batch_size or 8)
    n = sum(len(s.tokens) for s in scores)
    total = sum(s.logprob for s in scores)
    summary = {"items": len(scores), "tokens": n, "logprob": total,
               "perplexity": math.exp(min(-total / max(n, 1), 50)),
               "greedy": sum(s.is_greedy for s in scores) / len(scores)}
    if args.hyps_out:
        with atomic_file(args.hyps_out) as f:
            for s in scores:
                f.write(json.dumps({"logprob": s.logprob, "is_greedy": s.is_greedy,
                                    "tokens": s.tokens, "token_logprobs": s.token_logprobs}) + "\n")
    if args.json:
        print(json.dumps({"loglik": summary}))
    else:
        print(f"{len(scores)} items ({Path(args.data).name}): log-likelihood {total:.4f} over "
              f"{n:,} tokens, perplexity {summary['perplexity']:.3f}, greedy "
              f"{summary['greedy']:.1%}")
    return 0


def _write_outputs(path: str | None, source: str, pairs: list[tuple[str, str]], outputs: list[str]) -> None:
    """One output a line; as JSON {source|prompt, reference, output} for a .jsonl path."""
    if not path or not outputs:
        return
    with atomic_file(path) as f:
        if path.endswith(".jsonl"):
            for (src, ref), out in zip(pairs, outputs, strict=True):
                f.write(json.dumps({source: src, "reference": ref, "output": out}, ensure_ascii=False) + "\n")
        else:
            f.write("".join(h.replace("\n", " ") + "\n" for h in outputs))


def _report(args: argparse.Namespace, n: int, what: str, results: dict) -> int:
    if args.json:
        out = {k: (v if isinstance(v, dict) else {"score": v.score, "signature": v.signature})
               for k, v in results.items()}
        print(json.dumps({"pairs": n, "split": what, "beam": args.num_beams, **out}))
        return 0
    print(f"{n} pairs ({what}), {'beam ' + str(args.num_beams) if args.num_beams > 1 else 'greedy'}")
    for k, v in results.items():
        if isinstance(v, dict):
            print(f"{k}: loss {v['loss']:.4f}  perplexity {v['perplexity']:.3f}  ({v['tokens']:,} target tokens)")
        else:
            print(v)
    return 0
