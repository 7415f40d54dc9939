"""Log-likelihood scoring: the log-probability a decoder-only model (gpt, llama, rnn) gives each
token of a text, or of a continuation after a context. It is what lm-eval's loglikelihood
tasks ask for, what the server's `echo` + `logprobs` return, and what `scratchlm evaluate
--metric loglik` prints: one function, so the three give the same numbers.

    scores = scratchlm.score(model, tokenizer, ["The cat sat.", ("Paris is in", " France")])
    scores[1].logprob          # sum of the continuation's token log-probabilities (nats)
    scores[1].is_greedy        # every continuation token was the model's top choice
    scores[1].token_logprobs   # one per continuation token, scores[1].tokens their ids

Tokenization follows lm-eval (`_encode_pair`): trailing spaces of the context move to the
continuation, the pair is encoded whole and split after the context's own tokens, so the
numbers equal lm-eval's with the same tokenizer. A lone text (or a pair with an empty context)
is read after a start-of-document token, <eos> by default: scratchlm's pretraining data
separates documents with it (`start_id=` to change it).

Rows of similar lengths are right-padded into batches: causal attention and RNNs never look
ahead, so the padding after a row changes none of its log-probabilities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from scratchlm.data.sft import iter_records
from scratchlm.errors import ScratchLMError
from scratchlm.registry import is_encoder_decoder
from scratchlm.tokenizers import Tokenizer

Item = str | tuple[str, str]


@dataclass
class Score:
    """The scored tokens of one text or continuation, natural-log probabilities."""

    tokens: list[int]
    token_logprobs: list[float]  # log p(token | every token before it)
    greedy: list[bool]  # whether each token was the model's most likely one
    top: list[list[tuple[int, float]]] = field(default_factory=list)  # top_k (id, logprob) a token

    @property
    def logprob(self) -> float:
        return sum(self.token_logprobs)

    @property
    def is_greedy(self) -> bool:
        return all(self.greedy)


def encode_item(tokenizer: Tokenizer, item: Item, *, start_id: int) -> tuple[list[int], int]:
    """(ids, first): the row the model reads and the index of its first scored token."""
    if isinstance(item, str):
        context, continuation = "", item
    elif (isinstance(item, tuple | list) and len(item) == 2
          and all(isinstance(s, str) for s in item)):
        context, continuation = item
    else:
        raise ScratchLMError(f"cannot score {item!r}: give a text or a (context, continuation) "
                             "pair of strings")
    spaces = len(context) - len(context.rstrip())
    if spaces:  # "Paris is " + "France" -> "Paris is" + " France", as lm-eval does
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    n_context = len(tokenizer.encode(context)) if context else 0
    if n_context == 0:
        return [start_id, *whole], 1
    return whole, n_context


@torch.inference_mode()
def score_ids(
    model: torch.nn.Module, rows: list[list[int]], firsts: list[int], *, batch_size: int = 8,
    top_k: int = 0,
) -> list[Score]:
    """For each row of token ids, the log-probabilities of its tokens from index `first` (>= 1)
    on, each given all the tokens before it; with `top_k`, the k likeliest tokens there too."""
    if is_encoder_decoder(model):
        raise ScratchLMError("log-likelihood scoring is for decoder-only models (gpt, llama, rnn); "
                             "this is an encoder-decoder")
    if batch_size < 1:
        raise ScratchLMError("the scoring batch size must be at least 1")
    context = model.max_context
    for i, (row, first) in enumerate(zip(rows, firsts, strict=True)):
        if not 1 <= first <= len(row):
            raise ValueError(f"row {i}: first scored token {first} outside 1..{len(row)}")
        if context is not None and len(row) > context:
            raise ScratchLMError(f"text {i} is {len(row)} tokens and the model's context is "
                                 f"{context}; shorten it")
    model.eval()
    device = next(model.parameters()).device
    out: list[Score | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # little padding
    for at in range(0, len(order), batch_size):
        chunk = order[at : at + batch_size]
        T = len(rows[chunk[0]])
        ids = torch.zeros(len(chunk), T, dtype=torch.long)  # (B, T) right-padded: never read
        keep = torch.zeros(len(chunk), T, dtype=torch.bool)  # (B, T) positions predicting a scored token
        for b, i in enumerate(chunk):
            ids[b, : len(rows[i])] = torch.tensor(rows[i])
            keep[b, firsts[i] - 1 : len(rows[i]) - 1] = True
        ids, keep = ids.to(device), keep.to(device)
        targets = torch.roll(ids, -1, dims=1)[keep]  # (N,) the token each kept position predicts
        if model.config.family in ("gpt", "llama"):  # logits only where they are needed
            logits = model(ids, logits_mask=keep)  # (N, V)
        else:
            logits = model(ids)[keep]  # (N, V)
        logp = F.log_softmax(logits.float(), dim=-1)  # (N, V)
        chosen = logp.gather(1, targets[:, None])[:, 0]  # (N,)
        greedy = chosen >= logp.max(dim=-1).values  # (N,)
        top = logp.topk(top_k, dim=-1) if top_k else None  # values, indices: (N, k)
        at_row = 0
        for i in chunk:
            n = len(rows[i]) - firsts[i]
            span = slice(at_row, at_row + n)
            at_row += n
            alternatives = ([list(zip(ix, v, strict=True)) for ix, v in
                             zip(top.indices[span].tolist(), top.values[span].tolist(), strict=True)]
                            if top is not None else [])
            out[i] = Score(rows[i][firsts[i] :], chosen[span].tolist(), greedy[span].tolist(),
                           alternatives)
    return out  # type: ignore[return-value]


def score(
    model: torch.nn.Module, tokenizer: Tokenizer, items: list[Item], *, batch_size: int = 8,
    top_k: int = 0, start_id: int | None = None,
) -> list[Score]:
    """One Score per item: a text (every token scored) or a (context, continuation) pair (the
    continuation's tokens scored). See the module docstring for the tokenization."""
    if isinstance(items, str | tuple):
        raise ScratchLMError("score() takes a list of texts or (context, continuation) pairs")
    start = tokenizer.eos_id if start_id is None else start_id
    encoded = [encode_item(tokenizer, item, start_id=start) for item in items]
    return score_ids(model, [r for r, _ in encoded], [f for _, f in encoded],
                     batch_size=batch_size, top_k=top_k)


def read_score_items(path: str | os.PathLike, *, limit: int | None = None) -> list[Item]:
    """The items of a JSONL (or JSON array) file for `evaluate --metric loglik`: records
    {"text": ...} or {"context": ..., "continuation": ...}; a bad one stops with file:line."""
    if not Path(path).is_file():
        raise ScratchLMError(f"{path} does not exist (give a .jsonl file of {{\"text\"}} or "
                             "{\"context\", \"continuation\"} records)")
    items: list[Item] = []
    for lineno, record, error in iter_records(path):
        if limit is not None and len(items) >= limit:
            break
        if error is None:
            if isinstance(record, dict) and isinstance(record.get("text"), str):
                items.append(record["text"])
            elif (isinstance(record, dict) and isinstance(record.get("context"), str)
                  and isinstance(record.get("continuation"), str)):
                items.append((record["context"], record["continuation"]))
            else:
                error = 'expected {"text": STRING} or {"context": STRING, "continuation": STRING}'
        if error is not None:
            raise ScratchLMError(f"{path}:{lineno}: {error}")
    if not items:
        raise ScratchLMError(f"{path} has no records to score")
    return items
