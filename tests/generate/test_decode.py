import pytest
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.generate import GenerationConfig, generate, generate_tokens, sampling
from scratchlm.tokenizers import train_tokenizer
from tests.conftest import FAMILIES, tiny_model


def _no_cache_greedy(model, ids, n):
    """Reference: recompute the whole sequence for every new token."""
    logits_seen = []
    for _ in range(n):
        logits = model(ids)[:, -1]
        logits_seen.append(logits)
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    return ids, logits_seen


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_equals_full_recomputation(family):
    model = tiny_model(family).eval()
    prompt = torch.randint(0, 97, (2, 7))
    cfg = GenerationConfig(max_new_tokens=20, temperature=0.0)
    toks = torch.stack(list(generate_tokens(model, prompt, config=cfg)), 1)
    ref, ref_logits = _no_cache_greedy(model, prompt, 20)
    assert torch.equal(toks, ref[:, 7:])
    # logits of the cached path
    cache = model.init_cache(batch_size=2, max_len=27)
    logits, cache = model(prompt, cache=cache)
    cached = [logits[:, -1]]
    for t in range(19):
        logits, cache = model(toks[:, t : t + 1], cache=cache)
        cached.append(logits[:, -1])
    torch.testing.assert_close(torch.stack(cached), torch.stack(ref_logits), atol=1e-5, rtol=0)


def test_seeded_sampling_is_reproducible_and_rows_differ():
    model = tiny_model("llama").eval()
    prompt = torch.zeros(4, 3, dtype=torch.long)
    cfg = GenerationConfig(max_new_tokens=15, temperature=1.0, seed=123)
    a = torch.stack(list(generate_tokens(model, prompt, config=cfg)), 1)
    b = torch.stack(list(generate_tokens(model, prompt, config=cfg)), 1)
    assert torch.equal(a, b)
    assert len({tuple(r) for r in a.tolist()}) > 1


def test_eos_stops_rows_and_pads():
    model = tiny_model("gpt").eval()
    prompt = torch.randint(0, 97, (1, 4))
    first = next(generate_tokens(model, prompt, config=GenerationConfig(temperature=0)))
    toks = list(generate_tokens(model, prompt, config=GenerationConfig(temperature=0),
                                eos_id=int(first)))
    assert len(toks) == 1


def test_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(sampling.top_k(logits, 2)).tolist() == [[True, False, False, True]]
    probs = logits.softmax(-1)  # [0.087, 0.644, 0.237, 0.032]
    kept = ~torch.isinf(sampling.top_p(logits, 0.7))
    assert kept.tolist() == [[False, True, True, False]]
    assert (~torch.isinf(sampling.top_p(logits, 0.5))).sum() == 1
    kept = ~torch.isinf(sampling.min_p(logits, 0.3))
    assert kept.tolist() == (probs >= 0.3 * probs.max()).tolist()
    seen = torch.tensor([[False, True, False, True]])
    pen = sampling.repetition_penalty(torch.tensor([[1.0, 3.0, 2.0, -1.0]]), seen, 2.0)
    assert pen.tolist() == [[1.0, 1.5, 2.0, -2.0]]


def test_generate_text_stop_strings_and_streaming():
    tok = train_tokenizer(kind="char", texts=["abcdefgh \n"])
    model = tiny_model("gpt", vocab_size=tok.vocab_size).eval()
    cfg = GenerationConfig(max_new_tokens=40, temperature=1.0, seed=0, num_samples=3)
    free = generate(model, tok, "ab", cfg)
    assert len(free) == 3
    # Stop at a string that appears in the free-running text: output ends right before it.
    stop = free[0][5:7]
    pieces = []
    out = generate(model, tok, "ab", GenerationConfig(max_new_tokens=40, temperature=1.0, seed=0,
                   num_samples=3, stop=[stop]), on_text=lambda r, t: pieces.append((r, t)))
    assert out[0] == free[0][: free[0].find(stop)]
    assert "".join(t for r, t in pieces if r == 0) == out[0]


def test_prompt_longer_than_context_is_an_error():
    model = tiny_model("llama").eval()
    with pytest.raises(ScratchLMError, match="shorten the prompt"):
        list(generate_tokens(model, torch.zeros(1, 64, dtype=torch.long),
                             config=GenerationConfig()))


def test_bad_generation_config():
    with pytest.raises(ScratchLMError, match="top_p"):
        GenerationConfig(top_p=0)
