"""Invariants of the decoder protocol, for every decoder-only family."""

import pytest
import torch

from scratchlm.errors import ScratchLMError
from tests.conftest import FAMILIES, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_shapes_and_protocol(family):
    model = tiny_model(family).eval()
    x = torch.randint(0, 97, (3, 11))
    logits = model(x)
    assert logits.shape == (3, 11, 97)
    cache = model.init_cache(batch_size=3, max_len=20)
    out, cache2 = model(x, cache=cache)
    assert cache2 is cache and cache.length == 11
    torch.testing.assert_close(out, logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("chunks", [[1] * 12, [5, 1, 1, 5], [12], [3, 4, 5]])
def test_cached_logits_equal_full_recomputation(family, chunks):
    model = tiny_model(family).eval()
    x = torch.randint(0, 97, (2, sum(chunks)))
    full = model(x)
    cache = model.init_cache(batch_size=2, max_len=sum(chunks))
    pieces, at = [], 0
    for n in chunks:
        logits, cache = model(x[:, at : at + n], cache=cache)
        pieces.append(logits)
        at += n
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=0)


def test_gqa_reduces_kv_heads_and_matches_repeated_heads():
    gqa = tiny_model("llama", n_head=4, n_kv_head=2).eval()
    assert gqa.model.layers[0].self_attn.k_proj.weight.shape[0] == 2 * 16
    cache = gqa.init_cache(batch_size=1, max_len=8)
    assert cache.k.shape[2] == 2
    # Equivalent multi-head model: each kv head duplicated for the 2 query heads it serves.
    mha = tiny_model("llama", n_head=4, n_kv_head=4).eval()
    sd = gqa.state_dict()
    for k in list(sd):
        if k.endswith(("k_proj.weight", "v_proj.weight")):
            w = sd[k].view(2, 16, -1)
            sd[k] = w.repeat_interleave(2, dim=0).reshape(64, -1)
    mha.load_state_dict(sd)
    x = torch.randint(0, 97, (2, 9))
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_causality(family):
    model = tiny_model(family).eval()
    x = torch.randint(0, 97, (1, 10))
    y = x.clone()
    y[0, 7] = (y[0, 7] + 1) % 97
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_reorder_selects_rows(family):
    model = tiny_model(family).eval()
    x = torch.randint(0, 97, (3, 6))
    cache = model.init_cache(batch_size=3, max_len=8)
    _, cache = model(x, cache=cache)
    cache.reorder(torch.tensor([2, 2, 0]))
    nxt = torch.randint(0, 97, (3, 1))
    out, _ = model(nxt, cache=cache)
    ref = model(torch.cat([x[[2, 2, 0]], nxt], 1))[:, -1:]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_repeated_reorders_reuse_one_spare_buffer_and_stay_exact(family):
    """Reorders of one batch size alternate between two buffers, copying only the filled
    positions; rows of a different count get new buffers. Decoding stays exact throughout.
    (With autograd on, reorder keeps the graph: test_cache_reorder_selects_rows.)"""
    model = tiny_model(family).eval()
    x = torch.randint(0, 97, (3, 4))
    cache = model.init_cache(batch_size=3, max_len=12)
    _, cache = model(x, cache=cache)
    rows = torch.arange(3)
    buffers = set()
    for step, index in enumerate([[1, 0, 2], [2, 2, 0], [0, 1, 1], [2, 0, 1], [1, 2]]):
        index = torch.tensor(index)
        cache.reorder(index)
        rows = rows[index]
        buffers.add(cache.k.data_ptr())
        nxt = torch.randint(0, 97, (len(index), 1))
        out, cache = model(nxt, cache=cache)
        x = torch.cat([x[index], nxt], 1)
        torch.testing.assert_close(out, model(x)[:, -1:], atol=1e-5, rtol=0, msg=f"step {step}")
    assert len(buffers) == 3  # two for the four 3-row reorders, a new one for 2 rows
    cache = model.init_cache(batch_size=2, max_len=4)
    cache.set_left_padding(torch.tensor([2, 0]))
    assert cache.pad is not None and cache.attention_mask(1) is cache.attention_mask(1)  # once a step
    cache.reorder(torch.tensor([1]))
    assert cache.pad is None  # the padded row left: no mask any more
    cache.set_left_padding(torch.tensor([0]))
    assert cache.pad is None


