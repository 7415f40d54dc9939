"""The pieces of distributed training that need no second process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratchlm.data.pretrain import TokenData
from scratchlm.errors import ScratchLMError
from scratchlm.train import distributed
from scratchlm.train.distributed import Dist, rows_of, shard_batch
from tests.conftest import tiny_model


def test_ranks_read_their_rows_of_the_global_batch(char_data):
    data = TokenData(char_data)
    whole = data.batch("train", batch_size=6, block_size=16, rng=np.random.default_rng([1, 2, 3]))
    parts = [data.batch("train", batch_size=2, block_size=16, rng=np.random.default_rng([1, 2, 3]),
                        rank=r, world=3) for r in range(3)]
    for key in ("input_ids", "labels"):
        assert torch.equal(torch.cat([p[key] for p in parts]), whole[key])
    # one process is unchanged: the first rows of the same draw
    one = data.batch("train", batch_size=2, block_size=16, rng=np.random.default_rng([1, 2, 3]))
    assert torch.equal(one["input_ids"], parts[0]["input_ids"])


def test_rows_split_covers_every_row_once():
    for n, w in [(8, 2), (7, 2), (5, 3), (3, 3)]:
        got = [list(range(n))[rows_of(n, Dist("ddp", r, w, r, "gloo"))] for r in range(w)]
        assert sum(got, []) == list(range(n)) and min(map(len, got)) >= n // w
    with pytest.raises(ScratchLMError, match="cannot be split over 3 processes"):
        rows_of(2, Dist("ddp", 0, 3, 0, "gloo"))
    batch = {"input_ids": torch.arange(10).view(5, 2)}
    assert shard_batch(batch, Dist()) is batch
    assert shard_batch(batch, Dist("ddp", 1, 2, 1, "gloo"))["input_ids"].tolist() == [[6, 7], [8, 9]]


def test_setup_without_torchrun_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for strategy in ("auto", "none", "ddp", "fsdp"):
        d = distributed.setup(strategy)
        assert not d.enabled and d.world == 1 and d.is_main
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ScratchLMError, match="launched with 2 processes but train.strategy is none"):
        distributed.setup("none")
    with pytest.raises(ScratchLMError, match="train.strategy must be one of"):
        distributed.setup("zero")


def test_compile_on_cpu_says_why_not(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(ScratchLMError, match="train.compile on CPU needs a C\\+\\+ compiler"):
        distributed.check_compile(torch.device("cpu"))


def test_flops_per_token_and_no_mfu_on_cpu():
    model = tiny_model("gpt")
    n = sum(p.numel() for name, p in model.named_parameters() if "wpe" not in name)
    cfg = model.config
    assert distributed.train_flops_per_token(model, 64) == 6 * n + 12 * cfg.n_layer * 64 * cfg.d_model
    assert distributed.peak_flops(torch.device("cpu")) is None
