"""Encoder-decoder families: the decoder protocol with a source, masks, state reorder, one
generate and one beam search, and learning a small task through the one Trainer."""

import copy

import numpy as np
import pytest
import torch

from scratchlm.config import run_config_from_dict
from scratchlm.generate.beam import BeamConfig, beam_search
from scratchlm.generate.decode import GenerationConfig, generate_tokens
from scratchlm.hardware import capabilities
from scratchlm.models.quant import apply_precision, choose_precision
from scratchlm.registry import build_model
from scratchlm.tokenizers.tokenizer import train_tokenizer
from scratchlm.train.seq2seq import Seq2SeqLoss, teacher_forcing_ratio
from scratchlm.train.trainer import Trainer

VARIANTS = {
    "rnn-none-gru": ("seq2seq_rnn", {"attention": "none", "cell": "gru"}),
    "rnn-bahdanau": ("seq2seq_rnn", {"attention": "bahdanau"}),
    "rnn-luong_dot": ("seq2seq_rnn", {"attention": "luong_dot"}),
    "rnn-luong_general-nofeed": ("seq2seq_rnn", {"attention": "luong_general", "input_feeding": False}),
    "rnn-luong_concat-gru-uni": ("seq2seq_rnn", {"attention": "luong_concat", "cell": "gru",
                                                 "bidirectional": False, "n_layer": 2}),
    "transformer": ("seq2seq_transformer", {}),
    "transformer-postnorm-learned": ("seq2seq_transformer", {"pre_norm": False, "positions": "learned",
                                                             "share_embeddings": False}),
}
V = 40
BOS, EOS, PAD = 1, 2, 0


def build(name: str, **over):
    family, extra = VARIANTS[name]
    torch.manual_seed(0)
    values = {"family": family, "preset": "tiny", "vocab_size": V, **extra, **over}
    return build_model(run_config_from_dict({"model": values}).model)


def padded_sources(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    ids = torch.randint(4, V, (len(lengths), S), generator=g)
    mask = torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~mask, PAD), mask


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_decoding_equals_teacher_forced_pass(name):
    model = build(name).eval()
    src, mask = padded_sources([7, 4, 6])
    tgt = torch.randint(4, V, (3, 8))
    memory = model.encode(src, mask)
    full = model(tgt, memory=memory)  # (B, T, V)
    assert full.shape == (3, 8, V)
    cache = model.init_cache(batch_size=3, max_len=8, memory=memory)
    pieces = []
    for a, b in [(0, 1), (1, 4), (4, 5), (5, 8)]:
        logits, cache = model(tgt[:, a:b], cache=cache)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_padding_does_not_change_real_positions(name):
    """A source padded to a longer batch gives the same outputs as alone, unpadded."""
    model = build(name).eval()
    src, mask = padded_sources([5, 9])
    tgt = torch.randint(4, V, (2, 6))
    batched = model(tgt, memory=model.encode(src, mask))
    alone = model(tgt[:1], memory=model.encode(src[:1, :5], mask[:1, :5]))
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=0)
    # And the padding tokens' values do not matter.
    other = src.clone()
    other[0, 5:] = 7
    torch.testing.assert_close(model(tgt, memory=model.encode(other, mask)), batched, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["rnn-bahdanau", "rnn-none-gru", "rnn-luong_dot", "transformer"])
