"""Diagnostic (not part of `make bench`, writes nothing): the int8 linear kernels one decoding
step runs, over a whole model's linear layers (every layer a distinct weight, as in decoding,
so the weights stream from memory rather than sit in cache).

For GPT-2 124M's and SmolLM2-135M's linear shapes (their output layers included) at 1, 8 and
40 rows: fp32 (`F.linear`, MKL), torch's int8 kernels (fbgemm W8A8 `linear_dynamic`,
`_weight_int8pack_mm` with bf16 activations) and scratchlm's (models/kernels: `w8a8` VNNI
, `w8a8g` with one scale per 32 weights and activations as llama.cpp's Q8_0, and `w8a32`
weight-only). Prints ms per step and the int8 weights' read rate in GB/s.

    .venv/bin/python bench/int8_kernels.py [--threads N]
"""

from __future__ import annotations

import argparse
import time
import warnings

import _common as C
import torch
import torch.nn.functional as F

from scratchlm.models import kernels
from scratchlm.models.quant import group_int8

MODELS = {  # (out, in) of one layer's linears, layers, output layer (out, in)
    "GPT-2 124M": ([(2304, 768), (768, 768), (3072, 768), (768, 3072)], 12, (50257, 768)),
    "SmolLM2-135M": ([(960, 576), (576, 576), (3072, 576), (576, 1536)], 30, (49152, 576)),
}


def shapes(name: str) -> list[tuple[int, int]]:
    layer, n, head = MODELS[name]
    return layer * n + [head]


def runners(shape_list: list[tuple[int, int]]) -> dict[str, list]:
    warnings.simplefilter("ignore")  # torch marks its quantized tensors as deprecated
    torch.backends.quantized.engine = "fbgemm"
    out = {name: [] for name in ("fp32", "fbgemm w8a8", "int8pack w8a16", "ours w8a8", "ours w8a8g", "ours w8a32")}
    for n, k in shape_list:
        w = torch.randn(n, k) * 0.02
        scale = w.abs().amax(1) / 127
        q8 = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        qw = torch.quantize_per_channel(w, scale.double(), torch.zeros(n, dtype=torch.long), 0, torch.qint8)
        fb = torch.ops.quantized.linear_prepack(qw, None)
        sb = scale.bfloat16()
        out["fp32"].append(lambda x, w=w: F.linear(x, w))
        out["fbgemm w8a8"].append(lambda x, fb=fb: torch.ops.quantized.linear_dynamic(x, fb, False))
        out["int8pack w8a16"].append(lambda x, q=q8, s=sb: torch._weight_int8pack_mm(x.bfloat16(), q, s))
        if kernels.library() is not None:
            out["ours w8a8"].append(kernels.PackedInt8(q8, scale, None, kind="w8a8"))
            out["ours w8a32"].append(kernels.PackedInt8(q8, scale, None, kind="w8a32"))
            out["ours w8a8g"].append(kernels.PackedInt8(*group_int8(w), None, kind="w8a8g"))
    return {k: v for k, v in out.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    C.setup(threads=args.threads or C.THREADS)
    print(C.env_lines())
    if kernels.library() is None:
        print(f"scratchlm's kernels: not available here ({kernels.why_not()})")
    torch.set_grad_enabled(False)
    for model in MODELS:
        shape_list = shapes(model)
        int8_bytes = sum(n * k for n, k in shape_list)
        run = runners(shape_list)
        for rows in (1, 8, 40):
            xs = {k: torch.randn(rows, k) for _, k in shape_list}
            times = {name: [] for name in run}
            for _ in range(args.repeats):  # interleaved: every kernel once per round
                for name, fns in run.items():
                    t = time.perf_counter()
                    for fn, (_, k) in zip(fns, shape_list, strict=True):
                        fn(xs[k])
                    times[name].append(time.perf_counter() - t)
            print(f"\n{model}, {rows} row(s), {int8_bytes / 1e6:.0f} MB of int8 weights:")
            base = C.median(times["fbgemm w8a8"])
            for name, ts in times.items():
                med = C.median(ts)
                print(f"  {name:16s} {med * 1e3:8.2f} ms  {int8_bytes / med / 1e9:6.1f} GB/s int8-equiv"
                      f"  {base / med:5.2f}x fbgemm")


if __name__ == "__main__":
    main()
