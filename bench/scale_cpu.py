"""Training on 1 vs 2 CPU processes: tokens/s and peak memory per process, by strategy.

Runs the real command line for each row, on the same model, data and global batch:

    1 process:   python -m scratchlm train ...                      (torch threads 2, and 1)
    2 processes: torchrun --standalone --nproc_per_node 2 -m scratchlm train ...
                 --train.strategy ddp | fsdp                        (1 thread each)

tokens/s is the median of the `tokens_per_s` the run logs (metrics.jsonl) after its first
log line (which includes start-up), then the median over repeats, which alternate between
the rows (1, ddp, fsdp, 1, ddp, fsdp, ...) so that other jobs on the machine hit each alike.
Peak memory, two ways: "in training" is the largest rank's RSS high-water mark at the last
logged step (`peak_mem_mib` in metrics.jsonl), before the final checkpoint; "incl. final
save" is each training process's VmHWM (/proc/PID/status, polled while the run lasts;
torchrun's agent left out), which includes gathering full weights and AdamW state to write
the checkpoint at the end. Data: the Shakespeare sample
shipped in the package, char-level.

    .venv/bin/python bench/scale_cpu.py            # writes the table into docs/scaling.md
    .venv/bin/python bench/scale_cpu.py --quick    # fewer steps, no doc update
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

DOC = C.ROOT / "docs" / "scaling.md"
SECTION = "scale_cpu"
# A 16M-parameter Llama (preset 16m: 6 layers, 384 wide, GQA 6/2 heads) at context 256;
# global batch 8 x 256 tokens. Big enough that weights + AdamW state (16 bytes a parameter,
# ~0.25 GB) show against the ~0.3 GB of a Python process with torch loaded.
MODEL = ["--model.family", "llama", "--model.preset", "16m", "--model.block_size", "256"]
GLOBAL_BATCH = 8


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, VmHWM in KiB, command line) of every process we can read."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = dict(ln.split(":", 1) for ln in (d / "status").read_text().splitlines() if ":" in ln)
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        hwm = int(fields.get("VmHWM", "0 kB").split()[0])
        out[int(d.name)] = (int(fields["PPid"]), hwm, cmd)
    return out


def peak_rss(cmd: list[str], env: dict[str, str]) -> tuple[int, list[float]]:
    """Run `cmd`; return its exit code and the peak RSS (MiB) of each training process."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        table = _proc_table()
        for pid, (_, hwm, line) in table.items():
            p, seen = pid, set()
            while p in table and p not in seen and p != proc.pid:
                seen.add(p)
                p = table[p][0]
            if p == proc.pid and "scratchlm" in line and "torch.distributed.run" not in line:
                peaks[pid] = max(peaks.get(pid, 0), hwm)
        time.sleep(0.5)
    return proc.returncode, sorted((v / 1024 for v in peaks.values()), reverse=True)


def run_row(data: Path, out: Path, *, nproc: int, strategy: str, steps: int,
            threads: int) -> dict:
    common = ["--data", str(data), "--out", str(out), *MODEL,
              "--train.max_steps", str(steps), "--train.log_every", "2",
              "--train.eval_every", str(10 * steps), "--train.save_every", str(10 * steps),
              "--train.warmup_steps", "1", "--train.device", "cpu",
              "--train.batch_size", str(GLOBAL_BATCH // nproc)]
    if nproc == 1:
        cmd = [sys.executable, "-m", "scratchlm", "train", *common]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "scratchlm", "train", *common,
               "--train.strategy", strategy]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    shutil.rmtree(out, ignore_errors=True)
    rc, peaks = peak_rss(cmd, env)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {rc}")
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in rows[1:] if "tokens_per_s" in r]
    train_peak = max(r["peak_mem_mib"] for r in rows)  # before the final save
    return {"tok_s": statistics.median(speeds), "peaks": peaks, "train_peak": train_peak}


def write_doc(body: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    start, end = f"<!-- bench:{SECTION} -->", f"<!-- /bench:{SECTION} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{DOC} has no {start} ... {end} markers")
    text = pattern.sub(lambda _: f"{start}\n{body.strip()}\n{end}", text)
    sys.path.insert(0, str(C.ROOT / "src"))
    from scratchlm.fileio import atomic_file

    with atomic_file(DOC) as f:
        f.write(text)


def main() -> None:
    quick = C.argv_flag("--quick")
    steps, repeats = (6, 1) if quick else (12, 2)
    from scratchlm.data.pretrain import prepare
    from scratchlm.data.sources import shakespeare_sample_path

    info = C.env_info()
    # (processes, strategy, torch threads per process)
    plan = [(1, "none", 2), (1, "none", 1), (2, "ddp", 1), (2, "fsdp", 1)]
    results: dict[tuple, list[dict]] = {p: [] for p in plan}
    with tempfile.TemporaryDirectory(prefix="scratchlm-scale-") as tmp:
        t = Path(tmp)
        prepare([shakespeare_sample_path()], out=t / "data", tokenizer="char",
                val_fraction=0.1, show_progress=False)
        for rep in range(repeats):
            for nproc, strategy, threads in plan:
                r = run_row(t / "data", t / "run", nproc=nproc, strategy=strategy, steps=steps,
                            threads=threads)
                results[(nproc, strategy, threads)].append(r)
                peaks = " / ".join(f"{p:,.0f}" for p in r["peaks"])
                print(f"  repeat {rep + 1}/{repeats}  {nproc} x {strategy:<4s} {threads} thread(s): "
                      f"{r['tok_s']:,.0f} tokens/s, peak RSS {peaks} MiB", flush=True)
    rows = []
    base = statistics.median(r["tok_s"] for r in results[plan[0]])
    for (nproc, strategy, threads), rs in results.items():
        tok_s = statistics.median(r["tok_s"] for r in rs)
        peaks = [max(r["peaks"][i] for r in rs) for i in range(nproc)]
        rows.append([f"CPU, {nproc} process{'es' if nproc > 1 else ''}", strategy,
                     f"{GLOBAL_BATCH // nproc} x {nproc}", str(threads), f"{tok_s:,.0f}",
                     C.spread([r["tok_s"] for r in rs]), f"{tok_s / base:.2f}x",
                     f"{max(r['train_peak'] for r in rs):,.0f}",
                     " / ".join(f"{p:,.0f}" for p in peaks)])
    table = C.md_table(["machine", "strategy", "batch (per process x processes)",
                        "threads / process", "tokens/s", "spread", "vs first row",
                        "peak RSS in training, largest rank (MiB)",
                        "peak RSS incl. final save, per process (MiB)"], rows)
    body = (f"{table}\n\nModel: Llama preset 16m (6 layers, 384 wide), context 256, global "
            f"batch {GLOBAL_BATCH} sequences, fp32, {steps} steps, {repeats} alternating "
            f"repeats; tokens/s is the median of the logged values after the first, then over "
            f"repeats. {C.env_lines(info)}")
    print(body)
    if not quick:
        write_doc(body)
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
