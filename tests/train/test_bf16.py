"""bf16 autocast training (train.dtype bfloat16, or auto where bf16 is fast): fp32 master
weights and optimizer state, and a resumed run still equals an uninterrupted one bit for bit."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from tests.train.test_trainer import _trainer


def test_bf16_resume_is_bit_identical(char_data, tmp_path):
    full = _trainer(char_data, tmp_path / "full", family="gpt", dtype="bfloat16")
    assert full.amp_dtype == torch.bfloat16
    full.fit()
    part = _trainer(char_data, tmp_path / "part", family="gpt", dtype="bfloat16")
    part.fit(until_step=5)
    resumed = _trainer(char_data, tmp_path / "part", family="gpt", dtype="bfloat16")
    resumed.fit(resume=True)
    assert all(p.dtype == torch.float32 for p in resumed.model.parameters())  # fp32 master weights
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "part" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fp32 = _trainer(char_data, tmp_path / "fp32", family="gpt", dtype="float32")
    fp32.fit()
    c = load_file(tmp_path / "fp32" / "final" / "model.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)  # bf16 did change the arithmetic


def test_auto_picks_bf16_only_where_bf16_training_is_fast(monkeypatch):
    from dataclasses import replace

    from scratchlm.hardware import capabilities
    from scratchlm.train import trainer

    caps = capabilities()
    cpu = torch.device("cpu")
    for amx, speedup, want in ((True, 3.0, torch.bfloat16), (False, 3.0, torch.bfloat16),
                               (True, 0.5, None), (False, 0.5, None), (False, None, None)):
        monkeypatch.setattr(trainer, "capabilities",
                            lambda a=amx, s=speedup: replace(caps, amx_bf16=a, bf16_speedup=s))
        assert trainer.autocast_dtype("auto", cpu) == want
        assert trainer.autocast_dtype("float32", cpu) is None
        assert trainer.autocast_dtype("bfloat16", cpu) == torch.bfloat16
