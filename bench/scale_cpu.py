"""Training on 1 vs 2 CPU processes: tokens/s and peak memory per process, by strategy.

Runs the real command line for each row, on the same model, data and global batch:

    1 process:   python -m scratchlm train ...                      (torch threads = 2)
    2 processes: torchrun --standalone --nproc_per_node 2 -m scratchlm train ...
                 --train.strategy ddp | fsdp                        (1 thread each)

tokens/s is the median of the `tokens_per_s` the run logs (metrics.jsonl) after its first
log line (which includes start-up); peak memory is the largest resident set size (RSS) of
any process of the run (getrusage of the children, measured in a fresh wrapper process per
row so rows do not mix). Data: the Shakespeare sample shipped in the package, char-level.

    .venv/bin/python bench/scale_cpu.py            # writes the table into docs/scaling.md
    .venv/bin/python bench/scale_cpu.py --quick    # fewer steps, no doc update
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import _common as C

DOC = C.ROOT / "docs" / "scaling.md"
SECTION = "scale_cpu"
# A 16M-parameter Llama (preset 16m: 6 layers, 384 wide, GQA 6/2 heads) at context 256;
# global batch 8 x 256 tokens. Big enough that weights + AdamW state (16 bytes a parameter,
# ~0.25 GB) show against the ~0.3 GB of a Python process with torch loaded.
MODEL = ["--model.family", "llama", "--model.preset", "16m", "--model.block_size", "256"]
GLOBAL_BATCH = 8


def measure(cmd: list[str], env: dict[str, str]) -> None:
    """Run `cmd`; print the peak RSS (MiB) of its largest process as the last line."""
    rc = subprocess.call(cmd, env=env, stdout=subprocess.DEVNULL)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"rc": rc, "peak_mib": peak_kib / 1024}))


def run_row(data: Path, out: Path, *, nproc: int, strategy: str, steps: int) -> dict:
    common = ["--data", str(data), "--out", str(out), *MODEL,
              "--train.max_steps", str(steps), "--train.log_every", "2",
              "--train.eval_every", str(10 * steps), "--train.save_every", str(10 * steps),
              "--train.warmup_steps", "1", "--train.device", "cpu",
              "--train.batch_size", str(GLOBAL_BATCH // nproc)]
    if nproc == 1:
        cmd = [sys.executable, "-m", "scratchlm", "train", *common]
        threads = 2
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "scratchlm", "train", *common,
               "--train.strategy", strategy]
        threads = 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    res = subprocess.run([sys.executable, __file__, "--measure", json.dumps(cmd)], env=env,
                         capture_output=True, text=True, check=True)
    info = json.loads(res.stdout.strip().splitlines()[-1])
    if info["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {info['rc']}")
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in rows[1:] if "tokens_per_s" in r]
    return {"tok_s": statistics.median(speeds), "peak_mib": info["peak_mib"], "threads": threads}


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
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        measure(json.loads(sys.argv[2]), dict(os.environ))
        return
    quick = C.argv_flag("--quick")
    steps = 6 if quick else 20
    from scratchlm.data.pretrain import prepare
    from scratchlm.data.sources import shakespeare_sample_path

    info = C.env_info()
    rows = []
    with tempfile.TemporaryDirectory(prefix="scratchlm-scale-") as tmp:
        t = Path(tmp)
        prepare([shakespeare_sample_path()], out=t / "data", tokenizer="char",
                val_fraction=0.1, show_progress=False)
        plan = [(1, "none"), (2, "ddp"), (2, "fsdp")]
        base = None
        for nproc, strategy in plan:
            C.banner(f"{nproc} process(es), strategy {strategy}")
            r = run_row(t / "data", t / f"run-{nproc}-{strategy}", nproc=nproc,
                        strategy=strategy, steps=steps)
            base = base or r["tok_s"]
            print(f"  {r['tok_s']:,.0f} tokens/s, peak RSS {r['peak_mib']:,.0f} MiB", flush=True)
            rows.append([f"CPU, {nproc} process{'es' if nproc > 1 else ''}", strategy,
                         f"{GLOBAL_BATCH // nproc} x {nproc}", str(r["threads"]),
                         f"{r['tok_s']:,.0f}", f"{r['tok_s'] / base:.2f}x",
                         f"{r['peak_mib']:,.0f}"])
    table = C.md_table(["machine", "strategy", "batch (per process x processes)",
                        "threads / process", "tokens/s", "vs 1 process",
                        "peak RSS, largest process (MiB)"], rows)
    body = (f"{table}\n\nModel: Llama preset 16m (6 layers, 384 wide), context 256, global "
            f"batch {GLOBAL_BATCH} sequences, fp32, {steps} steps; tokens/s is the median of "
            f"the logged values after the first. {C.env_lines(info)}")
    print(body)
    if not quick:
        write_doc(body)
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
