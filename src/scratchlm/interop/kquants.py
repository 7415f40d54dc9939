"""llama.cpp's Q4_K and Q6_K block formats, written as its llama-quantize writes them.

The `gguf` package reads every k-quant but writes none, so these are numpy ports of ggml's
reference quantisers (`quantize_row_q4_K_ref`, `quantize_row_q6_K_ref` and their helpers
`make_qkx2_quants`, `make_qx_quants` in ggml/src/ggml-quants.c of llama.cpp as vendored in
llama-cpp-python 0.3.36), the path llama-quantize takes without an importance matrix. They
compute in float32, sums in ggml's order, rounding to nearest even as ggml's `nearest_int`.

A super-block holds 256 values (`QK_K`); a row's length must be a multiple of it.

    block_q4_K (144 bytes): d f16, dmin f16, scales[12] (8 six-bit scales and 8 six-bit mins),
                            qs[128] (4-bit values: in each 64, value l low nibble, l+32 high)
        x = d * sc[j] * q - dmin * m[j]          for sub-block j of 32 values
    block_q6_K (210 bytes): ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] int8, d f16
        x = d * scales[j] * (q - 32)             for sub-block j of 16 values
"""

from __future__ import annotations

import numpy as np

QK_K = 256
F = np.float32


def _rint(a: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half to even (the float32 value, as an int32)."""
    return np.rint(a).astype(np.int32)


def _seqsum(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis left to right in float32, as ggml's loops do (numpy's pairwise
    sum rounds differently)."""
    acc = a[..., 0].copy()
    for i in range(1, a.shape[-1]):
        acc += a[..., i]
    return acc


def _fp16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16)


CHUNK = 1 << 14  # super-blocks encoded at a time (4M values): bounds the temporaries' memory


