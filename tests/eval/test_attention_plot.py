"""Attention heatmaps: valid PNGs of the right shape, head/layer selection, CJK labels, errors."""

from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.image as mpimg

from scratchlm.errors import ScratchLMError
from scratchlm.eval import attention_plot
from scratchlm.eval.attention_plot import plot_attention, select_heads

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SRC = ["the", "cat", "sat", "on", "the", "mat", ".", "</s>"]
TGT = ["le", "chat", "$x$"]
ZH_TGT = ["我", "喜欢", "吃", "苹果", "。", "</s>", "\n"]


def _weights(*shape: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.softmax(torch.randn(*shape), dim=-1)


def _read_png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    return mpimg.imread(path)  # (H, W, 4)


def test_single_map_png(tmp_path):
    out = plot_attention(_weights(len(TGT), len(SRC)), SRC, TGT, tmp_path / "a.png", title="t")
    assert out == tmp_path / "a.png"
    h, w = _read_png(out).shape[:2]
    assert w > h  # 8 source tokens across, 3 generated tokens down
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temp file left behind


def test_tall_map_for_long_output(tmp_path):
    tgt = [f"t{i}" for i in range(16)]
    h, w = _read_png(plot_attention(np.full((16, 3), 1 / 3), ["a", "b", "c"], tgt, tmp_path / "t.png")).shape[:2]
    assert h > w


def test_heads_and_layers(tmp_path):
    w = _weights(2, 4, len(TGT), len(SRC))  # (L, H, T, S)
    assert np.allclose(select_heads(w), w.mean(dim=(0, 1)).numpy(), atol=1e-6)
    assert np.allclose(select_heads(w, layer=-1), w[1].mean(dim=0).numpy(), atol=1e-6)
    assert np.allclose(select_heads(w, layer=0, head=2), w[0, 2].numpy())
    assert select_heads(w, layer=1, grid=True).shape == (4, len(TGT), len(SRC))
    assert np.allclose(select_heads(w[0], head=-1), w[0, 3].numpy())
    one = plot_attention(w, SRC, TGT, tmp_path / "avg.png")
    grid = plot_attention(w, SRC, TGT, tmp_path / "grid.png", layer=-1, grid=True)
    head = plot_attention(w[0].to(torch.bfloat16), SRC, TGT, tmp_path / "head.png", head=1)
    for path in (one, grid, head):
        _read_png(path)
    # A 2x2 panel grid is larger than one map of the same tokens.
    assert _read_png(grid).shape[0] > _read_png(one).shape[0]


def test_cjk_tokens(tmp_path):
    w = _weights(len(ZH_TGT), len(SRC)).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no glyph warnings, with or without a CJK font
        _read_png(plot_attention(w, SRC, ZH_TGT, tmp_path / "zh.png", title="注意力"))


def test_cjk_tokens_without_a_cjk_font(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(attention_plot, "cjk_font", lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _read_png(plot_attention(_weights(len(ZH_TGT), 2), ["a", "b"], ZH_TGT, tmp_path / "zh.png"))
    err = capsys.readouterr().err  # one line says the characters are boxes and what to install
    assert err.count("\n") == 1 and "no CJK font" in err and "fonts-wqy-zenhei" in err
    plot_attention(_weights(2, 2), ["a", "b"], ["c", "d"], tmp_path / "en.png")
    assert capsys.readouterr().err == ""  # no CJK text: no note


def test_other_formats(tmp_path):
    out = plot_attention(_weights(3, 8), SRC, TGT, tmp_path / "a.svg")
    assert out.read_text(encoding="utf-8").lstrip().startswith("<?xml")
    with pytest.raises(ScratchLMError, match="cannot write a .xyz"):
        plot_attention(_weights(3, 8), SRC, TGT, tmp_path / "a.xyz")
    assert not list(tmp_path.glob("*.xyz*"))


def test_shape_errors(tmp_path):
    out = tmp_path / "bad.png"
    with pytest.raises(ScratchLMError, match=r"3 x 8 \(target x source\) but there are 2 target"):
        plot_attention(_weights(3, 8), SRC, TGT[:2], out)
    with pytest.raises(ScratchLMError, match="7 source tokens"):
        plot_attention(_weights(3, 8), SRC[:7], TGT, out)
    with pytest.raises(ScratchLMError, match="batch dimension"):
        plot_attention(_weights(1, 2, 2, 3, 8), SRC, TGT, out)
    with pytest.raises(ScratchLMError, match="head=5 is out of range"):
        plot_attention(_weights(4, 3, 8), SRC, TGT, out, head=5)
    with pytest.raises(ScratchLMError, match="pass layer="):
        plot_attention(_weights(2, 4, 3, 8), SRC, TGT, out, grid=True)
    with pytest.raises(ScratchLMError, match="no head dimension"):
        plot_attention(_weights(3, 8), SRC, TGT, out, head=0)
    with pytest.raises(ScratchLMError, match="no layer dimension"):
        plot_attention(_weights(4, 3, 8), SRC, TGT, out, layer=0)
    with pytest.raises(ScratchLMError, match="non-empty"):
        plot_attention(np.zeros((0, 8)), SRC, [], out)
    assert not out.exists()
