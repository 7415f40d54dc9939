"""Outputs are never destructive: an existing --out is replaced only with --overwrite, only
when scratchlm wrote it (the .scratchlm marker), never when it is, holds or lies inside an
input; a failed command leaves the old output as it was; paths read from a directory's own
files stay inside it."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from safetensors.torch import load_file

from scratchlm.errors import ScratchLMError
from scratchlm.fileio import MARKER, atomic_dir, claim_out_dir, inside_dir
from scratchlm.modeldir import load
from tests.reliability.conftest import leftovers, run, snapshot


def writers(w):
    """Every verb that writes a directory: argv without --out (the test adds it)."""
    return {
        "prepare": ["prepare", w / "corpus"],
        "tokenizer": ["tokenizer", "train", "--input", w / "corpus", "--kind", "char"],
        "merge-lora": ["merge-lora", w / "adapter"],
        "datasets": ["datasets", "get", "shakespeare", "--offline"],
        "convert": ["convert", w / "model"],  # DST is positional
    }


def argv(w, verb, out, *extra):
    args = writers(w)[verb]
    return [*args, out, *extra] if verb == "convert" else [*args, "--out", out, *extra]


VERBS = ["prepare", "tokenizer", "merge-lora", "datasets", "convert"]


def users_dir(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("my own notes\n")
    return d


@pytest.mark.parametrize("verb", VERBS)
def test_an_existing_directory_is_refused_without_overwrite(world, tmp_path, capsys, verb):
    d = users_dir(tmp_path)
    before = snapshot(d, world)
    rc, _, err = run(capsys, *argv(world, verb, d))
    assert rc == 1 and "already exists and is not empty; pass --overwrite" in err, err
    assert snapshot(d, world) == before


@pytest.mark.parametrize("verb", VERBS)
def test_overwrite_replaces_only_what_scratchlm_wrote(world, tmp_path, capsys, verb):
    d = users_dir(tmp_path)
    before = snapshot(d, world)
    rc, _, err = run(capsys, *argv(world, verb, d, "--overwrite"))
    assert rc == 1 and "was not written by scratchlm" in err and "Traceback" not in err, err
    assert snapshot(d, world) == before
    out = tmp_path / "out"
    assert run(capsys, *argv(world, verb, out))[0] == 0
    assert (out / MARKER).is_file()
    (out / "stale.txt").write_text("from an earlier run")  # replaced as a whole
    rc, _, err = run(capsys, *argv(world, verb, out, "--overwrite"))
    assert rc == 0, err
    assert (out / MARKER).is_file() and not (out / "stale.txt").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("verb", ["prepare", "tokenizer", "merge-lora", "convert"])
@pytest.mark.parametrize("where", ["is", "inside", "above"])
def test_out_apart_from_the_inputs(world, tmp_path, capsys, verb, where):
    src = {"prepare": world / "corpus", "tokenizer": world / "corpus",
           "merge-lora": world / "adapter", "convert": world / "model"}[verb]
    out = {"is": src, "inside": src / "sub", "above": src.parent}[where]
    before = snapshot(world)
    rc, _, err = run(capsys, *argv(world, verb, out, "--overwrite"))
    assert rc == 1 and "Traceback" not in err, err
    assert ("the input" in err or "outside SRC" in err or "same path" in err), err
    assert snapshot(world) == before


def test_merge_lora_out_is_not_the_base_model(world, capsys):
    before = snapshot(world / "model")
    rc, _, err = run(capsys, "merge-lora", world / "adapter", "--out", world / "model", "--overwrite")
    assert rc == 1 and f"is the input {world / 'model'}" in err, err
    assert snapshot(world / "model") == before


def test_a_failed_command_leaves_the_old_output(world, tmp_path, capsys):
    out = tmp_path / "data"
    assert run(capsys, "prepare", world / "corpus", "--out", out)[0] == 0
    before = snapshot(out)
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01binary")
    rc, _, err = run(capsys, "prepare", tmp_path / "bin.txt", "--out", out, "--overwrite")
    assert rc == 1 and "binary" in err
    assert snapshot(out) == before and leftovers(tmp_path) == []


def test_out_under_a_file_is_one_line(world, tmp_path, capsys):
    (tmp_path / "f.txt").write_text("x")
    for args in (["prepare", world / "corpus", "--out", tmp_path / "f.txt" / "d"],
                 ["convert", world / "model", tmp_path / "f.txt" / "m.gguf"],
                 ["prepare", world / "corpus", "--out", tmp_path / "f.txt"]):
        rc, _, err = run(capsys, *args)
        assert rc == 1 and "f.txt" in err and "file" in err and len(err.splitlines()) == 1, err


def test_gguf_output_replaces_only_a_gguf_file(world, tmp_path, capsys):
    notes = tmp_path / "notes.gguf"
    notes.write_text("not a gguf")
    rc, _, err = run(capsys, "convert", world / "model", notes)
    assert rc == 1 and "exists; pass --overwrite" in err
    rc, _, err = run(capsys, "convert", world / "model", notes, "--overwrite")
    assert rc == 1 and "not a GGUF file" in err and notes.read_text() == "not a gguf"
    out = tmp_path / "m.gguf"
    assert run(capsys, "convert", world / "model", out)[0] == 0
    assert run(capsys, "convert", world / "model", out, "--overwrite", "--outtype", "f16")[0] == 0
    assert run(capsys, "convert", world / "model", out, "--force")[0] == 0  # the old spelling
    assert leftovers(tmp_path) == []


def test_claim_reuse_lets_a_marked_run_restart(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("train: {}\n")
    with pytest.raises(ScratchLMError, match="already exists"):
        claim_out_dir(run_dir, reuse=True)  # not marked: a user's directory
    (run_dir / MARKER).write_text("")
    assert claim_out_dir(run_dir, reuse=True) == run_dir
    with pytest.raises(ScratchLMError, match="already exists"):
        claim_out_dir(run_dir)


def test_an_empty_existing_directory_is_fine(world, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run(capsys, "prepare", world / "corpus", "--out", tmp_path / "empty")[0] == 0


@pytest.mark.parametrize("kind", ["model", "adapter", "data"])
def test_output_files_share_one_mode(world, kind):
    modes = {str(p): p.stat().st_mode & 0o777 for p in (world / kind).rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o666 & ~_umask()}, modes


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def _sharded(world, tmp_path, names):
    """A copy of the model directory whose weights live in shards named `names`."""
    d = tmp_path / "sharded"
    shutil.copytree(world / "model", d)
    state = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").rename(d / "model-00001.safetensors")
    keys = sorted(state)
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: names[i % len(names)] for i, k in enumerate(keys)}}))
    return d


def test_a_sharded_model_loads(world, tmp_path):
    d = _sharded(world, tmp_path, ["model-00001.safetensors"])
    load(d)  # the shard inside the directory is read


@pytest.mark.parametrize("shard, says", [
    ("../model/model.safetensors", "lies outside"),
    ("/etc/passwd", "lies outside"),
    ("sub/../../x.safetensors", "lies outside"),
    ("missing.safetensors", "which is missing"),
    (".", "not a regular file"),
])
def test_shard_names_stay_inside_the_directory(world, tmp_path, capsys, shard, says):
    d = _sharded(world, tmp_path, ["model-00001.safetensors", shard])
    rc, _, err = run(capsys, "generate", d, "--prompt", "a", "--max-new-tokens", "1")
    assert rc == 1 and says in err and "Traceback" not in err, err


def test_a_shard_that_is_a_device_is_not_called_missing(world, tmp_path, capsys):
    d = _sharded(world, tmp_path, ["model-00001.safetensors", "zero"])
    os.symlink("/dev/zero", d / "zero")  # inside by name, a device by nature
    rc, _, err = run(capsys, "generate", d, "--prompt", "a", "--max-new-tokens", "1")
    assert rc == 1 and ("not a regular file" in err or "lies outside" in err), err
    assert "missing" not in err


@pytest.mark.parametrize("name", ["../model", "/etc", "", 7])
def test_the_tokenizer_path_of_a_data_dir_stays_inside(world, tmp_path, capsys, name):
    d = tmp_path / "data"
    shutil.copytree(world / "data", d)
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "tokenizer": name}))
    rc, _, err = run(capsys, "train", "--data", d, "--out", tmp_path / "run", "--model.preset",
                     "tiny", "--model.block_size", "16", "--train.max_steps", "1")
    assert rc == 1 and "Traceback" not in err and "meta.json names" in err, err


def test_inside_dir(tmp_path):
    assert inside_dir(tmp_path, "a/b.txt", source="x") == tmp_path / "a" / "b.txt"
    (tmp_path / "link").symlink_to("/etc")
    for bad in ("../a", "/etc/passwd", "link/passwd"):
        with pytest.raises(ScratchLMError, match="outside"):
            inside_dir(tmp_path, bad, source="x")


def test_atomic_dir_writes_the_marker_and_keeps_the_old_on_error(tmp_path):
    with atomic_dir(tmp_path / "d") as t:
        (t / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as t:
        (t / "a").write_text("2")
        raise RuntimeError
    assert (tmp_path / "d" / "a").read_text() == "1" and (tmp_path / "d" / MARKER).is_file()
    assert leftovers(tmp_path) == []
