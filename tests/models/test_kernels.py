"""scratchlm's int8 kernels (models/kernels): the packed products equal their definitions,
over every tile size and padding case, and the build is cached and all-or-nothing."""

from __future__ import annotations

import pytest
import torch

from scratchlm.models import kernels
from scratchlm.models.quant import group_int8

pytestmark = pytest.mark.skipif(kernels.library() is None, reason=f"scratchlm's int8 kernels: {kernels.why_not()}")


def _int8_of(w):
    scale = w.abs().amax(1) / 127
    return (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


def _int8(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    return *_int8_of(w), torch.randn(n, generator=g)


# (n, k): one block, blocks and a group tail, k not a multiple of 4, GPT-2's mlp proj
@pytest.mark.parametrize("n,k", [(5, 3), (16, 64), (70, 50), (131, 97), (768, 3072)])
@pytest.mark.parametrize("bias", [True, False])
def test_w8a8_is_row_quantized_activations_times_int8_weights(n, k, bias):
    q, scale, b = _int8(n, k)
    packed = kernels.PackedInt8(q, scale, b if bias else None, kind="w8a8")
    for m in (1, 2, 6, 7, 13, 16, 40, 45):  # every tile height, several passes, AMX tiles from 16
        x = torch.randn(m, k) * torch.linspace(0.1, 3, k)  # uneven channels
        sx = x.abs().amax(1, keepdim=True) / 127
        xq = torch.round(x * (1 / sx))  # the kernel multiplies by the inverse scale
        want = (xq.double() @ q.double().T) * sx.double() * scale.double() + (b.double() if bias else 0)
        got = packed(x).double()
        # exact integer dot products; only the fp32 scaling differs
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4 * want.abs().max().item())


# k: under one group, a ragged last group, whole groups (SmolLM2's 576 = 18 x 32)
@pytest.mark.parametrize("n,k", [(5, 3), (70, 50), (131, 97), (64, 576)])
@pytest.mark.parametrize("bias", [True, False])
def test_w8a8g_is_group_quantized_activations_times_group_quantized_weights(n, k, bias):
    g = torch.Generator().manual_seed(2)
    w, b = torch.randn(n, k, generator=g) * torch.linspace(0.1, 2, k), torch.randn(n, generator=g)
    q, s = group_int8(w)
    kp = s.shape[1] * 32  # within half a step of each weight, a step being its group's scale
    err = (torch.nn.functional.pad(w - q.float() * s.repeat_interleave(32, 1)[:, :k], (0, kp - k))).view(n, -1, 32)
    assert (err.abs() <= s[..., None] / 2 + 1e-6).all()
    packed = kernels.PackedInt8(q, s, b if bias else None, kind="w8a8g")
    s16 = s.half().double()  # the kernel keeps the weights' scales in fp16
    for m in (1, 2, 3, 4, 7):  # every tile height, and several passes
        x = torch.randn(m, k, generator=g) * torch.linspace(0.1, 3, k)
        x[:, k // 2] = 300.0  # an outlier channel: only its own group's scale is large
        xg = torch.nn.functional.pad(x, (0, kp - k)).view(m, kp // 32, 32)
        sx = xg.abs().amax(2, keepdim=True) / 127
        xq = torch.round(xg * (1 / sx))  # the kernel multiplies by the inverse scale
        wq = torch.nn.functional.pad(q.double(), (0, kp - k)).view(n, kp // 32, 32)
        want = torch.einsum("mgk,ngk,mg,ng->mn", xq.double(), wq, sx[..., 0].double(), s16)
        want = want + (b.double() if bias else 0)
        got = packed(x).double()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4 * want.abs().max().item())
        # the small channels keep their precision: nearer the exact product than per-row w8a8
        if k >= 256:  # many groups, one of them with the outlier
            exact = x.double() @ w.double().T + (b.double() if bias else 0)
            rq, rs = _int8_of(w)
            per_row = kernels.PackedInt8(rq, rs, b if bias else None, kind="w8a8")(x).double()
            assert (got - exact).norm() < 0.5 * (per_row - exact).norm()


def test_w8a8g_wants_group_scales():
    q, scale, _ = _int8(8, 64)
    with pytest.raises(ValueError, match=r"takes \(8, 2\) group scales"):
        kernels.PackedInt8(q, scale, None, kind="w8a8g")


@pytest.mark.parametrize("n,k", [(5, 3), (70, 50), (131, 97), (768, 3072)])
def test_w8a32_is_fp32_activations_times_dequantized_weights(n, k):
    q, scale, b = _int8(n, k, seed=1)
    packed = kernels.PackedInt8(q, scale, b, kind="w8a32")
    for m in (1, 5, 6, 8, 13):
        x = torch.randn(m, k)
        want = x.double() @ (q.double() * scale.double()[:, None]).T + b.double()
        torch.testing.assert_close(packed(x).double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_zero_rows_and_threads():
    q, scale, b = _int8(40, 32)
    packed = kernels.PackedInt8(q, scale, b, kind="w8a8")
    x = torch.zeros(3, 32)  # amax 0: scale 1, every product 0, bias only
    torch.testing.assert_close(packed(x), b.expand(3, -1))
    threads = torch.get_num_threads()
    x = torch.randn(9, 32)
    try:
        torch.set_num_threads(1)
        one = packed(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, packed(x))  # rows are split over threads, never summed across them


def test_build_is_cached_and_leaves_no_temporary(tmp_path):
    first = kernels.build(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert kernels.build(tmp_path) == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_disabled_or_unavailable_says_why(monkeypatch):
    monkeypatch.setenv("SCRATCHLM_KERNELS", "0")
    kernels.library.cache_clear()
    try:
        assert kernels.library() is None and kernels.why_not() == "SCRATCHLM_KERNELS=0"
        with pytest.raises(ValueError, match="not available here: SCRATCHLM_KERNELS=0"):
            kernels.PackedInt8(*_int8(4, 4)[:2], None, kind="w8a8")
    finally:
        monkeypatch.delenv("SCRATCHLM_KERNELS")
        kernels.library.cache_clear()
    assert kernels.library() is not None
