"""Shared fixtures: a tiny corpus, a prepared data dir and tiny models (CPU, seconds)."""

from __future__ import annotations

import os
from pathlib import Path

# Tiny models gain nothing from more threads, and when other processes share the cores
# (another test's subprocess, a training job) spinning OpenMP threads slow a step many times
# over: one thread here and in the CLI subprocesses the tests start (they inherit this).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from scratchlm.config import run_config_from_dict  # noqa: E402
from scratchlm.data.pretrain import prepare  # noqa: E402
from scratchlm.data.sources import shakespeare_sample_path  # noqa: E402
from scratchlm.registry import build_model  # noqa: E402


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """About 40 KB of the shipped Shakespeare sample, plus a little Chinese text."""
    d = tmp_path_factory.mktemp("corpus")
    text = shakespeare_sample_path().read_text(encoding="utf-8")[:40_000]
    (d / "a.txt").write_text(text, encoding="utf-8")
    (d / "b.txt").write_text("我喜欢吃苹果。\n天下大势，分久必合，合久必分。\n" * 20, encoding="utf-8")
    return d


@pytest.fixture(scope="session")
def char_data(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "char"
    prepare([corpus], out=out, tokenizer="char", val_fraction=0.1, show_progress=False)
    return out


def tiny_model(family: str, *, vocab_size: int = 97, **overrides):
    values = {"family": family, "preset": "tiny", "vocab_size": vocab_size, **overrides}
    torch.manual_seed(0)
    return build_model(run_config_from_dict({"model": values}).model)


FAMILIES = ["gpt", "llama"]
