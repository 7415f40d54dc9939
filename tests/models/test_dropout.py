"""Dropout with a hashed mask (kernels.dropout, dropout.c; layers.Dropout): the distribution
of nn.Dropout, reproducible from torch's generator, and a backward that uses the same mask."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scratchlm.models import kernels
from scratchlm.models.layers import Dropout

pytestmark = pytest.mark.skipif(kernels.library() is None, reason=f"scratchlm's kernels: {kernels.why_not()}")


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drop_rate_and_scale(p, dtype):
    x = (torch.rand(1 << 20) + 0.5).to(dtype)  # no zeros: a zero output is a dropped element
    y = kernels.dropout(x, p)
    kept = y != 0
    n = x.numel()
    assert abs((~kept).sum().item() - p * n) < 6 * math.sqrt(n * p * (1 - p))
    assert torch.equal(y[kept], (x[kept].float() * (1 / (1 - p))).to(dtype))  # bf16: x * scale in fp32, rounded


def test_masks_look_independent():
    ones = torch.ones(1 << 20)
    masks = torch.stack([(kernels.dropout(ones, 0.5) != 0).float() for _ in range(4)])
    off = torch.corrcoef(masks) - torch.eye(4)
    assert off.abs().max() < 0.01  # calls draw different seeds: 6 sigma of 1/sqrt(n) is 0.006
    neighbours = torch.corrcoef(torch.stack([masks[0, :-1], masks[0, 1:]]))[0, 1]
    assert abs(neighbours) < 0.01
    blocks = 1 - masks[0].view(256, -1).mean(1)  # every stretch of 4,096 elements drops ~half
    assert (blocks - 0.5).abs().max() < 6 * math.sqrt(0.25 / 4096)


def test_seeded_by_torch_generator():
    x = torch.randn(3, 50, 70)
    torch.manual_seed(7)
    a, b = kernels.dropout(x, 0.2), kernels.dropout(x, 0.2)
    torch.manual_seed(7)
    assert torch.equal(kernels.dropout(x, 0.2), a)
    assert not torch.equal(a, b)


def test_backward_uses_the_forward_mask():
    x = torch.randn(4, 33, 65, requires_grad=True)
    y = kernels.dropout(x, 0.3)
    g = torch.randn_like(y)
    y.backward(g)
    kept = y.detach() != 0
    assert torch.equal(x.grad, torch.where(kept, g * (1 / 0.7), torch.zeros(())))
    # through a non-contiguous input too
    xt = torch.randn(65, 33, requires_grad=True)
    yt = kernels.dropout(xt.t(), 0.3)
    yt.sum().backward()
    assert torch.equal(xt.grad.t(), (yt.detach() != 0) * (1 / 0.7))


def test_module_where_it_applies():
    x = torch.randn(8, 40)
    m = Dropout(0.25)
    assert torch.equal(m.eval()(x), x)  # eval: identity
    m.train()
    torch.manual_seed(1)
    ours = m(x)
    torch.manual_seed(1)
    assert torch.equal(ours, kernels.dropout(x, 0.25))  # the hashed kernel, not torch's
    torch.manual_seed(1)
    theirs = Dropout(0.25, inplace=True)(x.clone())
    torch.manual_seed(1)
    assert torch.equal(theirs, F.dropout(x, 0.25))  # inplace: torch's
    assert torch.equal(Dropout(0.0)(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))  # p = 1: torch's, all dropped
    assert not torch.equal(Dropout(0.5)(x.double()), x.double())  # fp64: torch's, still dropout


def test_double_backward_goes_through_the_mask():
    x = torch.randn(6, 30, dtype=torch.float32, requires_grad=True)
    y = kernels.dropout(x, 0.3)
    (g,) = torch.autograd.grad((y**2).sum(), x, create_graph=True)  # 2 y * mask * s
    (h,) = torch.autograd.grad(g.sum(), x)  # 2 * (mask * s)^2
    kept = y.detach() != 0
    torch.testing.assert_close(h, kept * 2 * (1 / 0.7) ** 2)


def test_probing_the_cpu_does_not_move_the_rng():
    from scratchlm.hardware import probe_bf16_speedup

    torch.manual_seed(3)
    want = torch.rand(4)
    torch.manual_seed(3)
    probe_bf16_speedup(repeats=1)
    assert torch.equal(torch.rand(4), want)
