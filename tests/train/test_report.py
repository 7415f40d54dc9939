"""train.report_to [jsonl, tensorboard]: the event file holds the numbers of metrics.jsonl
(plus grad_norm, lr and tokens/s, which metrics.jsonl has too), once per step across a resume
whose checkpoint is older than the last logged step."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from scratchlm.config import run_config_from_dict
from scratchlm.errors import ScratchLMError
from tests.train.test_trainer import _trainer

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _scalars(run) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{tag}: a step written twice: {steps}"
        out[tag] = {e.step: e.value for e in events}
    return out


def test_tensorboard_equals_metrics_jsonl_across_a_resume(char_data, tmp_path):
    run = tmp_path / "r"
    kw = {"report_to": ["jsonl", "tensorboard"], "log_every": 1}
    _trainer(char_data, run, **kw).fit(until_step=4)  # checkpoint at step 4
    shutil.copytree(run / "last", tmp_path / "last4")
    _trainer(char_data, run, **kw).fit(resume=True, until_step=7)  # logs 5..7 ...
    shutil.rmtree(run / "last")  # ... and is killed with its checkpoint still at step 4
    shutil.copytree(tmp_path / "last4", run / "last")
    _trainer(char_data, run, **kw).fit(resume=True)  # 5..12 again: purge_step drops the old 5..7

    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    tb = _scalars(run)
    assert {"train_loss", "val_loss", "lr", "grad_norm", "tokens_per_s"} <= tb.keys()
    for key in tb:
        want = {r["step"]: r[key] for r in rows if isinstance(r.get(key), (int, float))}
        assert tb[key].keys() == want.keys(), key
        for step, value in want.items():  # TensorBoard keeps float32
            assert tb[key][step] == np.float32(value), (key, step)
    assert all(r["grad_norm"] > 0 for r in rows)


def test_report_to_is_validated():
    with pytest.raises(ScratchLMError, match="train.report_to must be"):
        run_config_from_dict({"train": {"report_to": ["jsonl", "wandb"]}})
    with pytest.raises(ScratchLMError, match="train.report_to must be"):
        run_config_from_dict({"train": {"report_to": ["tensorboard"]}})
    cfg = run_config_from_dict({}, {"train": {"report_to": "jsonl,tensorboard"}})
    assert cfg.train.report_to == ["jsonl", "tensorboard"]
