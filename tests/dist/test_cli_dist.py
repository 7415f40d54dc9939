"""`torchrun ... -m scratchlm train|finetune --train.strategy ...` end to end on 2 CPU
processes (gloo), against the same command on one process with the same global batch.
Tolerance as in test_distributed.py (float summation order only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import scratchlm
from scratchlm.cli import main
from tests.cli.test_finetune import COMMON, LORA, base  # noqa: F401 (a fixture)
from tests.dist.test_distributed import RTOL, losses, torchrun

TRAIN = ["--model.family", "gpt", "--model.preset", "tiny", "--model.block_size", "32",
         "--train.max_steps", "4", "--train.eval_every", "2", "--train.eval_batches", "2",
         "--train.save_every", "2", "--train.log_every", "1", "--train.warmup_steps", "1",
         "--train.device", "cpu"]


def max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def test_train_cli_fsdp_on_two_processes(char_data, tmp_path, capsys):
    """GPT (tied embeddings) sharded by FSDP2 through the real command line."""
    assert main(["train", "--data", str(char_data), "--out", str(tmp_path / "one"), *TRAIN,
                 "--train.batch_size", "4"]) == 0
    capsys.readouterr()
    r = torchrun(["-m", "scratchlm", "train", "--data", str(char_data), "--out",
                  str(tmp_path / "two"), *TRAIN, "--train.batch_size", "2",
                  "--train.strategy", "fsdp"], tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    # rank 0 alone prints and writes
    assert r.stdout.count("global batch: 2 per process x 1 grad_accum x 2 processes = 4 "
                          "sequences per step (2 processes, strategy fsdp, backend gloo") == 1
    assert r.stdout.count("done: step 4") == 1
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [1, 2, 3, 4]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=RTOL)
    diff = max_diff(tmp_path / "one" / "final" / "model.safetensors",
                    tmp_path / "two" / "final" / "model.safetensors")
    assert diff <= 1e-4
    model, _ = scratchlm.load(tmp_path / "two" / "final")  # a normal model directory
    assert model.config.family == "gpt"


def test_lora_finetune_fsdp_on_two_processes(base, tmp_path, capsys):  # noqa: F811
    """LoRA adapters trained on 2 FSDP ranks equal those of one process (batch 2 x 2 = 4)."""
    args = ["finetune", str(base / "base"), "--data", str(base / "chat.jsonl"), *COMMON, *LORA,
            "--lora.dropout", "0", "--train.max_steps", "4", "--finetune.val_fraction", "0.25",
            "--train.device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    r = torchrun(["-m", "scratchlm", *args, "--out", str(tmp_path / "two"),
                  "--train.batch_size", "2", "--train.strategy", "fsdp"], tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("global batch: 2 per process x 1 grad_accum x 2 processes = 4") == 1
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=RTOL)
    final = tmp_path / "two" / "final"
    assert (final / "adapter_config.json").is_file()  # the adapter only, in PEFT's format
    diff = max_diff(tmp_path / "one" / "final" / "adapter_model.safetensors",
                    final / "adapter_model.safetensors")
    assert diff <= 1e-4


def test_bad_strategy_is_one_line(char_data, tmp_path, capsys):
    rc = main(["train", "--data", str(char_data), "--out", str(tmp_path / "x"), *TRAIN,
               "--train.strategy", "zero3"])
    err = capsys.readouterr().err
    assert rc == 1 and "train.strategy must be auto, none, ddp or fsdp" in err
    assert len(err.strip().splitlines()) == 1
