"""Speed of `scratchlm prepare` against the bare encoders it is built on, in one run.

    .venv/bin/python bench/prepare_speed.py               # 3 interleaved repeats, writes the doc
    .venv/bin/python bench/prepare_speed.py --repeats 2   # quicker, no doc update

On the Shakespeare works (`scratchlm datasets get shakespeare`, 5.06 MB, 42 documents), with a
byte-level BPE tokenizer (vocabulary 8,000) and a char tokenizer trained on them beforehand:

- scratchlm `prepare()` (the function the CLI calls, in this process): reads the files, cuts
  them into pieces, encodes, writes train.bin/val.bin, the tokenizer and meta.json;
- the same with `parallel=False` (one piece at a time on one core: the reference path);
- the tokenizers library's bare `encode_batch` / `encode_batch_fast` over the 42 documents
  already in memory, nothing written: the ceiling for anything built on that library;
- tiktoken's GPT-2 encoder (`encode_ordinary_batch`) where its BPE file is available.

Throughput is MB of UTF-8 text per second; the runners alternate (ours, peer, ours, ...) and the
table shows medians. TOKENIZERS_PARALLELISM is set to true so every encode_batch uses all cores.
"""

from __future__ import annotations

import os

os.environ["TOKENIZERS_PARALLELISM"] = "true"  # before _common, which defaults it to false

import shutil
import subprocess
import sys
import time
from pathlib import Path

import _common as C

from scratchlm.data.pretrain import prepare, resolve_tokenizer
from scratchlm.data.readers import split_pieces
from scratchlm.tokenizers import Tokenizer

GOALS = {"bpe": "≥ 5 MB/s and ≥ 0.8x encode_batch", "char": "≥ 50 MB/s"}


def cpu_line() -> str:
    """The CPU and the instruction-set flags that matter to the encoders (scratchlm.hardware)."""
    try:
        from scratchlm import hardware

        flags = hardware.parse_flags(hardware._read_cpuinfo())
        caps = hardware.detect(probe=False)
        keep = [f for f in ("sse4_2", "avx2", "bmi2", "avx512f", "avx512bw", "avx512vbmi") if f in flags]
        return f"{caps.cpu} ({os.cpu_count()} logical CPUs visible); flags: {' '.join(keep)}"
    except (ImportError, AttributeError, OSError):
        return f"{C.cpu_model()} ({os.cpu_count()} logical CPUs visible)"


def tokenizer(kind: str, source: Path) -> Tokenizer:
    d = C.OUT / f"prepare-speed-{kind}"
    if not (d / "tokenizer.json").is_file():
        resolve_tokenizer(kind, files=[source], vocab_size=8000, show_progress=False).save(d)
    return Tokenizer.load(d)


def tiktoken_runner(texts: list[str], mb: float):
    """A runner for tiktoken's GPT-2 encoder, or the one line saying why there is none."""
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed (pip install tiktoken)"
    try:
        enc = tiktoken.get_encoding("gpt2")
    except Exception as e:  # it fetches the BPE files from openaipublic.blob.core.windows.net
        return None, (f"skipped: tiktoken {tiktoken.__version__} downloads GPT-2's vocab.bpe and "
                      f"encoder.json at first use and that host is unreachable here "
                      f"({type(e).__name__}); the PyPI package ships no BPE file")

    def run() -> float:
        t = time.perf_counter()
        enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)
        return mb / (time.perf_counter() - t)

    return run, None


