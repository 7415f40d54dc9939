import json
import math

import pytest
import torch
from safetensors.torch import load_file

from scratchlm.config import run_config_from_dict
from scratchlm.data.pretrain import TokenData
from scratchlm.errors import ScratchLMError
from scratchlm.registry import build_model
from scratchlm.train import Trainer
from scratchlm.train.optim import lr_at


def _trainer(char_data, out, *, family="llama", **train):
    data = TokenData(char_data)
    train = {"max_steps": 12, "batch_size": 4, "grad_accum": 2, "lr": 3e-3, "warmup_steps": 3,
             "eval_every": 4, "eval_batches": 2, "save_every": 6, "log_every": 2, **train}
    cfg = run_config_from_dict({
        "model": {"family": family, "preset": "tiny", "vocab_size": data.vocab_size,
                  "block_size": 32, "dropout": 0.1},
        "train": train,
    })
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    return Trainer(model=model, config=cfg, tokenizer=data.tokenizer(), out_dir=out,
                   batches=lambda split, rng: data.batch(split, batch_size=4, block_size=32, rng=rng),
                   show_progress=False)


@pytest.mark.parametrize("family", ["gpt", "llama", "rnn"])
def test_resumed_run_is_bit_identical(char_data, tmp_path, family):
    full = _trainer(char_data, tmp_path / "full", family=family)
    full.fit()
    part = _trainer(char_data, tmp_path / "part", family=family)
    part.fit(until_step=5)  # interrupted at step 5 (checkpoint written there)
    assert part.step == 5 and not (tmp_path / "part" / "final").exists()
    resumed = _trainer(char_data, tmp_path / "part", family=family)
    resumed.fit(resume=True)
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "part" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the weights did change during training
    first = _trainer(char_data, tmp_path / "x", family=family).model.state_dict()
    assert not torch.equal(first[next(iter(first))], resumed.model.state_dict()[next(iter(first))])
    # metrics are continuous: one line per logged step, no duplicates from the resume
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 12


def test_loss_goes_down_and_outputs(char_data, tmp_path):
    t = _trainer(char_data, tmp_path / "r", max_steps=30, eval_every=10)
    summary = t.fit()
    rows = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 3 and vals[-1] < vals[0]
    assert all({"step", "train_loss", "lr", "tokens_per_s"} <= r.keys() for r in rows if r["step"] % 2 == 0)
    for d in ("best", "last", "final"):
        assert (tmp_path / "r" / d / "model.safetensors").is_file()
    assert summary["best_val_loss"] == min(vals)


def test_nan_loss_stops_with_step(char_data, tmp_path):
    t = _trainer(char_data, tmp_path / "r")
    calls = {"n": 0}

    def bad_loss(model, batch):
        calls["n"] += 1
        loss = model(batch["input_ids"]).float().mean() * 0
        return loss + (math.nan if calls["n"] > 6 else 1.0)  # grad_accum 2: step 4 goes bad

    t.loss_fn = bad_loss
    with pytest.raises(ScratchLMError, match="at step 4"):
        t.fit()


def test_existing_run_and_incompatible_resume(char_data, tmp_path):
    _trainer(char_data, tmp_path / "r").fit(until_step=2)
    with pytest.raises(ScratchLMError, match="already holds a run"):
        _trainer(char_data, tmp_path / "r").fit()
    with pytest.raises(ScratchLMError, match="train.lr"):
        _trainer(char_data, tmp_path / "r", lr=1e-2).fit(resume=True)
    with pytest.raises(ScratchLMError, match="model.family"):
        _trainer(char_data, tmp_path / "r", family="gpt").fit(resume=True)
    with pytest.raises(ScratchLMError, match="nothing to resume|no checkpoint"):
        _trainer(char_data, tmp_path / "empty").fit(resume=True)


def test_schedule_warmup_then_cosine():
    cfg = run_config_from_dict({"train": {"lr": 1.0, "warmup_steps": 10, "max_steps": 110,
                                          "min_lr_ratio": 0.1}}).train
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)


def test_weight_decay_groups():
    from scratchlm.train.optim import make_optimizer

    model = build_model(run_config_from_dict({"model": {"family": "gpt", "preset": "tiny",
                                                         "vocab_size": 50}}).model)
    opt = make_optimizer(model, run_config_from_dict({}).train, device_type="cpu")
    decay, no_decay = opt.param_groups
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] > 0
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == model.num_params()  # tied weight counted once


def test_best_by_validator_metric_and_early_stopping(char_data, tmp_path):
    """best/ follows train.best_metric (higher is better for val_bleu), and train.patience
    evaluations without improvement stop the run, with final/ and a resumable last/."""
    trainer = _trainer(char_data, tmp_path / "r", max_steps=40, eval_every=4, best_metric="val_bleu",
                       patience=2)
    scores = iter([10.0, 30.0, 20.0, 25.0, 99.0])  # best at the 2nd eval; 2 worse ones stop it
    seen_steps = []

    def validate(model):
        seen_steps.append(trainer.step)
        return {"val_bleu": next(scores)}

    trainer.validate = validate
    summary = trainer.fit()
    assert seen_steps == [4, 8, 12, 16] and summary["step"] == 16
    assert (tmp_path / "r" / "final").is_dir() and (tmp_path / "r" / "last").is_dir()
    records = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_bleu"] for r in records if "val_bleu" in r] == [10.0, 30.0, 20.0, 25.0]
    best = load_file(tmp_path / "r" / "best" / "model.safetensors")
    final = load_file(tmp_path / "r" / "final" / "model.safetensors")
    assert any(not torch.equal(best[k], final[k]) for k in best)  # best is step 8's, not 16's
    assert trainer.best_score == 30.0 and trainer.bad_evals == 2


def test_best_metric_without_validator_is_an_error(char_data, tmp_path):
    with pytest.raises(ScratchLMError, match="val_bleu"):
        _trainer(char_data, tmp_path / "r", best_metric="val_bleu").fit()
