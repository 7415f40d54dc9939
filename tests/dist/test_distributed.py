"""Training on 2 processes (gloo on CPU, launched by torchrun as a user would) against one
process with the same global batch: DDP and FSDP2 give the same loss curve and final
weights, a 2-process checkpoint resumes on 1 process and continues the same curve, and a
failure on one rank stops both, naming the rank.

Tolerance: the runs differ only in the order of floating-point sums (each rank's mean over
its half of the batch, then the all-reduce average, against one mean over the whole batch;
matrix products of half the rows). In float32 that is ~1e-7 relative per operation; over 8
AdamW steps we measured differences of at most ~1e-6 in the losses and ~1e-6 in the weights,
and allow 1e-4 (relative on losses, absolute on weights): ample for rounding, while one
wrong sample, a missing gradient average or a skipped step moves the loss by >1e-2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.dist.worker import make_trainer

WORKER = Path(__file__).with_name("worker.py")
TIMEOUT = 240  # seconds: a hang fails the test instead of blocking the suite
RTOL, ATOL = 1e-4, 1e-4


def torchrun(args: list[str], *, tmp_path: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """Run torchrun in its own process group; on timeout kill the whole group and fail."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "--monitor_interval=0.1", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2]),
           "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT}s:\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_workers(tmp_path: Path, spec: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return torchrun([str(WORKER), str(path)], tmp_path=tmp_path)


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in rows}


def val_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}


def assert_same_weights(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= ATOL, worst
    return worst


@pytest.fixture(scope="module")
def reference(char_data, tmp_path_factory) -> Path:
    """One process, global batch 8 (= 2 ranks x 4), grad_accum 2, 8 steps."""
    out = tmp_path_factory.mktemp("ref") / "run"
    make_trainer(char_data, out, batch_size=8).fit()
    return out


def test_ddp_matches_one_process(char_data, reference, tmp_path):
    spec = {"data": str(char_data), "strategy": "ddp", "batch_size": 4,
            "runs": [{"out": str(tmp_path / "ddp")}]}
    r = run_workers(tmp_path, spec)
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = losses(reference), losses(tmp_path / "ddp")
    assert sorted(got) == list(range(1, 9))
    assert got == pytest.approx(ref, rel=RTOL)
    assert val_losses(tmp_path / "ddp") == pytest.approx(val_losses(reference), rel=RTOL)
    assert_same_weights(reference / "final", tmp_path / "ddp" / "final")
    # only rank 0 writes and prints: one line per step, one "global batch" line
    assert r.stdout.count("global batch: 4 per process x 2 grad_accum x 2 processes = 16") == 1


def test_fsdp_matches_one_process_and_resumes_on_one(char_data, reference, tmp_path):
    # With activation checkpointing too: recomputing a block in backward changes no number.
    spec = {"data": str(char_data), "strategy": "fsdp", "batch_size": 4,
            "train": {"activation_checkpointing": True},
            "runs": [{"out": str(tmp_path / "fsdp")},
                     {"out": str(tmp_path / "part"), "until": 4}]}
    r = run_workers(tmp_path, spec)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = losses(reference)
    assert losses(tmp_path / "fsdp") == pytest.approx(ref, rel=RTOL)
    assert_same_weights(reference / "final", tmp_path / "fsdp" / "final")
    # The FSDP checkpoint at step 4 is a normal model directory with full weights...
    part = tmp_path / "part"
    assert not (part / "final").exists()
    state = torch.load(part / "last" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 4 and state["world_size"] == 2
    # ... that resumes on 1 process (global batch 8 = 8 x 1) and continues the same curve
    # (activation checkpointing may change on resume).
    t = make_trainer(char_data, part, batch_size=8)
    t.fit(resume=True)
    assert losses(part) == pytest.approx(ref, rel=RTOL)
    assert_same_weights(reference / "final", part / "final")


def test_resume_on_other_world_needs_the_same_global_batch(char_data, reference, tmp_path):
    """A 1-process checkpoint (batch 8) resumed on 1 process with batch 4: refused, with
    the batch size that would keep the global batch."""
    from scratchlm.errors import ScratchLMError

    out = tmp_path / "r"
    make_trainer(char_data, out, batch_size=8).fit(until_step=4)
    with pytest.raises(ScratchLMError, match="global batch is 8 sequences"):
        make_trainer(char_data, out, batch_size=4).fit(resume=True)


def test_failure_on_one_rank_stops_all_and_names_it(char_data, tmp_path):
    spec = {"data": str(char_data), "strategy": "ddp", "batch_size": 4,
            "runs": [{"out": str(tmp_path / "f")}], "fail": {"rank": 1, "call": 5}}
    r = run_workers(tmp_path, spec)
    assert r.returncode != 0
    assert "error: rank 1 of 2: injected failure at batch 5" in r.stderr
    # rank 0 did not go on alone: it never finished the run
    assert not (tmp_path / "f" / "final").exists()
