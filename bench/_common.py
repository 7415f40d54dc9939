"""Shared helpers for the benchmark scripts in bench/: environment, interleaved timing,
markdown tables, and updating one script's section of docs/benchmarks.md.

Every script runs our implementation and the peer in one process and interleaves their
repeats (ours, peer, ours, peer, ...), so that slow drift of the machine (another job, thermal
state) hits both sides alike; it then reports medians.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from scratchlm.hardware import describe

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
OUT = ROOT / "bench" / "out"
THREADS = 2  # the machine default of the reference box; see docs/benchmarks.md

INTRO = """# Benchmarks

Speed and quality of scratchlm against a peer implementation (Hugging Face `transformers`),
measured on CPU. Reproduce with `make bench`, which runs, one after the other:

    .venv/bin/python bench/train_speed.py    # training tokens/s: ours vs HF GPT2LMHeadModel
    .venv/bin/python bench/decode_speed.py   # greedy decoding tokens/s: ours vs HF generate()
    .venv/bin/python bench/quality_char.py   # char-level Shakespeare, nanoGPT's CPU recipe
    .venv/bin/python bench/beam_speed.py     # encoder-decoder beam search: ours vs HF Marian, CTranslate2
    .venv/bin/python bench/precision.py      # decoding in fp32/bf16/int8 vs HF and CTranslate2
    .venv/bin/python bench/smollm2_decode.py # SmolLM2-135M decoding vs llama.cpp (built if absent)

Each script rewrites only its own section of this file (`bench/seq2seq_mt.py`, also run by
`make bench`, writes docs/seq2seq.md) (between its `<!-- bench:NAME -->`
markers); nothing here is typed in by hand. Speed scripts run both sides in one process,
alternate their repeats (ours, peer, ours, peer, ...) and report medians, so a background job
slows both alike; the ratio is ours / peer (above 1: we are faster). Hugging Face models are
built from configs (`GPT2Config`), never downloaded (`HF_HUB_OFFLINE=1`). Run them on an
otherwise idle machine: on 2 cores a concurrent test run changes absolute numbers a lot, and
even on an idle machine absolute tokens/s drift by 10-30% between runs. Ratios are steadier
but still move by several percent from run to run, so rerun before reading much into a
ratio that sits near a goal.

`bench/lm_head_gemv.py` is a diagnostic, not part of `make bench`: it times the output
projection (logits) by weight layout, the largest single cost of decoding here.
"""


def setup(seed: int = 0, threads: int = THREADS) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def env_info() -> dict[str, str]:
    try:
        import transformers

        tv = transformers.__version__
    except ImportError:  # pragma: no cover
        tv = "not installed"
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": tv,
        "cpu": f"{cpu_model()} ({os.cpu_count()} logical CPUs visible)",
        "threads": str(torch.get_num_threads()),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "load": loadavg(),
        "hardware": describe(),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def env_lines(info: dict[str, str] | None = None) -> str:
    i = info or env_info()
    return (
        f"Measured {i['date']}: torch {i['torch']}, transformers {i['transformers']}, "
        f"Python {i['python']}; CPU: {i['cpu']}, SIMD {i['capability']}; "
        f"torch threads: {i['threads']}; load average at start: {i['load']}.\n"
        f"Hardware: {i['hardware']}."
    )


def interleave(
    runners: dict[str, Callable[[], float]], repeats: int, *, verbose: bool = True
) -> dict[str, list[float]]:
    """Call every runner once per round, `repeats` rounds, in the given order each round
    (ours, peer, ours, peer, ...). A runner returns its measurement (e.g. tokens/s)."""
    results: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(repeats):
        for name, fn in runners.items():
            v = fn()
            results[name].append(v)
            if verbose:
                print(f"  repeat {r + 1}/{repeats}  {name:<40s} {v:,.1f}", flush=True)
    return results


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    """min-max as a percentage of the median."""
    m = statistics.median(xs)
    if len(xs) < 2 or m == 0:
        return "-"
    return f"±{100 * (max(xs) - min(xs)) / 2 / m:.0f}%"


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_section(name: str, body: str) -> Path:
    """Replace (or append) the section between <!-- bench:NAME --> and <!-- /bench:NAME -->
    in docs/benchmarks.md; create the file with the intro if needed."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text(encoding="utf-8") if DOC.is_file() else INTRO
    # The intro (everything before the first section marker line) always comes from INTRO.
    first = re.search(r"^<!-- bench:\w+ -->$", text, re.MULTILINE)
    text = INTRO.rstrip() + "\n\n" + (text[first.start():] if first else "")
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text, encoding="utf-8")
    return DOC