@pytest.mark.parametrize("family", FAMILIES)
def test_too_long_and_cache_overflow_are_clear_errors(family):
    model = tiny_model(family).eval()
    with pytest.raises(ScratchLMError, match="longer than the context"):
        model(torch.zeros(1, 65, dtype=torch.long))
    cache = model.init_cache(batch_size=1, max_len=4)
    with pytest.raises(ScratchLMError, match="KV cache holds 4"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_presets_build():
    from scratchlm.registry import get_family

    for fam in FAMILIES:
        assert {"tiny", "small"} <= set(get_family(fam).presets)
    m = tiny_model("gpt")
    assert m.lm_head.weight is m.transformer.wte.weight  # tied


@pytest.mark.parametrize("family", [*FAMILIES, "rnn"])
def test_decoding_head_path_matches_and_follows_weight_updates(family):
    """Without autograd, few rows take output_logits' transposed-copy path; it must give the
    same logits as the plain head, and see an in-place update of the (tied) weight."""
    model = tiny_model(family).eval()
    x = torch.randint(0, 97, (2, 9))
    full = model(x)  # autograd on: the plain nn.Linear path
    with torch.no_grad():
        cache = model.init_cache(batch_size=2, max_len=9)
        last, cache = model(x, cache=cache, logits_to_keep=1)
        assert last.shape == (2, 1, 97)
        torch.testing.assert_close(last, full[:, -1:], atol=1e-5, rtol=0)
        model.lm_head.weight.mul_(2.0)
        after = model(x, logits_to_keep=3)
    with torch.no_grad():
        model.lm_head.weight.div_(2.0)
        model.lm_head.weight.mul_(2.0)  # same values again, but a new version
        expected = model.lm_head(model_hidden_last(model, x, 3))
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=0)


def model_hidden_last(model, x, n):
    """The final hidden states of the last n positions (what the head projects)."""
    seen = {}
    handle = model.lm_head.register_forward_pre_hook(lambda m, args: seen.setdefault("h", args[0]))
    try:
        with torch.enable_grad():
            model(x)
    finally:
        handle.remove()
    return seen["h"][:, -n:]


@pytest.mark.parametrize("family", FAMILIES)
def test_training_with_a_frozen_head_after_generating(family):
    """Generating (inference mode) caches output_logits' transposed copy as an inference
    tensor; a later training step with the head frozen (LoRA) must not use that copy, and
    its gradients must be those of the plain head."""
    from scratchlm.generate import GenerationConfig, generate_tokens

    model = tiny_model(family).eval()
    x = torch.randint(0, 97, (2, 9))
    list(generate_tokens(model, x, config=GenerationConfig(max_new_tokens=2, temperature=0)))
    model.lm_head.weight.requires_grad_(False)
    loss = model(x).logsumexp(-1).mean()  # 18 rows: few enough for the decoding path
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    model.lm_head.__dict__.pop("_decode_weight_t", None)
    with torch.no_grad():
        plain = model(x)
    torch.testing.assert_close(model(x).detach(), plain)
    model(x).logsumexp(-1).mean().backward()
    for g, p in zip(grads, [p for p in model.parameters() if p.requires_grad], strict=True):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_left_padded_rows_compute_what_they_compute_alone(family):
    """Prompts of different lengths in one left-padded batch: every decoding step's logits
    are each row's logits alone, through prefill, steps and a reorder."""
    model = tiny_model(family).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 97, (n,), generator=g) for n in (5, 2, 7)]
    steps = torch.randint(1, 97, (3, 4), generator=g)  # fed after the prompts
    T = 7
    pad = torch.tensor([T - len(p) for p in prompts])
    ids = torch.stack([torch.cat([torch.zeros(T - len(p), dtype=torch.long), p]) for p in prompts])
    cache = model.init_cache(batch_size=3, max_len=T + 4)
    cache.set_left_padding(pad)
    first, cache = model(ids, cache=cache, logits_to_keep=1)
    got = [first[:, -1]]
    order = torch.tensor([2, 0, 1])
    for i in range(4):
        if i == 2:  # rows follow their parents, as in beam search
            cache.reorder(order)
        rows = order if i >= 2 else torch.arange(3)
        out, cache = model(steps[rows, i : i + 1], cache=cache)
        got.append(out[:, -1])
    for r in range(3):
        alone = model(torch.cat([prompts[r], steps[r]])[None])[0]  # (len + 4, V)
        n = len(prompts[r])
        want = [alone[n - 1 + i] for i in range(5)]
        for i in range(5):
            row = r if i <= 2 else int((order == r).nonzero())
            torch.testing.assert_close(got[i][row], want[i], atol=1e-5, rtol=0, msg=f"row {r} step {i}")


def test_generate_batch_equals_one_prompt_at_a_time():
    from scratchlm.generate import GenerationConfig, generate, generate_batch
    from scratchlm.tokenizers import train_tokenizer

    tok = train_tokenizer(kind="char", texts=["abcdefghijklmnopqrstuvwxyz .?"])
    for family in FAMILIES:
        model = tiny_model(family, vocab_size=tok.vocab_size).eval()
        prompts = ["the cat sat", "a", "why is the sky so blue?", ""]
        cfg = GenerationConfig(max_new_tokens=12, temperature=0, stop=["?"])
        alone = [generate(model, tok, p, cfg)[0] for p in prompts]
        assert generate_batch(model, tok, prompts, cfg) == alone
        assert any(alone)
