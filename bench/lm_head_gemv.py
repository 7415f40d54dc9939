"""Diagnostic (not part of `make bench`, writes nothing): how fast is the output projection
(logits = h @ W.T, W the tied (vocab, d) embedding) on this CPU, by memory layout?

During decoding the LM head is a matrix-vector product at batch 1 and a thin matrix product
at small batch. With W stored (vocab, d) as nn.Linear/nn.Embedding keep it, `F.linear(h, W)`
runs MKL's slow path for tall weights; the same product with a pre-transposed contiguous
(d, vocab) copy (batch 1) or as `(W @ h.T).T` (batch > 1) reads W much faster.

    .venv/bin/python bench/lm_head_gemv.py            # fp32 layouts
    .venv/bin/python bench/lm_head_gemv.py --kernels  # the output-layer kernels of models/quant.py

`--kernels` times the same head (GPT-2's, Marian's, SmolLM2's) in each precision an int8 or
bf16 model may run it in, at 1, 8 and 40 rows (40: beam 5 over 8 sources): fp32 (cached
transposed copy), bf16 (`h @ W.T`, oneDNN; AMX where the CPU has it), fp16 weights (fbgemm,
`HalfLinear`), int8 weight-only (`_weight_int8pack_mm`, bf16 activations) and int8 W8A8
(`quantized::linear_dynamic`, fbgemm and oneDNN engines). One weight reused: the int8 copies
(25-38 MB) may stay in a large L3 cache, which a whole model's decoding step does not allow.
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


def kernels() -> None:
    import warnings

    warnings.simplefilter("ignore")  # torch marks its quantized tensors as deprecated
    engines = [e for e in ("fbgemm", "onednn") if e in torch.backends.quantized.supported_engines]
    rows = []
    for vocab, d, name in [(50257, 768, "GPT-2"), (58101, 512, "Marian"), (49152, 576, "SmolLM2")]:
        w = torch.randn(vocab, d) * 0.02
        wt, wb = w.t().contiguous(), w.bfloat16()
        scale = w.abs().amax(1) / 127
        q8 = (w / scale[:, None]).round().to(torch.int8)
        qw = torch.quantize_per_channel(w, scale.double(), torch.zeros(vocab, dtype=torch.long), 0, torch.qint8)
        packed = {}
        for e in engines:
            torch.backends.quantized.engine = e
            packed[e] = torch.ops.quantized.linear_prepack(qw, None)
        torch.backends.quantized.engine = engines[0]
        p16 = torch.ops.quantized.linear_prepack_fp16(w, None)
        sb = scale.bfloat16()
        for b in (1, 8, 40):
            h = torch.randn(b, d)
            hb = h.bfloat16()
            runs = [lambda h=h, wt=wt: h @ wt, lambda hb=hb, wb=wb: hb @ wb.t(),
                    lambda h=h, p=p16: torch.ops.quantized.linear_dynamic_fp16(h, p),
                    lambda hb=hb, q=q8, sb=sb: torch._weight_int8pack_mm(hb, q, sb)]
            cols = [bench(f) for f in runs]
            for e in engines:
                torch.backends.quantized.engine = e
                cols.append(bench(lambda h=h, p=packed[e]: torch.ops.quantized.linear_dynamic(h, p, False)))
            rows.append([f"{name} {vocab}x{d}", str(b), *(f"{t:.2f}" for t in cols)])
            print(rows[-1], flush=True)
    print()
    print(C.md_table(["head", "rows", "fp32 ms", "bf16 ms", "fp16 weights ms", "int8 weight-only ms",
                      *(f"int8 W8A8 {e} ms" for e in engines)], rows))


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
    import sys

    if "--kernels" in sys.argv:
        C.setup(seed=0)
        print(C.env_lines())
        kernels()
    else:
        main()