def test_state_reorder_selects_rows(name):
    model = build(name).eval()
    src, mask = padded_sources([6, 3, 5])
    tgt = torch.randint(4, V, (3, 4))
    memory = model.encode(src, mask)
    cache = model.init_cache(batch_size=3, max_len=5, memory=memory)
    _, cache = model(tgt, cache=cache)
    index = torch.tensor([2, 0, 0, 1])
    cache.reorder(index)
    nxt = torch.randint(4, V, (4, 1))
    got, _ = model(nxt, cache=cache)
    # Recompute each selected row from scratch.
    for r, i in enumerate(index.tolist()):
        full = model(torch.cat([tgt[i : i + 1], nxt[r : r + 1]], 1),
                     memory=model.encode(src[i : i + 1, : int(mask[i].sum())]))
        torch.testing.assert_close(got[r, -1], full[0, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["rnn-bahdanau", "rnn-luong_general-nofeed", "transformer"])
def test_beam1_is_greedy_and_batched_equals_single(name):
    model = build(name).eval()
    src, mask = padded_sources([6, 3, 5], seed=3)
    start = torch.full((3, 1), BOS)
    cfg = GenerationConfig(max_new_tokens=7, temperature=0)
    greedy = torch.stack(list(generate_tokens(model, start, config=cfg, eos_id=None,
                                              memory=model.encode(src, mask))), 1)
    beams = beam_search(model, start, config=BeamConfig(num_beams=1, max_new_tokens=7), eos_id=None,
                        memory=model.encode(src, mask))
    assert [b[0].tokens for b in beams] == greedy.tolist()
    five = beam_search(model, start, config=BeamConfig(num_beams=4, max_new_tokens=6), eos_id=EOS,
                       memory=model.encode(src, mask))
    for i in range(3):
        n = int(mask[i].sum())
        one = beam_search(model, start[:1], config=BeamConfig(num_beams=4, max_new_tokens=6),
                          eos_id=EOS, memory=model.encode(src[i : i + 1, :n]))
        assert one[0][0].tokens == five[i][0].tokens
        assert abs(one[0][0].score - five[i][0].score) < 1e-4


def test_beam_finds_brute_force_best():
    """On a 4-token vocabulary and 3 steps, beam search with enough beams finds the best
    sequence that exhaustive enumeration finds (raw log-prob, no length penalty)."""
    torch.manual_seed(1)
    model = build_model(run_config_from_dict({"model": {
        "family": "seq2seq_transformer", "preset": "tiny", "vocab_size": 4}}).model).eval()
    src = torch.tensor([[3, 1, 2]])
    memory = model.encode(src)
    best, best_lp = None, -float("inf")
    import itertools
    for seq in itertools.product(range(4), repeat=3):
        ids = torch.tensor([[BOS, *seq[:-1]]])
        with torch.no_grad():
            lp = model(ids, memory=memory).log_softmax(-1)[0, torch.arange(3), torch.tensor(seq)].sum()
        if float(lp) > best_lp:
            best, best_lp = list(seq), float(lp)
    hyps = beam_search(model, torch.tensor([[BOS]]), config=BeamConfig(
        num_beams=16, max_new_tokens=3, length_penalty=0.0), eos_id=None, memory=memory)
    assert hyps[0][0].tokens == best
    assert abs(hyps[0][0].logprob - best_lp) < 1e-4


def test_teacher_forcing_schedule():
    cfg = run_config_from_dict({"train": {"max_steps": 100, "teacher_forcing": 1.0,
                                          "teacher_forcing_end": 0.5}}).train
    assert teacher_forcing_ratio(0, cfg) == 1.0
    assert teacher_forcing_ratio(50, cfg) == pytest.approx(0.75)
    assert teacher_forcing_ratio(100, cfg) == pytest.approx(0.5)


def test_scheduled_sampling_mixes_only_real_positions():
    model = build("transformer").train()
    cfg = run_config_from_dict({"train": {"teacher_forcing": 0.0}}).train
    loss = Seq2SeqLoss(cfg)
    tgt_in = torch.tensor([[BOS, 5, 6, 7, PAD], [BOS, 8, PAD, PAD, PAD]])
    labels = torch.tensor([[5, 6, 7, EOS, -100], [8, EOS, -100, -100, -100]])
    src, mask = padded_sources([4, 4])
    mixed = loss.mix_predictions(model, model.encode(src, mask), tgt_in, labels)
    assert (mixed[:, 0] == BOS).all()
    assert (mixed[labels == -100] == PAD).all()  # padding untouched
    with torch.no_grad():
        pred = model(tgt_in, memory=model.encode(src, mask)).argmax(-1)
    assert mixed[0, 1:4].tolist() == pred[0, :3].tolist()  # ratio 0: every real input is predicted


# ---------------------------------------------------------------------------- learning
SYMBOLS = "abcdefghij"


def reverse_batches(tok, rng_lengths=(3, 7)):
    ids = {c: tok.encode(c)[0] for c in SYMBOLS}

    def batches(split, rng: np.random.Generator):
        B = 32
        lens = rng.integers(rng_lengths[0], rng_lengths[1] + 1, size=B)
        seqs = [[ids[SYMBOLS[j]] for j in rng.integers(0, len(SYMBOLS), size=n)] for n in lens]
        S = max(lens) + 1
        src = torch.full((B, S), tok.pad_id)
        tgt_in = torch.full((B, S), tok.pad_id)
        labels = torch.full((B, S), -100)
        for r, s in enumerate(seqs):
            src[r, : len(s) + 1] = torch.tensor([*s, tok.eos_id])
            rev = s[::-1]
            tgt_in[r, : len(s) + 1] = torch.tensor([tok.bos_id, *rev])
            labels[r, : len(s) + 1] = torch.tensor([*rev, tok.eos_id])
        return {"src_ids": src, "src_mask": src != tok.pad_id, "tgt_in": tgt_in, "labels": labels}

    return batches


@pytest.mark.parametrize("name,steps", [("rnn-bahdanau", 300), ("rnn-luong_general-nofeed", 500),
                                        ("transformer", 500)])
def test_learns_to_reverse(name, steps, tmp_path):
    """Each family learns to reverse 3-7 symbol strings to >= 95% exact match (greedy)."""
    tok = train_tokenizer(kind="char", texts=[SYMBOLS])
    family, extra = VARIANTS[name]
    size = {"d_model": 64, "n_head": 4} if family == "seq2seq_transformer" else {"d_model": 64}
    cfg = run_config_from_dict({
        "model": {"family": family, "preset": "tiny", "vocab_size": tok.vocab_size, **extra,
                  **size, "n_layer": 2 if family == "seq2seq_transformer" else 1},
        "train": {"max_steps": steps, "lr": 3e-3, "warmup_steps": 20, "eval_every": steps,
                  "eval_batches": 1, "save_every": steps, "log_every": 100, "device": "cpu",
                  "weight_decay": 0.0},
    })
    torch.manual_seed(0)
    model = build_model(cfg.model)
    batches = reverse_batches(tok)
    Trainer(model=model, config=cfg, tokenizer=tok, batches=batches, out_dir=tmp_path,
            loss_fn=Seq2SeqLoss(cfg.train), show_progress=False).fit()
    model.eval()
    test = batches("test", np.random.default_rng(12345))

    def reversed_exactly(model) -> int:
        memory = model.encode(test["src_ids"], test["src_mask"])
        start = torch.full((32, 1), tok.bos_id)
        out = torch.stack(list(generate_tokens(model, start, config=GenerationConfig(
            max_new_tokens=9, temperature=0), eos_id=tok.eos_id, pad_id=tok.pad_id, memory=memory)), 1)
        correct = 0
        for r in range(32):
            want = test["labels"][r][test["labels"][r] != -100].tolist()  # reversed + eos
            correct += out[r, : len(want)].tolist() == want
        return correct

    correct = reversed_exactly(model)
    assert correct / 32 >= 0.95, f"{name}: {correct}/32 exact"
    if family == "seq2seq_transformer" and capabilities().fast_int8:  # and in int8, as it translates
        for quantize in ("int8", "int8-dynamic"):
            q = apply_precision(copy.deepcopy(model), choose_precision(quantize=quantize))
            assert reversed_exactly(q) >= correct - 1, f"{quantize}: {reversed_exactly(q)}/32, fp32 {correct}/32"


@pytest.mark.parametrize("name", ["rnn-bahdanau", "transformer"])
def test_reorder_within_each_source_keeps_the_source_tensors(name, monkeypatch):
    """Beam search reorders rows among the beams of one source: the per-source tensors (cross
    K/V, encoder memory, mask) are not copied then, and every row still decodes its source."""
    from scratchlm.models.cache import SourceRows

    model = build(name).eval()
    src, mask = padded_sources([6, 3, 5], seed=5)
    memory = model.encode(src, mask)
    cache = model.init_cache(batch_size=3, max_len=6, memory=memory)
    tgt = torch.randint(4, V, (3, 2))
    _, cache = model(tgt, cache=cache)
    source = (lambda c: c.cross_k) if name == "transformer" else (lambda c: c.memory)
    cache.reorder(torch.tensor([0, 0, 1, 1, 2, 2]))  # expand: copied
    expanded = source(cache)
    assert expanded.shape[1 if name == "transformer" else 0] == 6
    cache.reorder(torch.tensor([1, 0, 2, 3, 5, 4]))  # within each source: not copied
    assert source(cache) is expanded
    nxt = torch.randint(4, V, (6, 1))
    got, _ = model(nxt, cache=cache)
    for r, i in enumerate([0, 0, 1, 1, 2, 2]):
        full = model(torch.cat([tgt[i : i + 1], nxt[r : r + 1]], 1),
                     memory=model.encode(src[i : i + 1, : int(mask[i].sum())]))
        torch.testing.assert_close(got[r, -1], full[0, -1], atol=1e-5, rtol=0)
    # Beam search gives the same hypotheses as when every reorder copies everything.
    start = torch.full((3, 1), BOS)
    cfg = BeamConfig(num_beams=4, max_new_tokens=6)
    fast = beam_search(model, start, config=cfg, eos_id=EOS, memory=model.encode(src, mask))
    monkeypatch.setattr(SourceRows, "moved", lambda self, index: True)
    slow = beam_search(model, start, config=cfg, eos_id=EOS, memory=model.encode(src, mask))
    assert [[h.tokens for h in row] for row in fast] == [[h.tokens for h in row] for row in slow]
    assert [[h.score for h in row] for row in fast] == [[h.score for h in row] for row in slow]
