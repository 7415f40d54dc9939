"""Every interruption of `scratchlm train` resumes bit-exact (issue 14, items 2 and 7).

Real processes of the installed command, a tiny GPT with dropout 0.1 and a checkpoint every
2 steps, interrupted at seeded random moments: kill -9 during training and during a
checkpoint save, SIGINT and SIGTERM, a double and a triple signal during a save, a kill
before the first checkpoint and a kill between the two renames of a checkpoint swap. Each
run is continued the way a user would (the command the interrupted run printed, `--resume`,
or the same command again) and its final weights are compared bit for bit with those of an
uninterrupted run. Seeded: a failure reproduces with the same seed.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchlm.cli import main
from scratchlm.train.interrupt import Interrupted
from scratchlm.train.trainer import Trainer
from tests.cli.test_finetune import COMMON as FT_COMMON
from tests.cli.test_finetune import LORA as FT_LORA
from tests.cli.test_finetune import base  # noqa: F401 (a fixture)
from tests.train.test_trainer import _trainer

SCRATCHLM = Path(sys.executable).parent / "scratchlm"
STEPS = 16
ARGS = ["--model.family", "gpt", "--model.preset", "tiny", "--model.block_size", "32",
        "--model.dropout", "0.1", "--train.max_steps", str(STEPS), "--train.batch_size", "4",
        "--train.warmup_steps", "2", "--train.eval_every", "8", "--train.eval_batches", "2",
        "--train.log_every", "1", "--train.device", "cpu"]
SAVE_EVERY = ["--train.save_every", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
WAIT = 300  # seconds a process may take before the test fails (a loaded machine)


def command(data: Path, run: Path, *extra: str) -> list[str]:
    return [str(SCRATCHLM), "train", "--data", str(data), "--out", str(run), *ARGS, *extra]


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=ENV, start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{proc.args} did not finish in {WAIT}s")
    return proc.returncode, err


def in_process(cmd: list[str]) -> int:
    """Run a command line of the installed `scratchlm` in this process (no interpreter and
    torch start-up: the continuing runs, whose start is not what is tested)."""
    assert Path(cmd[0]).name == "scratchlm"
    return main(cmd[1:])


def logged_steps(run: Path) -> int:
    try:
        return (run / "metrics.jsonl").read_text().count("\n")
    except FileNotFoundError:
        return 0


def wait_until(proc: subprocess.Popen, ready, poll: float) -> bool:
    """Poll `ready()` until it is true (True) or the process ends first (False)."""
    while not ready():
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return True


def saving(run: Path) -> bool:
    """A checkpoint is being written: its temp directory exists."""
    return any(n.startswith(".last.") and n.endswith(".tmp") for n in os.listdir(run)) \
        if run.is_dir() else False


def leftovers(run: Path) -> list[str]:
    return sorted(n for n in os.listdir(run) if n.startswith(".") and n != ".scratchlm")


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def continue_run(data: Path, run: Path) -> list[str]:
    """What a user runs after a kill: --resume when there is a checkpoint, else the same
    command (a kill between a swap's renames leaves `.last.old-PID`, which --resume restores)."""
    has = run.is_dir() and ((run / "last").is_dir()
                            or any(n.startswith(".last.old-") for n in os.listdir(run)))
    return command(data, run, *SAVE_EVERY, *(["--resume"] if has else []))


@pytest.fixture(scope="module")
def reference(char_data, tmp_path_factory) -> Path:
    """The uninterrupted run (in-process: same code, one thread, the same numbers)."""
    run = tmp_path_factory.mktemp("crash") / "reference"
    assert main(["train", "--data", str(char_data), "--out", str(run), *ARGS, *SAVE_EVERY]) == 0
    return run


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_the_step_and_resumes_exactly(char_data, reference, tmp_path, sig):
    """Dropout 0.1: the checkpoint is taken at a step boundary, so the resumed run (with the
    command the interrupted one printed) equals the uninterrupted one bit for bit."""
    rng = random.Random(int(sig))
    run = tmp_path / "run"
    proc = start(command(char_data, run, "--train.save_every", "5"))  # stop between saves
    at = rng.randint(2, 10)
    assert wait_until(proc, lambda: logged_steps(run) >= at, 0.005)
    time.sleep(rng.uniform(0, 0.05))
    proc.send_signal(sig)
    rc, err = finish(proc)
    assert rc == 128 + sig, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"{sig.name}: stopped after step" in last and " resume with: scratchlm train " in last
    step = int(last.split("stopped after step ")[1].split()[0])
    state = torch.load(run / "last" / "trainer_state.pt", weights_only=True)
    assert state["step"] == step < STEPS
    words = shlex.split(last.split("resume with: ")[1])
    assert in_process(words) == 0
    assert same_weights(run, reference)


def test_kill_9_during_training_and_saves_resumes_exactly(char_data, reference, tmp_path):
    _kill_sweep(char_data, reference, tmp_path, seed=14, kills=2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_sweep(char_data, reference, tmp_path, seed):
    _kill_sweep(char_data, reference, tmp_path, seed=seed, kills=5)


def _kill_sweep(char_data: Path, reference: Path, tmp_path: Path, *, seed: int, kills: int):
    """kill -9 at seeded moments, alternating between a random step and the inside of a
    checkpoint save (its temp directory seen), each time continued as a user would."""
    rng = random.Random(seed)
    run = tmp_path / "run"
    done = {"training": 0, "save": 0}
    for i in range(kills):
        proc = start(continue_run(char_data, run))
        during_save = i % 2 == 1
        if during_save:
            hit = wait_until(proc, lambda: saving(run), 0.0005)
        else:
            at = logged_steps(run) + rng.randint(1, 4)
            hit = wait_until(proc, lambda at=at: logged_steps(run) >= at, 0.002)
        if hit:
            time.sleep(rng.uniform(0, 0.004 if during_save else 0.03))
            proc.kill()
            done["save" if during_save else "training"] += 1
        finish(proc)
    assert in_process(continue_run(char_data, run)) == 0
    assert sum(done.values()) >= kills - 1, done  # at most one run ended before its kill
    assert same_weights(run, reference), done
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [int(ln.split('"step": ')[1].split(",")[0]) for ln in lines] == list(range(1, STEPS + 1))
    assert leftovers(run) == []  # the dead writers' temp files are gone
    print(f"crash table: seed {seed}: kill -9 during training {done['training']}, during a "
          f"save {done['save']}, continued {kills}, final weights bit-identical")  # with -s


def test_kill_before_first_checkpoint_then_plain_rerun(char_data, reference, tmp_path, capsys):
    run = tmp_path / "run"
    cmd = command(char_data, run, "--train.save_every", "12")
    proc = start(cmd)
    assert wait_until(proc, lambda: logged_steps(run) >= 3, 0.002)
    proc.kill()
    finish(proc)
    assert not (run / "last").exists() and (run / "metrics.jsonl").is_file()
    assert in_process([*cmd, "--resume"]) == 1
    assert "stopped before its first one: run the same command without --resume" in capsys.readouterr().err
    assert in_process(cmd) == 0  # no --overwrite needed
    assert "stopped before its first checkpoint: starting it again" in capsys.readouterr().out
    assert same_weights(run, reference)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_kill_between_the_renames_of_a_swap(char_data, tmp_path):
    """Where the OS cannot swap two directories in one step, a checkpoint is swapped by two
    renames; a kill between them leaves only `.last.old-PID`: --resume puts it back."""
    full = _trainer(char_data, tmp_path / "full")
    full.fit()
    run = tmp_path / "part"
    _trainer(char_data, run).fit(until_step=6)
    pid = _dead_pid()
    os.replace(run / "last", run / f".last.old-{pid}")  # the state a kill there leaves
    (run / f".last.{pid}.abc123.tmp").mkdir()  # and the new checkpoint's unfinished temp
    _trainer(char_data, run).fit(resume=True)
    assert leftovers(run) == []
    assert same_weights(run, tmp_path / "full")


def test_second_signal_waits_for_the_save_third_aborts(char_data, tmp_path, capfd):
    """In-process: the signals arrive while last/ is being written (from inside write_model)."""
    full = _trainer(char_data, tmp_path / "full")
    full.fit()
    run = tmp_path / "part"

    def signalling(times: int, at_step: int):
        def write(path, model, tokenizer):
            if trainer.step == at_step:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGTERM)
            return write_model(path, model, tokenizer)
        return write

    trainer = _trainer(char_data, run)
    write_model = trainer.write_model
    trainer.write_model = signalling(2, 6)  # 1st: stop; 2nd: during the save, which goes on
    with pytest.raises(Interrupted) as e:
        trainer.fit()
    assert e.value.saved and e.value.step == 6 and e.value.exit_code == 143
    assert "still saving the checkpoint" in capfd.readouterr().err
    assert torch.load(run / "last" / "trainer_state.pt", weights_only=True)["step"] == 6

    trainer = _trainer(char_data, run)
    trainer.write_model = signalling(3, 12)  # the 3rd aborts the save of step 12
    with pytest.raises(Interrupted, match="aborted by a third SIGTERM") as e:
        trainer.fit(resume=True)
    assert not e.value.saved
    assert torch.load(run / "last" / "trainer_state.pt", weights_only=True)["step"] == 6
    assert leftovers(run) == []  # the aborted save's temp directory was removed
    _trainer(char_data, run).fit(resume=True)
    assert same_weights(run, tmp_path / "full")


def _torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "--monitor_interval=0.1", *args]


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of `rank` (a child of `parent` with RANK=rank)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry)
    return None


