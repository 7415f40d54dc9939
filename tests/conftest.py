"""Shared fixtures: a tiny corpus, a prepared data dir and tiny models (CPU, seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from scratchlm.config import run_config_from_dict
from scratchlm.data.pretrain import prepare
from scratchlm.data.sources import shakespeare_sample_path
from scratchlm.registry import build_model


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