def banner(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def argv_flag(name: str) -> bool:
    return name in sys.argv[1:]


class StandInTokenizer:
    """What CTranslate2's Transformers loaders read from a tokenizer, for a model with random
    weights and no tokenizer files: one token string per id (`tokens[i]` is id i) and the
    special tokens' strings."""

    def __init__(self, tokens: list[str], *, bos: str | None = None, eos: str | None = None,
                 unk: str | None = None) -> None:
        self.tokens = tokens
        self.bos_token, self.eos_token, self.unk_token = bos, eos, unk

    def get_vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}


def ct2_convert(hf, tokenizer: StandInTokenizer) -> Path | None:
    """Convert the in-memory Hugging Face model `hf` to a CTranslate2 float32 model directory
    with `tokenizer`'s vocabulary, through `ctranslate2.converters.TransformersConverter` (what
    `ct2-transformers-converter` runs; only config.json is written, the weights are read from
    `hf`). Returns the directory, or None after printing one line when CTranslate2 is absent.
    A float32 model loads as int8 with `compute_type="int8"` (weights quantized at load, as
    `--quantization int8` does at conversion)."""
    import tempfile
    import time

    try:
        import ctranslate2  # noqa: F401
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        print("CTranslate2 is not installed (pip install ctranslate2, the `bench` extra): its rows are skipped")
        return None

    class _InMemory(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            return hf

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="scratchlm-bench-ct2-"))
    hf.config.save_pretrained(tmp / "hf")
    t = time.perf_counter()
    _InMemory(str(tmp / "hf")).convert(str(tmp / "ct2"), quantization="float32", force=True)
    print(f"converted to CTranslate2 in {time.perf_counter() - t:.1f} s")
    return tmp / "ct2"


def ct2_version() -> str:
    try:
        import ctranslate2

        return ctranslate2.__version__
    except ImportError:
        return "(not installed)"


def profile_table(fn: Callable[[], object], *, per: int = 1, top: int = 8) -> list[list[str]]:
    """Where the time of one call of `fn` goes: torch.profiler's self CPU time by op, top
    `top`, as md_table rows [op, ms / `per`, share, calls / `per`] (`per`: e.g. the number
    of decoding steps the call runs)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    return [[f"`{e.key}`", f"{e.self_cpu_time_total / per / 1e3:.2f}",
             f"{100 * e.self_cpu_time_total / total:.0f}%", f"{e.count / per:.1f}"] for e in rows[:top]] + [
        ["all ops", f"{total / per / 1e3:.2f}", "100%", f"{sum(e.count for e in rows) / per:.1f}"]]


def source_state() -> str:
    """The scratchlm source a bench measured: the commit, and the files under src/ that differ
    from it (a shared working tree can hold others' uncommitted changes)."""
    import subprocess

    def git(*args: str) -> str:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return r.stdout.rstrip() if r.returncode == 0 else ""  # porcelain lines start with a space

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "src").splitlines()
    if not changed:
        return f"scratchlm source: commit {head}"
    return (f"scratchlm source: commit {head} plus uncommitted changes to "
            + ", ".join(f"`{line[3:].removeprefix('src/scratchlm/')}`" for line in changed))


def profile_md(caption: str, rows: list[list[str]]) -> str:
    """A caption line and profile_table's (or an equal) rows as a markdown table."""
    return f"{caption}\n\n" + md_table(["op", "ms / step", "share", "calls / step"], rows)


def publish(name: str, body: str, *, write: bool = True) -> None:
    """Print a bench's section and, unless `write` is False (--quick), put it into
    docs/benchmarks.md."""
    print("\n" + body)
    if write:
        print(f"\nwrote {write_section(name, body)}")
