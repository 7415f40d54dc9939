"""Diagnostic (not part of `make bench`, writes nothing): how fast is the output projection
(logits = h @ W.T, W the tied (vocab, d) embedding) on this CPU, by memory layout?

During decoding the LM head is a matrix-vector product at batch 1 and a thin matrix product
at small batch. With W stored (vocab, d) as nn.Linear/nn.Embedding keep it, `F.linear(h, W)`
runs MKL's slow path for tall weights; the same product with a pre-transposed contiguous
(d, vocab) copy (batch 1) or as `(W @ h.T).T` (batch > 1) reads W much faster.

    .venv/bin/python bench/lm_head_gemv.py
"""

from __future__ import annotations

import time

import _common as C
import torch
import torch.nn.functional as F

SHAPES = [(50257, 768, "GPT-2 124M head"), (16000, 384, "16M model head")]
BATCHES = [1, 8]


def bench(fn, n: int = 30, repeats: int = 5) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t) / n)
    return C.median(times) * 1e3


def main() -> None:
    C.setup(seed=0)
    print(C.env_lines())
    rows = []
    for vocab, d, name in SHAPES:
        w = torch.randn(vocab, d)
        wt = w.t().contiguous()  # (d, vocab): the layout a decoding head could cache
        for b in BATCHES:
            h = torch.randn(b, d)
            ref = F.linear(h, w)
            assert torch.allclose(ref, h @ wt, atol=1e-3)
            assert torch.allclose(ref, (w @ h.t()).t(), atol=1e-3)
            t_lin = bench(lambda h=h, w=w: F.linear(h, w))
            t_t = bench(lambda h=h, wt=wt: h @ wt)
            t_wx = bench(lambda h=h, w=w: (w @ h.t()).t())
            mb = w.numel() * 4 / 1e6
            rows.append([f"{name} ({vocab}x{d}, {mb:.0f} MB)", str(b), f"{t_lin:.2f}",
                         f"{t_t:.2f} ({t_lin / t_t:.2f}x)", f"{t_wx:.2f} ({t_lin / t_wx:.2f}x)"])
            print(rows[-1], flush=True)
    print()
    print(C.md_table(["weight", "rows", "F.linear(h, W) ms", "h @ W_t (cached) ms",
                      "(W @ h.T).T ms"], rows))


if __name__ == "__main__":
    main()
