"""Log-probabilities in OpenAI's response shapes, from what eval/score.py computes for a prompt
and what the engine records for the tokens it samples ((token, logprob, [(id, logprob)])).

Completions (what lm-eval's `local-completions` reads: `token_logprobs[ctxlen:-1]`, with
`top_logprobs` to tell whether each token was the greedy one):

    {"tokens": ["R", "O", ...], "token_logprobs": [null, -2.3, ...],
     "top_logprobs": [null, {"O": -2.3}, ...], "text_offset": [0, 1, ...]}

An echoed prompt comes first: its first token has no log-probability (null), as OpenAI's.
A generated <eos> is listed (its text is empty), so the list has one entry a sampled token.
Chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}], "refusal": null}`
for the reply's tokens (no <eos>). `bytes` are the bytes the token stands for; a token that
is part of a character (byte-level BPE, <0xNN> tokens) is written `bytes:\\xNN...` in `token`
and the `tokens` list, as OpenAI writes it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from scratchlm.eval.score import Score
from scratchlm.tokenizers import Tokenizer

Sampled = list[tuple[int, float, list[tuple[int, float]]]]


@functools.cache
def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet backwards: printable character -> the byte it stands for."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    chars, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return {c: b for b, c in chars.items()}


def token_bytes(tok: Tokenizer, t: int) -> bytes:
    """The bytes token t stands for (a special token: its own text)."""
    piece = tok.hf.id_to_token(t)
    if piece is None or t in tok.special_ids or t in tok.hf.get_added_tokens_decoder():
        return tok.decode([t], skip_special_tokens=False).encode("utf-8")
    if tok.kind == "bpe" and all(c in _byte_of_char() for c in piece):
        return bytes(_byte_of_char()[c] for c in piece)
    if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
        return bytes([int(piece[3:5], 16)])
    return tok.decode([t], skip_special_tokens=False).encode("utf-8")


def token_text(tok: Tokenizer, t: int) -> str:
    b = token_bytes(tok, t)
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:  # a piece of a character
        return "bytes:" + "".join(f"\\x{x:02x}" for x in b)


def prefix_lengths(tok: Tokenizer, ids: list[int], start: int = 0) -> list[int]:
    """Characters of text before each token from `start` on: len(decode(ids[:i])) (decoding
    pieces one by one would be wrong where a character spans several byte tokens)."""
    out: list[int] = []
    for at in range(start, len(ids), 256):  # bounded memory for long prompts
        prefixes = [ids[:i] for i in range(at, min(at + 256, len(ids)))]
        out += [len(t) for t in tok.hf.decode_batch(prefixes, skip_special_tokens=True)]
    return out


def _top(tok: Tokenizer, alternatives: list[tuple[int, float]]) -> dict[str, float]:
    return {token_text(tok, t): lp for t, lp in alternatives}


def sampled_logprobs(tok: Tokenizer, sampled: Sampled, *, before: Sequence[int] = (),
                     base: int = 0) -> dict:
    """A completion's `logprobs` lists for `sampled` tokens that follow `before` (the tokens
    the choice sampled earlier: a streamed chunk's), its text starting at `base` characters
    (after an echoed prompt). Chunks' lists, joined, are the whole choice's."""
    ids = [*before, *(t for t, _, _ in sampled)]
    return {"tokens": [token_text(tok, t) for t, _, _ in sampled],
            "token_logprobs": [lp for _, lp, _ in sampled],
            "top_logprobs": [_top(tok, a) for _, _, a in sampled],
            "text_offset": [base + o for o in prefix_lengths(tok, ids, start=len(before))]}


def completion_logprobs(
    tok: Tokenizer, text: str, sampled: Sampled | None, *,
    echoed: tuple[str | None, list[int], Score] | None,
) -> tuple[str, dict | None]:
    """(the choice's text, its `logprobs` object): with `echoed` (prompt text or None for
    token ids, prompt ids, the prompt's Score) the prompt comes first, in text and lists."""
    if echoed is None and sampled is None:
        return text, None
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                            "text_offset": []}
    base = 0
    if echoed is not None:
        prompt_text, prompt_ids, score = echoed
        shown = prompt_text if prompt_text is not None else tok.decode(prompt_ids)
        text, base = shown + text, len(shown)
        out["tokens"] += [token_text(tok, t) for t in prompt_ids]
        out["token_logprobs"] += [None, *score.token_logprobs]
        out["top_logprobs"] += [None, *[_top(tok, a) for a in (score.top or [[]] * len(score.tokens))]]
        out["text_offset"] += prefix_lengths(tok, prompt_ids)
    if sampled:
        for key, values in sampled_logprobs(tok, sampled, base=base).items():
            out[key] += values
    return text, out


def chat_logprobs(tok: Tokenizer, sampled: Sampled | None) -> dict:
    def entry(t: int, lp: float) -> dict:
        return {"token": token_text(tok, t), "logprob": lp, "bytes": list(token_bytes(tok, t))}

    content = [{**entry(t, lp), "top_logprobs": [entry(a, v) for a, v in top]}
               for t, lp, top in sampled or [] if t != tok.eos_id]
    return {"content": content, "refusal": None}
