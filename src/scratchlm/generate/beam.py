"""Batched beam search over the decoder protocol (one implementation for every family).

    hyps = beam_search(model, input_ids, config=BeamConfig(num_beams=5), eos_id=tok.eos_id)
    best_tokens = hyps[0][0].tokens          # batch row 0, best hypothesis

All B x K live beams run as one batch. After each step the decoding state is permuted with
`cache.reorder(index)` so every row follows its parent beam; the state object (KV cache here,
RNN state for recurrent families) is the only thing beam search needs from a model.

Scores are sums of token log-probabilities; finished hypotheses are ranked by
score / length ** length_penalty (Wu et al. 2016 use a similar normalisation; this is the
Hugging Face / fairseq convention, with length counting generated tokens incl. eos).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from scratchlm.errors import ScratchLMError
from scratchlm.generate import sampling
from scratchlm.generate.decode import init_cache, max_new_tokens_for


@dataclass
class BeamConfig:
    num_beams: int = 5
    max_new_tokens: int = 100
    length_penalty: float = 1.0  # >1 favours longer outputs, <1 shorter; 0: raw log-prob
    num_return_sequences: int = 1  # n-best list size (<= num_beams)
    # When a row stops (Hugging Face's convention): True, as soon as num_beams hypotheses have
    # finished; False, once the best live beam, normalised at its current length, cannot beat
    # the worst kept hypothesis (a heuristic); "never", only when no live beam can beat it at
    # any length up to the limit (exact, slower).
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0  # 0: off
    repetition_penalty: float = 1.0  # 1: off (as in sampling: on the logits, before log-softmax)

    def __post_init__(self) -> None:
        if self.repetition_penalty <= 0:
            raise ScratchLMError("repetition_penalty must be > 0")
        if self.no_repeat_ngram_size < 0:
            raise ScratchLMError("no_repeat_ngram_size must be >= 0 (0: off)")
        if self.num_beams < 1:
            raise ScratchLMError("num_beams must be at least 1")
        if not 1 <= self.num_return_sequences <= self.num_beams:
            raise ScratchLMError("num_return_sequences must be between 1 and num_beams")
        if self.max_new_tokens < 1:
            raise ScratchLMError("max_new_tokens must be at least 1")
        if self.early_stopping not in (True, False, "never"):
            raise ScratchLMError(f"early_stopping must be true, false or 'never', "
                                 f"not {self.early_stopping!r}")


@dataclass
class Hypothesis:
    tokens: list[int]  # generated tokens (eos included when the hypothesis finished)
    score: float  # length-normalised score used for ranking
    logprob: float  # sum of token log-probabilities


class _Finished:
    """The best `k` finished hypotheses of one batch row."""

    def __init__(self, k: int, length_penalty: float) -> None:
        self.k, self.lp = k, length_penalty
        self.hyps: list[Hypothesis] = []

    def norm(self, logprob: float, length: int) -> float:
        return logprob / (max(length, 1) ** self.lp)

    def add(self, tokens: list[int], logprob: float) -> None:
        self.hyps.append(Hypothesis(tokens, self.norm(logprob, len(tokens)), logprob))
        self.hyps.sort(key=lambda h: h.score, reverse=True)
        del self.hyps[self.k :]

    def is_done(self, best_live_logprob: float, length: int, max_length: int,
                early: bool | str) -> bool:
        if len(self.hyps) < self.k:
            return False
        if early is True:
            return True
        # Can a live beam still beat the worst kept hypothesis? Its log-prob only decreases;
        # its length grows up to max_length. With lp > 0 a longer length divides a negative
        # log-prob by more, so the best it can reach is at max_length ("never"); with
        # lp <= 0, now. early=False judges at the current length, as Hugging Face does.
        best_length = max_length if (self.lp > 0 and early == "never") else length
        return self.norm(best_live_logprob, best_length) <= self.hyps[-1].score


@torch.inference_mode()
def beam_search(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    *,
    config: BeamConfig,
    eos_id: int | None,
    memory=None,
    ends: Callable[[list[int]], bool] | None = None,
) -> list[list[Hypothesis]]:
    """Beam search continuing each row of `input_ids` (B, T); returns, per row, the
    `num_return_sequences` best hypotheses, best first. For an encoder-decoder pass
    memory=model.encode(src) and input_ids = <|bos|> per row. `ends(tokens)` says a
    hypothesis is over without eos (a stop string in its text: `decode.stop_checker`); it
    finishes as at eos, and the caller cuts its text at the stop string."""
    B, T = input_ids.shape
    K = config.num_beams
    n_new = max_new_tokens_for(model, T, config.max_new_tokens)
    device = input_ids.device
    cache = init_cache(model, batch_size=B, max_len=T + n_new, memory=memory)
    logits, cache = model(input_ids, cache=cache, logits_to_keep=1)  # (B, 1, V)
    expand = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,)
    cache.reorder(expand)
    logits = logits[:, -1].float()[expand]  # (B*K, V)
    V = logits.shape[-1]
    # Only beam 0 of each row is live at the start (the K copies are identical).
    beam_scores = torch.full((B, K), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    seqs: list[list[int]] = [[] for _ in range(B * K)]
    prompts = input_ids.tolist()
    finished = [_Finished(K, config.length_penalty) for _ in range(B)]
    done = [False] * B

    for step in range(n_new):
        # The 2K best candidates of a row (enough to refill K beams) are among the 2K best
        # tokens of each of its beams, as a beam adds one score to all its tokens: choose per
        # beam, then among K x 2K, not in one top-k over K x V scores (that top-k and the
        # K x V sum took 22% of a Marian beam-5 step on 8 sources).
        n = min(2 * K, V)
        lp_top, tok_top = _top_logprobs(logits, prompts, seqs, K, n, config)  # (B*K, n)
        cand = (beam_scores.view(B * K, 1) + lp_top).view(B, K * n)
        top_scores, pick = cand.topk(n, dim=-1)  # (B, n)
        top_tokens = tok_top.view(B, K * n).gather(1, pick)
        top_scores, top_beams, top_tokens = top_scores.tolist(), (pick // n).tolist(), top_tokens.tolist()
        next_scores = torch.full((B, K), float("-inf"), device=device)
        next_tokens = torch.full((B * K,), eos_id if eos_id is not None else 0, dtype=torch.long)
        parents = torch.arange(B * K)  # finished rows just keep their beams (masked later)
        new_seqs: list[list[int]] = [list(s) for s in seqs]
        last = step == n_new - 1
        for b in range(B):
            if done[b]:
                continue
            filled = 0
            for rank, (score, beam, token) in enumerate(zip(top_scores[b], top_beams[b], top_tokens[b],
                                                            strict=True)):
                if score == float("-inf"):
                    break
                parent = b * K + beam
                tokens = seqs[parent] + [token]
                if (eos_id is not None and token == eos_id) or (ends is not None and ends(tokens)):
                    # An ending counts only if it is among the K best candidates: the extra K
                    # are there to refill live beams, not to finish weak hypotheses early.
                    if rank < K:
                        finished[b].add(tokens, score)
                    continue
                if last:
                    finished[b].add(tokens, score)  # out of length: unfinished hypotheses count
                    filled += 1
                else:
                    row = b * K + filled
                    next_scores[b, filled] = score
                    next_tokens[row] = token
                    parents[row] = parent
                    new_seqs[row] = tokens
                    filled += 1
                if filled == K:
                    break
            best_live = float(next_scores[b].max()) if not last else float("-inf")
            if last or finished[b].is_done(best_live, step + 1, n_new, config.early_stopping):
                done[b] = True
        if all(done):
            break
        beam_scores = next_scores
        seqs = new_seqs
        cache.reorder(parents.to(device))
        logits, cache = model(next_tokens.to(device)[:, None], cache=cache)  # (B*K, 1, V)
        logits = logits[:, -1].float()
    return [f.hyps[: config.num_return_sequences] for f in finished]


def _top_logprobs(logits: torch.Tensor, prompts: list[list[int]], seqs: list[list[int]], K: int, n: int,
                  config: BeamConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Each beam's n best next tokens (B*K, n) and their log-probabilities, after the
    repetition penalty and n-gram blocking that `decode.next_token` applies (so beam 1 equals
    greedy with them); without them, in one pass over the logits (`sampling.top_logprobs`)."""
    if config.repetition_penalty == 1.0 and config.no_repeat_ngram_size == 0:
        return sampling.top_logprobs(logits, n)
    context = [prompts[row // K] + s for row, s in enumerate(seqs)]  # prompt + beam tokens
    if config.repetition_penalty != 1.0:
        seen = torch.zeros_like(logits, dtype=torch.bool)
        for row, ctx in enumerate(context):
            seen[row, ctx] = True
        logits = sampling.repetition_penalty(logits, seen, config.repetition_penalty)
    return sampling.topk_wide(sampling.no_repeat_ngram(logits.log_softmax(-1), context, config.no_repeat_ngram_size), n)
