import itertools

import pytest
import torch

from scratchlm.generate import GenerationConfig, generate_tokens
from scratchlm.generate.beam import BeamConfig, beam_search
from tests.conftest import FAMILIES, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_1_equals_greedy(family):
    model = tiny_model(family).eval()
    prompt = torch.randint(0, 97, (3, 5))
    greedy = torch.stack(list(generate_tokens(model, prompt, config=GenerationConfig(
        max_new_tokens=12, temperature=0))), 1)
    hyps = beam_search(model, prompt, config=BeamConfig(num_beams=1, max_new_tokens=12), eos_id=None)
    assert [h[0].tokens for h in hyps] == greedy.tolist()


def _brute_force(model, prompt, *, vocab, length, eos, lp):
    """Score every sequence of up to `length` tokens that is eos-terminated or full length."""
    best = None
    for n in range(1, length + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if eos in seq[:-1] or (n < length and seq[-1] != eos):
                continue
            ids = torch.tensor([list(prompt) + list(seq)])
            logp = model(ids)[0, len(prompt) - 1 : -1].log_softmax(-1)
            total = float(logp[torch.arange(n), torch.tensor(seq)].sum())
            score = total / n ** lp
            if best is None or score > best[0]:
                best = (score, list(seq))
    return best


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lp", [0.0, 1.0])
def test_beam_matches_brute_force(family, lp):
    vocab, length, eos = 4, 3, 2
    torch.manual_seed(1)
    model = tiny_model(family, vocab_size=vocab, init_std=1.0).eval()  # peaky distributions
    prompt = [1, 3, 0]
    with torch.no_grad():
        score, seq = _brute_force(model, prompt, vocab=vocab, length=length, eos=eos, lp=lp)
    hyps = beam_search(model, torch.tensor([prompt]), eos_id=eos, config=BeamConfig(
        num_beams=vocab ** length, max_new_tokens=length, length_penalty=lp, early_stopping="never"))
    assert hyps[0][0].tokens == seq
    assert hyps[0][0].score == pytest.approx(score, abs=1e-4)


def test_batched_equals_one_by_one_and_nbest():
    model = tiny_model("llama").eval()
    prompts = torch.randint(0, 97, (3, 6))
    cfg = BeamConfig(num_beams=4, max_new_tokens=8, num_return_sequences=3)
    together = beam_search(model, prompts, config=cfg, eos_id=5)
    for i in range(3):
        alone = beam_search(model, prompts[i : i + 1], config=cfg, eos_id=5)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[i]]
    scores = [h.score for h in together[0]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)


def test_no_repeat_ngram():
    model = tiny_model("gpt", vocab_size=5, init_std=1.0).eval()
    hyps = beam_search(model, torch.tensor([[1, 2]]), eos_id=None,
                       config=BeamConfig(num_beams=3, max_new_tokens=10, no_repeat_ngram_size=2))
    seq = [1, 2] + hyps[0][0].tokens
    bigrams = list(zip(seq, seq[1:], strict=False))
    assert len(bigrams) == len(set(bigrams))



class _Markov(torch.nn.Module):
    """A decoder whose next-token distribution depends only on the last token (a table)."""

    max_context = None

    class State:
        def reorder(self, index):
            pass

    def __init__(self, probs):
        super().__init__()
        self.table = torch.tensor(probs).log()  # (V, V): row = last token

    def init_cache(self, batch_size, max_len):
        return self.State()

    def forward(self, ids, cache=None, logits_to_keep=None):
        logits = self.table[ids]  # (B, T, V)
        return logits if cache is None else (logits, cache)


@pytest.mark.parametrize("early", [True, False, "never"])
def test_an_ending_outside_the_top_k_does_not_finish(early):
    """After token 0 the best move is 1 (p .6), then eos (p .9): greedy gives [1, eos]. eos
    right away (p .3) ranks second, outside the top K = 1, so it must not finish a hypothesis
    (if it did, early stopping would return [eos])."""
    eos = 2
    model = _Markov([[0.0, 0.6, 0.3, 0.1],
                     [0.05, 0.0, 0.9, 0.05],
                     [0.25, 0.25, 0.25, 0.25],
                     [0.3, 0.3, 0.3, 0.1]])
    hyps = beam_search(model, torch.tensor([[3, 0]]), eos_id=eos, config=BeamConfig(
        num_beams=1, max_new_tokens=6, early_stopping=early))
    assert hyps[0][0].tokens == [1, eos]

def test_early_stopping_is_checked():
    with pytest.raises(Exception, match="early_stopping"):
        BeamConfig(early_stopping="sometimes")
