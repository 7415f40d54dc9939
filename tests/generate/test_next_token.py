"""`decode.next_token`, the one sampling step that generate_tokens and the server's batching
engine share."""

from __future__ import annotations

import pytest
import torch

from scratchlm.generate import sampling
from scratchlm.generate.decode import GenerationConfig, next_token


def logits(seed: int = 0, B: int = 4, V: int = 50) -> torch.Tensor:
    return torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax():
    x = logits()
    assert torch.equal(next_token(x, config=GenerationConfig(temperature=0)), x.argmax(-1))


def test_seeded_draw_is_the_filtered_softmax_sample():
    x = logits(1)
    cfg = GenerationConfig(temperature=0.7, top_k=10, top_p=0.9, min_p=0.02, seed=5)
    got = next_token(x, config=cfg, generator=torch.Generator().manual_seed(5))
    filtered = sampling.min_p(sampling.top_p(sampling.top_k(x / 0.7, 10), 0.9), 0.02)
    want = sampling.sample(filtered, torch.Generator().manual_seed(5))
    assert torch.equal(got, want)
    # Every draw is among the tokens the filters keep.
    for _ in range(20):
        t = next_token(x, config=cfg)
        assert bool(torch.isfinite(filtered.gather(1, t[:, None])).all())


def test_top_k_1_and_tiny_top_p_are_greedy_at_any_temperature():
    x = logits(2)
    for cfg in (GenerationConfig(temperature=1.5, top_k=1), GenerationConfig(temperature=1.5, top_p=1e-6)):
        assert torch.equal(next_token(x, config=cfg), x.argmax(-1))


def test_repetition_penalty_uses_seen():
    x = torch.tensor([[5.0, 4.0, -1.0]])
    seen = torch.tensor([[True, False, False]])
    cfg = GenerationConfig(temperature=0, repetition_penalty=2.0)
    assert next_token(x, config=cfg).item() == 0  # not applied without `seen`
    assert next_token(x, config=cfg, seen=seen).item() == 1  # 5 / 2 < 4


@pytest.mark.parametrize("shape,k", [((40, 58101), 10), ((3, 1000), 2), ((5, 50), 10), ((2, 4096), 8)])
def test_topk_wide_is_torch_topk(shape, k):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    x[0, -1] = 50.0  # the largest value in the tail past the last whole chunk
    x[-1, :] = float("-inf")  # a row with nothing allowed
    x[-1, 7] = 0.0
    values, index = sampling.topk_wide(x, k)
    want_values, want_index = x.topk(k, dim=-1)
    torch.testing.assert_close(values, want_values)
    assert torch.equal(index[:-1], want_index[:-1])  # the last row: ties at -inf, any order
    assert index[-1, 0] == 7 and torch.equal(x.gather(1, index), values)
