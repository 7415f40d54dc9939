"""The decoding-state contract (models/cache.py `DecodeState`), checked for every registered
family: rows appended, reordered, or given more room decode exactly what they decode alone."""

from __future__ import annotations

import pytest
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.models.cache import DecodeState, KVCache
from scratchlm.registry import family_names, is_encoder_decoder
from tests.conftest import tiny_model

V, T, MAX = 31, 5, 16


def start(model, prompts: torch.Tensor, sources: torch.Tensor | None):
    """A state holding `prompts` (B, T), for an encoder-decoder over `sources` (B, S)."""
    memory = model.encode(sources) if is_encoder_decoder(model) else None
    kw = {"memory": memory} if memory is not None else {}
    state = model.init_cache(batch_size=prompts.shape[0], max_len=MAX, **kw)
    _, state = model(prompts, cache=state)
    return state


def step(model, state, tokens):
    logits, state = model(tokens[:, None], cache=state)  # (B, 1, V)
    return logits[:, -1], state


@pytest.fixture(params=family_names())
def family_model(request):
    torch.manual_seed(0)
    return tiny_model(request.param, vocab_size=V, dropout=0.0).eval()


@torch.no_grad()
def test_every_family_keeps_the_contract(family_model):
    model = family_model
    torch.manual_seed(1)
    prompts = torch.randint(0, V, (3, T))
    sources = torch.randint(0, V, (3, 7)) if is_encoder_decoder(model) else None
    nxt = torch.randint(0, V, (3,))
    alone = [step(model, start(model, prompts[i : i + 1], None if sources is None else sources[i : i + 1]),
                  nxt[i : i + 1])[0] for i in range(3)]

    a = start(model, prompts[:2], None if sources is None else sources[:2])
    b = start(model, prompts[2:], None if sources is None else sources[2:])
    assert isinstance(a, DecodeState)
    assert a.batch_size == 2 and a.length == T
    joined = a.append_rows(b)  # rows joining a batch
    assert joined.batch_size == 3 and joined.length == T
    joined.grow(MAX + 8)  # more room changes nothing computed
    joined.check_room(MAX + 8 - T)
    logits, joined = step(model, joined, nxt)
    assert joined.length == T + 1
    for i in range(3):
        torch.testing.assert_close(logits[i : i + 1], alone[i], rtol=1e-5, atol=1e-5)

    # Rows leaving and reordering (the server's and beam search's reorder).
    again = start(model, prompts, sources).reorder(torch.tensor([2, 0]))
    logits, _ = step(model, again, nxt[[2, 0]])
    torch.testing.assert_close(logits[0:1], alone[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[1:2], alone[0], rtol=1e-5, atol=1e-5)


def test_states_of_different_lengths_or_kinds_do_not_join():
    model = tiny_model("gpt", vocab_size=V).eval()
    with torch.no_grad():
        a = start(model, torch.zeros(1, 3, dtype=torch.long), None)
        b = start(model, torch.zeros(1, 4, dtype=torch.long), None)
        with pytest.raises(ValueError, match="different lengths"):
            a.append_rows(b)
        rnn = tiny_model("rnn", vocab_size=V).eval()
        with pytest.raises(TypeError, match="cannot append rows of RNNState to KVCache"):
            a.append_rows(start(rnn, torch.zeros(1, 3, dtype=torch.long), None))


def test_kv_cache_room_and_skipped_padding():
    cache = KVCache(n_layer=1, batch_size=2, n_kv_head=1, head_dim=4, max_len=8)
    with pytest.raises(ScratchLMError, match="holds 8 positions"):
        cache.check_room(9)
    cache.set_left_padding(torch.tensor([3, 3]), skip=True)  # positions 0..2: masked, not fed
    assert cache.length == 3
    assert not cache.attention_mask(1)[:, 0, 0, :3].any()
    cache.grow(12)
    assert cache.max_len == 12 and cache.length == 3
