"""Attention heatmaps: which source tokens each generated token attended to (PNG, Agg backend).

The classic alignment picture of Bahdanau et al. 2014 (fig. 3): source tokens along x,
generated tokens along y, one cell per weight. Takes one example's weights, either one map
(T, S), one layer (heads, T, S) or all layers (layers, heads, T, S); pick a layer and head,
average them, or draw one panel per head. CJK labels need a CJK font (Debian/Ubuntu:
`apt-get install fonts-noto-cjk`); without one the plot is still written, with empty boxes.
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_file

# Family names first (found in matplotlib's font list), then files where Debian/Ubuntu
# packages put them, for fonts installed after matplotlib built its font cache.
_CJK_FONTS = (
    "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Sans CJK KR",
    "Source Han Sans SC", "Source Han Sans CN", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
    "Droid Sans Fallback", "AR PL UMing CN", "Microsoft YaHei", "SimHei", "PingFang SC",
    "Hiragino Sans GB", "Arial Unicode MS",
)
_CJK_TEXT = re.compile("[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]")  # characters a CJK font draws
_CJK_FONT_FILES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)


def cjk_font() -> str | None:
    """The family name of an installed font with CJK glyphs, or None."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    for name in _CJK_FONTS:
        if name in installed:
            return name
    for path in _CJK_FONT_FILES:
        if Path(path).is_file():
            try:
                font_manager.fontManager.addfont(path)
                return font_manager.FontProperties(fname=path).get_name()
            except (OSError, RuntimeError, ValueError):
                continue
    return None


def _to_numpy(weights: Any) -> np.ndarray:
    if hasattr(weights, "detach"):  # a torch tensor, any dtype or device
        weights = weights.detach().float().cpu().numpy()
    return np.asarray(weights, dtype=np.float32)


def select_heads(
    weights: Any, *, layer: int | None = None, head: int | None = None, grid: bool = False,
) -> np.ndarray:
    """Reduce (T, S), (H, T, S) or (L, H, T, S) weights to one (T, S) map, or (H, T, S) for a grid.

    `layer` / `head` pick one (negative counts from the end); None averages over them.
    A grid keeps every head of one layer, so 4-D weights need `layer` and `head` must be None.
    """
    w = _to_numpy(weights)
    if w.ndim not in (2, 3, 4):
        raise ScratchLMError(
            f"attention weights must be (T, S), (heads, T, S) or (layers, heads, T, S) for one "
            f"example, got shape {tuple(w.shape)}; index out the batch dimension first"
        )
    if w.ndim == 4:
        if layer is None and grid:
            raise ScratchLMError("a per-head grid draws one layer; pass layer= (e.g. -1 for the last)")
        w = w.mean(axis=0) if layer is None else w[_index(layer, w.shape[0], "layer")]  # (H, T, S)
    elif layer is not None:
        raise ScratchLMError(f"layer={layer} given but the weights have no layer dimension (shape {tuple(w.shape)})")
    if w.ndim == 2:
        if head is not None or grid:
            raise ScratchLMError(f"the weights have no head dimension (shape {tuple(w.shape)}); drop head=/grid")
        return w
    if grid:
        if head is not None:
            raise ScratchLMError("grid draws every head; pass either head= or grid=True, not both")
        return w  # (H, T, S)
    return w.mean(axis=0) if head is None else w[_index(head, w.shape[0], "head")]  # (T, S)


def _index(i: int, n: int, what: str) -> int:
    if not -n <= i < n:
        raise ScratchLMError(f"{what}={i} is out of range: the weights have {n} {what}s (0..{n - 1})")
    return i % n


def _label(token: str) -> str:
    # One line per tick, and `$` would start matplotlib mathtext.
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("$", r"\$")