def _encode(arr: np.ndarray, blocks_fn, nbytes: int) -> np.ndarray:
    """`arr` (..., k*256) -> bytes (..., k*nbytes), `blocks_fn` encoding (n, 256) super-blocks
    to (n, nbytes), CHUNK at a time."""
    x = np.ascontiguousarray(arr, dtype=np.float32)
    if x.shape[-1] % QK_K:
        raise ValueError(f"a k-quant row needs a multiple of {QK_K} values, not {x.shape[-1]}")
    flat = x.reshape(-1, QK_K)  # (super-blocks, 256)
    out = np.concatenate([blocks_fn(flat[i:i + CHUNK]) for i in range(0, len(flat), CHUNK)])
    return out.reshape(*x.shape[:-1], x.shape[-1] // QK_K * nbytes)


def _make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float,
                      nstep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants (use_mad false) for each row of `x` (n, 32) with weights `w`:
    (levels (n, 32) in 0..nmax, scale (n,), the_min (n,)) with x ~ scale * level - the_min."""
    mn = np.minimum(x.min(-1), F(0))  # (n,)
    mx = x.max(-1)
    sum_w = _seqsum(w)
    sum_x = _seqsum(w * x)
    flat = mx == mn
    span = np.where(flat, F(1), mx - mn)
    iscale = F(nmax) / span
    scale = F(1) / iscale
    L = np.clip(_rint(iscale[:, None] * (x - mn[:, None])), 0, nmax)
    diff = scale[:, None] * L.astype(F) + mn[:, None] - x
    best = _seqsum(w * (diff * diff))
    for step in range(nstep + 1):
        # as in ggml, `min` is the best solution's so far: later candidates start from it
        span = np.where(flat, F(1), mx - mn)
        iscale = (F(rmin) + F(rdelta) * F(step) + F(nmax)) / span
        la = np.clip(_rint(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        lf = la.astype(F)
        wl = w * lf
        sum_l, sum_l2, sum_xl = _seqsum(wl), _seqsum(wl * lf), _seqsum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        with np.errstate(divide="ignore", invalid="ignore"):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
        diff = this_scale[:, None] * lf + this_min[:, None] - x
        cur = _seqsum(w * (diff * diff))
        better = (D > 0) & (cur < best) & ~flat
        L = np.where(better[:, None], la, L)
        best = np.where(better, cur, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    L = np.where(flat[:, None], 0, L)
    scale = np.where(flat, F(0), scale)
    return L, scale.astype(F), (-mn).astype(F)


def quantize_q4_k(arr: np.ndarray) -> np.ndarray:
    """`arr` (..., k*256) float -> Q4_K bytes (..., k*144), as quantize_row_q4_K_ref."""
    return _encode(arr, _q4_k_blocks, 144)


def _q4_k_blocks(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    xs = x.reshape(nb * 8, 32)  # sub-blocks of 32
    av_x = np.sqrt(_seqsum(xs * xs) / F(32))
    w = av_x[:, None] + np.abs(xs)
    L, scales, mins = _make_qkx2_quants(xs, w, 15, -1.0, 0.1, 20)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale = np.maximum(scales.max(-1), F(0))
    max_min = np.maximum(mins.max(-1), F(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F(63) / max_scale, F(0))
        inv_min = np.where(max_min > 0, F(63) / max_min, F(0))
    ls = np.clip(_rint(inv_scale[:, None] * scales), 0, 63).astype(np.uint8)  # (nb, 8)
    lm = np.clip(_rint(inv_min[:, None] * mins), 0, 63).astype(np.uint8)
    packed = np.empty((nb, 12), np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    d, dmin = _fp16(max_scale / F(63)), _fp16(max_min / F(63))
    dj = d.astype(F)[:, None] * ls.astype(F)  # (nb, 8)
    dmj = dmin.astype(F)[:, None] * lm.astype(F)
    L = L.reshape(nb, 8, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(_rint((x.reshape(nb, 8, 32) + dmj[..., None]) / dj[..., None]), 0, 15)
    L = np.where((dj != 0)[..., None], q, L).astype(np.uint8).reshape(nb, 4, 2, 32)
    qs = L[:, :, 0] | (L[:, :, 1] << 4)  # (nb, 4, 32): per 64 values, l | (l + 32) << 4
    return np.concatenate([d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2),
                           packed, qs.reshape(nb, 128)], axis=1)


def _make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants with rmse_type 1 (weights x^2) for each row of `x` (n, 16):
    (levels (n, 16) in 0..2*nmax-1, scale (n,)) with x ~ scale * (level - nmax)."""
    n = x.shape[0]
    imax = np.abs(x).argmax(-1)
    mx = x[np.arange(n), imax]  # the signed value of largest magnitude (the first such)
    zero = np.abs(mx) < F(1e-15)
    mx = np.where(zero, F(1), mx)
    w = x * x
    wx = w * x

    def levels(iscale):
        return np.clip(_rint(iscale[:, None] * x), -nmax, nmax - 1)

    def sums(lv):
        lf = lv.astype(F)
        return _seqsum(wx * lf), _seqsum((w * lf) * lf)

    lv = levels(F(-nmax) / mx)
    sumlx, suml2 = sums(lv)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, F(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        la = levels(-(F(nmax) + F(0.1) * F(step)) / mx)
        sumlx, suml2 = sums(la)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        lv = np.where(better[:, None], la, lv)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    lv = np.where(zero[:, None], -nmax, lv)
    return (lv + nmax).astype(np.int32), np.where(zero, F(0), scale).astype(F)


def quantize_q6_k(arr: np.ndarray) -> np.ndarray:
    """`arr` (..., k*256) float -> Q6_K bytes (..., k*210), as quantize_row_q6_K_ref."""
    return _encode(arr, _q6_k_blocks, 210)


def _q6_k_blocks(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    L, scales = _make_qx_quants(x.reshape(nb * 16, 16), 32)
    L, scales = L.reshape(nb, 16, 16), scales.reshape(nb, 16)
    pick = np.abs(scales).argmax(-1)
    max_scale = scales[np.arange(nb), pick]
    empty = np.abs(max_scale) < F(1e-15)
    with np.errstate(divide="ignore"):
        iscale = np.where(empty, F(0), F(-128) / np.where(empty, F(1), max_scale))
        d = _fp16(np.where(empty, F(0), F(1) / iscale))
    sc = np.minimum(_rint(iscale[:, None] * scales), 127).astype(np.int8)  # (nb, 16)
    dj = d.astype(F)[:, None] * sc.astype(F)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(_rint(x.reshape(nb, 16, 16) / dj[..., None]), -32, 31) + 32
    L = np.where((dj != 0)[..., None], q, L)
    L = np.where(empty[:, None, None], 0, L).astype(np.uint8).reshape(nb, 2, 4, 32)
    ql = np.concatenate([L[:, :, 0] & 0xF | (L[:, :, 2] & 0xF) << 4,
                         L[:, :, 1] & 0xF | (L[:, :, 3] & 0xF) << 4], axis=2)  # (nb, 2, 64)
    qh = (L[:, :, 0] >> 4) | (L[:, :, 1] >> 4) << 2 | (L[:, :, 2] >> 4) << 4 | (L[:, :, 3] >> 4) << 6
    sc = np.where(empty[:, None], 0, sc).astype(np.int8)
    return np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64), sc.view(np.uint8),
                           d.view(np.uint8).reshape(nb, 2)], axis=1)
