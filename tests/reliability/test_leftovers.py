"""Crash leftovers: a writer killed with SIGKILL leaves its PID-named temp names; the next
command writing to the same place removes them, and never a live writer's."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from scratchlm.fileio import atomic_dir, clean_leftovers, temp_path
from tests.reliability.conftest import leftovers, run, snapshot

# A child that starts writing `target` (a directory, a file or a temp name for GGUF), says
# "ready" and waits to be killed mid-write.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from scratchlm.fileio import atomic_dir, atomic_file, temp_path
    kind, target = sys.argv[1], Path(sys.argv[2])
    if kind == "dir":
        ctx = atomic_dir(target)
        d = ctx.__enter__()
        (d / "half.bin").write_bytes(b"x" * 1000)
    elif kind == "file":
        ctx = atomic_file(target)
        ctx.__enter__().write("half")
    else:
        temp_path(target).write_bytes(b"GGUF half")
    print("ready", flush=True)
    time.sleep(600)
""")


def start_writer(kind, target):
    p = subprocess.Popen([sys.executable, "-c", CHILD, kind, str(target)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def kill(p):
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdout.close()


@pytest.mark.parametrize("kind, name", [("dir", "out"), ("file", "x.json"), ("gguf", "m.gguf")])
def test_a_dead_writers_temp_is_removed_and_a_live_ones_kept(tmp_path, kind, name):
    target = tmp_path / name
    p = start_writer(kind, target)
    try:
        mine = leftovers(tmp_path)
        assert len(mine) == 1 and f".{p.pid}." in mine[0]
        assert clean_leftovers(target) == [] and leftovers(tmp_path) == mine  # alive: kept
    finally:
        kill(p)
    assert [x.name for x in clean_leftovers(target)] == mine
    assert leftovers(tmp_path) == [] and not target.exists()


def test_names_that_are_not_ours_stay(tmp_path):
    target = tmp_path / "out"
    others = [".out.tmp", ".out.abc.tmp", ".other.1.abc.tmp", "out.1.abc.tmp", ".out.old-x"]
    for n in others:
        (tmp_path / n).write_text("someone's")
    dead = _dead_pid()
    (tmp_path / f".out.{dead}.abc.tmp").mkdir()
    clean_leftovers(target)
    assert sorted(os.listdir(tmp_path)) == sorted(others)


def test_an_orphaned_old_directory_is_restored_not_removed(tmp_path):
    """A kill between the two renames of a swap: `out` is missing and `.out.old-PID` holds the
    last complete version, so it is put back."""
    with atomic_dir(tmp_path / "out") as t:
        (t / "a").write_text("complete")
    dead = _dead_pid()
    os.replace(tmp_path / "out", tmp_path / f".out.old-{dead}")
    (tmp_path / f".out.{dead}.zz.tmp").mkdir()  # the new one, in an unknown state
    clean_leftovers(tmp_path / "out")
    assert (tmp_path / "out" / "a").read_text() == "complete" and leftovers(tmp_path) == []


def test_the_swap_keeps_a_complete_directory_at_every_moment(tmp_path):
    """atomic_dir replaces a directory by one exchange: no moment without `out`."""
    out = tmp_path / "out"
    with atomic_dir(out) as t:
        (t / "v").write_text("1")
    seen = []
    orig = os.replace

    def spy(a, b):  # the two-rename fallback would be seen here with `out` missing
        seen.append(out.exists())
        return orig(a, b)

    os.replace = spy
    try:
        with atomic_dir(out) as t:
            (t / "v").write_text("2")
    finally:
        os.replace = orig
    assert (out / "v").read_text() == "2" and all(seen) and leftovers(tmp_path) == []


def test_a_link_at_the_path_is_replaced_and_its_target_kept(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep.txt").write_text("kept")
    (tmp_path / "out").symlink_to(tmp_path / "target")
    with atomic_dir(tmp_path / "out") as t:
        (t / "new.txt").write_text("new")
    assert not (tmp_path / "out").is_symlink() and (tmp_path / "out" / "new.txt").is_file()
    assert (tmp_path / "target" / "keep.txt").read_text() == "kept" and leftovers(tmp_path) == []


@pytest.mark.parametrize("verb", ["prepare", "tokenizer", "convert-gguf", "convert", "merge-lora"])
def test_the_next_command_cleans_a_killed_writers_leftovers(world, tmp_path, capsys, verb):
    target = tmp_path / ("m.gguf" if verb == "convert-gguf" else "out")
    p = start_writer("gguf" if verb == "convert-gguf" else "dir", target)
    kill(p)
    assert len(leftovers(tmp_path)) == 1
    before = snapshot(world)
    args = {"prepare": ["prepare", world / "corpus", "--out", target],
            "tokenizer": ["tokenizer", "train", "--input", world / "corpus", "--kind", "char",
                          "--out", target],
            "convert-gguf": ["convert", world / "model", target],
            "convert": ["convert", world / "model", target],
            "merge-lora": ["merge-lora", world / "adapter", "--out", target]}[verb]
    rc, _, err = run(capsys, *args)
    assert rc == 0, err
    assert leftovers(tmp_path) == [] and snapshot(world) == before


def test_temp_path_carries_the_pid(tmp_path):
    t = temp_path(tmp_path / "a" / "m.gguf")
    assert t.parent == tmp_path / "a" and t.name.startswith(f".m.gguf.{os.getpid()}.")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------- kill -9, rerun
KILLS = 3  # per verb, at seeded random moments


def _write_corpus(d):
    d.mkdir()
    rng = random.Random(0)
    words = ["fox", "dog", "quick", "lazy", "jumps", "over", "the", "brown", "crème", "狐狸"]
    for i in range(3):
        (d / f"{i}.txt").write_text("\n".join(" ".join(rng.choices(words, k=12))
                                              for _ in range(25_000)) + "\n")


def _files(d):
    """Relative path -> bytes of every file under `d` (what "the same output" means)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _kill_at_random(argv, parent, rng):
    """Start `scratchlm ARGV`, kill it with SIGKILL at a random moment: before it writes, or
    a random few ms after its temp output appears in `parent`; True if it was killed."""
    p = subprocess.Popen([sys.executable, "-m", "scratchlm", *map(str, argv)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    if rng.random() < 0.25:
        time.sleep(rng.uniform(0.0, 1.0))  # importing, reading, or tokenizing
    else:
        while p.poll() is None and not leftovers(parent) and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.05))  # somewhere in the write (or just after)
    killed = p.poll() is None
    if killed:
        p.send_signal(signal.SIGKILL)
    p.wait()
    return killed


@pytest.mark.slow
@pytest.mark.parametrize("verb", ["prepare", "convert", "merge-lora"])
def test_kill_9_then_rerun_gives_the_uninterrupted_output(world, tmp_path, capsys, verb):
    src = tmp_path / "corpus"
    if verb == "prepare":
        _write_corpus(src)
    argv = {"prepare": ["prepare", src, "--tokenizer", "char", "--out"],
            "convert": ["convert", world / "model"],
            "merge-lora": ["merge-lora", world / "adapter", "--out"]}[verb]
    ref = tmp_path / "ref" / "out"
    assert run(capsys, *argv, ref)[0] == 0
    expected = _files(ref)
    inputs = snapshot(world, *([src] if src.exists() else []))
    rng = random.Random(f"{verb}-14")  # seeded: a failure replays the same moments
    killed = mid_write = complete = 0
    for i in range(KILLS):
        parent = tmp_path / f"k{i}"
        parent.mkdir()
        out = parent / "out"
        killed += _kill_at_random([*argv, out], parent, rng)
        if out.exists():  # whatever the moment, `out` is absent or complete
            assert _files(out) == expected
            complete += 1
        mid_write += bool(leftovers(parent))
        rc, _, err = run(capsys, *argv, out, "--overwrite")
        assert rc == 0, err
        assert _files(out) == expected and leftovers(parent) == []
    assert snapshot(world, *([src] if src.exists() else [])) == inputs
    assert killed >= 1  # at least one kill landed while the command ran
    print(f"{verb}: {KILLS} runs, {killed} killed, {mid_write} mid-write (temp output left), "
          f"{complete} complete after the kill")