def plot_attention(
    weights: Any, src_tokens: list[str], tgt_tokens: list[str], out: str | Path, *,
    title: str | None = None, layer: int | None = None, head: int | None = None,
    grid: bool = False, keys_label: str = "source",
) -> Path:
    """Draw attention `weights` as a heatmap and write it to `out` (PNG, or the suffix's format).

    weights: a numpy array or torch tensor (T, S), (heads, T, S) or (layers, heads, T, S), with
        T = len(tgt_tokens) generated tokens and S = len(src_tokens) source tokens.
    layer, head: pick one (negative counts from the end); None averages over that dimension.
    grid: one small panel per head of one layer instead of a single map.
    keys_label: the x axis ("source"; "prompt + output" for a decoder's self-attention).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = select_heads(weights, layer=layer, head=head, grid=grid)
    maps = w if grid else w[None]  # (P, T, S): one map per panel
    n_panels, T, S = maps.shape
    if not src_tokens or not tgt_tokens:
        raise ScratchLMError("no tokens to label the plot with; src_tokens and tgt_tokens must be non-empty")
    if (len(tgt_tokens), len(src_tokens)) != (T, S):
        raise ScratchLMError(
            f"attention weights are {T} x {S} (target x source) but there are {len(tgt_tokens)} "
            f"target and {len(src_tokens)} source tokens; drop or add the BOS/EOS positions so they match"
        )
    out = Path(out)
    fmt = out.suffix[1:].lower() or "png"

    font = cjk_font()
    rc = {"font.family": ["DejaVu Sans", font]} if font else {}  # per-glyph fallback to the CJK font
    if font is None and any(_CJK_TEXT.search(t) for t in [*src_tokens, *tgt_tokens, title or ""]):
        print("note: no CJK font is installed, so Chinese/Japanese/Korean characters are drawn as "
              "boxes; install one (Debian: apt-get install fonts-wqy-zenhei)", file=sys.stderr)
    ncols = math.ceil(math.sqrt(n_panels))
    nrows = math.ceil(n_panels / ncols)
    cell = 0.32 if n_panels == 1 else 0.2  # inches per token
    panel_w, panel_h = max(2.5, cell * S + 1.2), max(2.0, cell * T + 1.0)
    figsize = (min(ncols * panel_w + 1.0, 30.0), min(nrows * panel_h + 0.6, 30.0))
    with matplotlib.rc_context(rc), warnings.catch_warnings():
        # No CJK font: matplotlib warns once per missing glyph; the plot is still useful.
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from")
        fig, axes = plt.subplots(nrows, ncols, figsize=figsize, dpi=120, squeeze=False,
                                 layout="constrained")
        try:
            if fmt not in fig.canvas.get_supported_filetypes():
                raise ScratchLMError(f"cannot write a .{fmt} image; use a .png, .pdf or .svg path")
            _draw(fig, axes, maps, src_tokens, tgt_tokens, grid=grid, title=title,
                  keys_label=keys_label)
            with atomic_file(out, mode="wb") as f:
                fig.savefig(f, format=fmt, bbox_inches="tight")
        finally:
            plt.close(fig)
    return out


def _draw(fig, axes, maps: np.ndarray, src_tokens: list[str], tgt_tokens: list[str], *,
          grid: bool, title: str | None, keys_label: str) -> None:
    """One heatmap per panel of `axes` (nrows, ncols) from `maps` (P, T, S), one colour scale."""
    n_panels, T, S = maps.shape
    nrows, ncols = axes.shape
    vmax = float(np.nanmax(maps)) if np.isfinite(maps).any() else 1.0
    fontsize = 9 if n_panels == 1 else 6
    src_labels = [_label(t) for t in src_tokens]
    tgt_labels = [_label(t) for t in tgt_tokens]
    for i, ax in enumerate(axes.flat):
        if i >= n_panels:
            ax.axis("off")
            continue
        image = ax.imshow(maps[i], cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto",
                          interpolation="nearest")
        ax.set_xticks(range(S), src_labels, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(T), tgt_labels, fontsize=fontsize)
        if grid:
            ax.set_title(f"head {i}", fontsize=fontsize + 1)
        if i % ncols == 0:
            ax.set_ylabel("generated")
        if i + ncols >= n_panels:  # bottom panel of its column
            ax.set_xlabel(keys_label)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    if title:  # wrapped to the figure's width (about 9 characters per inch of 10-point text)
        import textwrap

        width = max(40, int(fig.get_figwidth() * 9))
        fig.suptitle("\n".join(textwrap.wrap(title, width)), fontsize=10)