def main() -> None:
    repeats = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 3
    info = C.env_info()
    print(C.env_lines(info))
    print("CPU:", cpu_line())
    source = C.ROOT / "data" / "raw" / "shakespeare"
    if not source.is_dir():
        subprocess.run([sys.executable, "-m", "scratchlm", "datasets", "get", "shakespeare",
                        "--out", str(source)], check=True)
    files = sorted(source.glob("*.txt"))
    texts = [f.read_text(encoding="utf-8") for f in files]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    out = C.OUT / "prepare-speed-data"

    def ours(tok: Tokenizer, *, parallel: bool = True):
        def run() -> float:
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            meta = prepare([source], out=out, tokenizer=tok, parallel=parallel, show_progress=False)
            secs = time.perf_counter() - t
            return sum(s["bytes"] for s in meta["splits"].values()) / 1e6 / secs
        return run

    pieces = [p for t in texts for p in split_pieces(t)]

    def bare(tok: Tokenizer, method: str, items: list[str]):
        def run() -> float:
            t = time.perf_counter()
            getattr(tok.hf, method)(items, add_special_tokens=False)
            return mb / (time.perf_counter() - t)
        return run

    rows, notes = [], []
    for kind in ("bpe", "char"):
        tok = tokenizer(kind, source)
        C.banner(f"{kind}: {mb:.2f} MB, {len(texts)} documents, vocabulary {tok.vocab_size:,}")
        runners = {
            f"scratchlm prepare ({kind})": ours(tok),
            f"tokenizers encode_batch, 42 documents ({kind})": bare(tok, "encode_batch", texts),
            f"tokenizers encode_batch_fast, 42 documents ({kind})": bare(tok, "encode_batch_fast", texts),
            f"tokenizers encode_batch_fast, prepare's {len(pieces)} pieces ({kind})":
                bare(tok, "encode_batch_fast", pieces),
            f"scratchlm prepare, one piece at a time ({kind})": ours(tok, parallel=False),
        }
        if kind == "bpe":
            run, why = tiktoken_runner(texts, mb)
            if run is not None:
                runners["tiktoken GPT-2 encode_ordinary_batch (its own 50,257-token BPE)"] = run
            else:
                notes.append(f"tiktoken: {why}.")
        res = C.interleave(runners, repeats)
        ceiling = max(C.median(v) for k, v in res.items() if "tokenizers" in k)
        for name, v in res.items():
            m = C.median(v)
            rows.append([name, f"{m:,.2f} MB/s", C.spread(v), f"{m / ceiling:.2f}x"])
        m = C.median(res[f"scratchlm prepare ({kind})"])
        notes.append(f"{kind} goal {GOALS[kind]}: {m:,.2f} MB/s, {m / ceiling:.2f}x the fastest bare "
                     f"encode_batch ({ceiling:,.2f} MB/s).")
    # Fixed costs (saving the tokenizer, fsync, the output directory) weigh on 5 MB: one char
    # run over the works 20 times (101 MB) shows the steady rate.
    big = C.OUT / "prepare-speed-101MB"
    if not (big / "works-x20.txt").is_file():
        big.mkdir(parents=True, exist_ok=True)
        (big / "works-x20.txt").write_text("".join(texts) * 20, encoding="utf-8")
    char_tok = tokenizer("char", source)
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    meta = prepare([big], out=out, tokenizer=char_tok, show_progress=False)
    big_mb = sum(s["bytes"] for s in meta["splits"].values()) / 1e6
    notes.append(f"char on the works x20 ({big_mb:,.0f} MB), one run: "
                 f"{big_mb / (time.perf_counter() - t):,.1f} MB/s.")
    end_load = C.loadavg()
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "scratchlm", "prepare", str(source), "--out",
                           str(out), "--overwrite", "--tokenizer", str(C.OUT / "prepare-speed-bpe")],
                          capture_output=True, text=True)
    cli_secs = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"scratchlm prepare failed:\n{proc.stderr[-2000:]}")
    body = "\n".join([
        "## Data preparation speed (MB of text/s)",
        "",
        C.env_lines(info),
        f"CPU line: {cpu_line()}. Load average at the end: {end_load}.",
        "",
        f"Generated by `bench/prepare_speed.py`: the Shakespeare works ({mb:.2f} MB, "
        f"{len(texts)} documents), byte-level BPE (vocabulary 8,000) and char tokenizers trained "
        f"on them beforehand; {repeats} interleaved repeats, medians. `scratchlm prepare` is the "
        "function the CLI calls, run in this process: it reads the files, cuts them into pieces, "
        "encodes them and writes train.bin, val.bin, the tokenizer and meta.json. The bare "
        "`encode_batch` rows encode text already in memory and write nothing (the ceiling for "
        "anything built on the tokenizers library): the 42 documents whole, or cut into the "
        "pieces prepare cuts (same tokens); \"ratio\" is to the fastest of them. "
        "TOKENIZERS_PARALLELISM=true: every encode_batch uses all cores.",
        "",
        C.md_table(["encoder", "throughput", "spread", "ratio"], rows),
        "",
        *[f"- {n}" for n in notes],
        f"- The CLI end to end (`scratchlm prepare` with the BPE tokenizer, one run, Python and "
        f"torch start-up included): {cli_secs:.1f} s for {mb:.2f} MB.",
    ])
    print("\n" + body)
    if "--repeats" not in sys.argv:
        print(f"\nwrote {C.write_section('prepare_speed', body)}")


if __name__ == "__main__":
    main()
