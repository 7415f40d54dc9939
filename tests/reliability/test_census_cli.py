"""The census: every bad input of census_cases.CASES, plus a full disk, run through the CLI's
main in this process. Each must exit non-zero with one clear line (no traceback, the case's
regex), change no input, and leave no partial output. docs/reliability.md's table is checked
against the counts of this table."""

from __future__ import annotations

import collections
import errno
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.reliability.census_cases import CASES, make_bad
from tests.reliability.conftest import leftovers, run, snapshot

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
DISK_FULL = ["prepare", "convert", "merge-lora", "datasets", "tokenizer"]


def stat_snapshot(*roots: Path) -> dict[str, tuple]:
    """Cheap per-case snapshot: path -> (size, mtime_ns, mode) of every entry (links not followed)."""
    out = {}
    for root in roots:
        for p in [root, *root.rglob("*")]:
            st = p.lstat()
            out[str(p)] = (st.st_size if not p.is_dir() else 0, st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture(scope="module")
def bad(world, tmp_path_factory):
    b = tmp_path_factory.mktemp("bad")
    make_bad(b, world)
    before = snapshot(world, b)
    yield b
    assert snapshot(world, b) == before  # content too, after the whole census


@pytest.mark.slow
@pytest.mark.parametrize("cls, argv, regex", CASES, ids=[f"{i:03d}-{c[0]}" for i, c in enumerate(CASES)])
def test_bad_input(world, bad, tmp_path, capsys, cls, argv, regex):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = stat_snapshot(world, bad)
    args = [a.format(w=world, b=bad, t=out_dir) for a in shlex.split(argv)]
    rc, _, err = run(capsys, *args)
    assert rc != 0, f"exit 0 for {argv}"
    assert "Traceback" not in err, err
    assert re.search(regex, err), f"{regex!r} not in: {err}"
    if rc == 1:  # ours: one "error:" line, the last (progress/info lines may come before it)
        lines = err.strip().splitlines()
        assert [x for x in lines if x.startswith("error:")] == lines[-1:], err
    assert stat_snapshot(world, bad) == before, "an input changed"
    assert [str(p) for p in out_dir.rglob("*") if not p.is_dir()] == [], "partial output"
    assert leftovers(bad) == [] and leftovers(out_dir) == []


# ----------------------------------------------------------------------------- full disk
@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A 48 KB tmpfs where this test may mount one (root on Linux); else a simulated full disk
    (every file write after the first KB raises ENOSPC)."""
    d = tmp_path / "small"
    d.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(d)],
                             capture_output=True).returncode == 0
    if not mounted:
        import scratchlm.fileio as fileio

        real = fileio.mark_dir

        def full(path):  # the last write of every directory output
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(path) / fileio.MARKER))

        monkeypatch.setattr(fileio, "mark_dir", full)
        assert real is not None
    yield d
    if mounted:
        subprocess.run(["umount", str(d)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("verb", DISK_FULL)
def test_disk_full(world, small_disk, tmp_path, capsys, verb):
    big = tmp_path / "big"
    big.mkdir()
    (big / "a.txt").write_text("".join(f"line {i}: the quick brown fox\n" for i in range(4000)))
    out = small_disk / "out"
    args = {"prepare": ["prepare", big, "--out", out],
            "convert": ["convert", world / "model", out],
            "merge-lora": ["merge-lora", world / "adapter", "--out", out],
            "datasets": ["datasets", "get", "shakespeare", "--offline", "--out", out,
                         "--cache", tmp_path / "cache"],
            "tokenizer": ["tokenizer", "train", "--input", big, "--kind", "bpe", "--vocab-size",
                          "2000", "--out", out]}[verb]
    before = snapshot(world)
    rc, _, err = run(capsys, *args)
    assert rc == 1 and "no space left on the device" in err and "Traceback" not in err, err
    assert re.search(rf"writing {re.escape(str(out))}( |/)", err), err  # --out or a file in it, no temp name
    assert len(err.strip().splitlines()) == 1
    assert list(small_disk.iterdir()) == [], "partial output"
    assert snapshot(world) == before


# ----------------------------------------------------------------------------- the table
def census_counts() -> dict[str, int]:
    counts = collections.Counter(cls for cls, _, _ in CASES)
    counts["disk full"] = len(DISK_FULL)
    return dict(counts)


def test_the_census_is_large_and_documented():
    counts = census_counts()
    total = sum(counts.values())
    assert total >= 120
    text = DOC.read_text(encoding="utf-8")
    for cls, n in counts.items():
        assert re.search(rf"\|\s*{re.escape(cls)}\s*\|\s*{n}\s*\|", text), f"docs: {cls} {n}"
    assert re.search(rf"\|\s*\*\*all\*\*\s*\|\s*\*\*{total}\*\*\s*\|", text), f"docs: total {total}"