@pytest.mark.slow
def test_torchrun_ranks_stop_together_and_resume_exactly(char_data, tmp_path):
    """2 gloo processes (DDP), dropout 0.1: SIGTERM to rank 1 alone stops both ranks after
    the same step (the flag is all-reduced); resumed under torchrun with the printed command,
    the weights equal an uninterrupted 2-process run bit for bit."""
    env = {**ENV, "PYTHONPATH": str(Path(__file__).parents[2])}
    common = ["-m", "scratchlm", "train", "--data", str(char_data), *ARGS, *SAVE_EVERY,
              "--train.batch_size", "2", "--train.strategy", "ddp"]
    full = subprocess.run(_torchrun([*common, "--out", str(tmp_path / "full")]), env=env,
                          capture_output=True, text=True, timeout=WAIT)
    assert full.returncode == 0, full.stderr[-3000:]
    run = tmp_path / "run"
    proc = subprocess.Popen(_torchrun([*common, "--out", str(run)]), env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    assert wait_until(proc, lambda: logged_steps(run) >= 3, 0.005)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    rc, err = finish(proc)
    assert rc != 0
    line = next(ln for ln in err.splitlines() if "resume with: " in ln)
    assert "SIGTERM: stopped after step" in line
    step = int(line.split("stopped after step ")[1].split()[0])
    assert torch.load(run / "last" / "trainer_state.pt", weights_only=True)["step"] == step < STEPS
    words = shlex.split(line.split("resume with: ")[1])
    assert words[:5] == ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "scratchlm"]
    resumed = subprocess.run(_torchrun(words[3:]), env=env, capture_output=True, text=True,
                             timeout=WAIT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert same_weights(run, tmp_path / "full")


def test_finetune_sigterm_resumes_exactly(tmp_path, capsys, monkeypatch, base):  # noqa: F811
    """`scratchlm finetune` (LoRA dropout 0.1): SIGTERM during step 4 stops after it with exit
    143 and the resume command, which ends with the adapter of an uninterrupted run."""
    args = ["finetune", str(base / "base"), "--data", str(base / "chat.jsonl"), *FT_COMMON,
            *FT_LORA, "--train.max_steps", "8"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    step = Trainer._train_step

    def signalled(self, **kw):
        if self.step == 3:  # the signal lands inside step 4
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, **kw)

    monkeypatch.setattr(Trainer, "_train_step", signalled)
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "run")]) == 143
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "SIGTERM: stopped after step 4 of 8" in line and "resume with: scratchlm finetune " in line
    monkeypatch.setattr(Trainer, "_train_step", step)
    assert main(shlex.split(line.split("resume with: ")[1])[1:]) == 0
    a = load_file(tmp_path / "full" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "run" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
