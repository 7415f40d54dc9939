"""Pure functions on next-token logits (B, V): each returns new logits, nothing is hidden.

Order used by `decode.next_token`: repetition penalty -> no-repeat n-gram -> temperature ->
top-k -> top-p -> min-p -> sample (beam search applies the first two the same way, so beam 1
equals greedy with them). Filtered-out entries are set to -inf.
"""

from __future__ import annotations

import torch


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty (Keskar et al. 2019): logits of tokens in `seen` (B, V bool) are
    divided by `penalty` when positive and multiplied when negative."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def no_repeat_ngram(logits: torch.Tensor, seqs: list[list[int]], n: int) -> torch.Tensor:
    """Ban, in row i, every token that would complete an n-gram already in `seqs[i]` (that
    row's prompt and output so far): the n-gram blocking of Paulus et al. 2017."""
    if n <= 0:
        return logits
    rows, cols = [], []
    for row, seq in enumerate(seqs):
        if len(seq) < n:
            continue
        prefix = tuple(seq[len(seq) - n + 1 :])  # the last n-1 tokens
        for i in range(len(seq) - n + 1):
            if tuple(seq[i : i + n - 1]) == prefix:
                rows.append(row)
                cols.append(seq[i + n - 1])
    if not rows:
        return logits
    dev = logits.device
    return logits.index_put((torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)),
                            torch.tensor(float("-inf"), dtype=logits.dtype, device=dev))


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2019): keep the smallest set of tokens whose
    probability mass reaches p (always at least the most likely token)."""
    if p >= 1.0:
        return logits
    sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(dim=-1)
    # Mass strictly before each token; a token is kept if that mass is still below p.
    before = probs.cumsum(dim=-1) - probs
    remove_sorted = before >= p
    remove = remove_sorted.scatter(-1, idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Min-p filtering (Nguyen et al. 2024): drop tokens whose probability is below
    p times the most likely token's probability."""
    if p <= 0.0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


def sample(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one token per row from softmax(logits): (B, V) -> (B,)."""
    probs = logits.float().softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
