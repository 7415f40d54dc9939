"""Supervised fine-tuning data: instruction and chat files -> token rows with masked labels.

Three formats, one object per line (JSONL) or a JSON array of them, detected per record
(`format: auto`) or forced:

    alpaca             {"instruction": ..., "input": ... (optional), "output": ...}
    chat               {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
    prompt_completion  {"prompt": ..., "completion": ...}

Alpaca records become a two-turn chat (user: instruction, a blank line, input; assistant:
output). Chats are rendered with the model's chat template (Jinja, from tokenizer_config.json's
`chat_template`), or the built-in one for models without it (`tokenizers.chat.
training_template`; `finetune` saves it with the fine-tuned model). Only the assistant turns
are learned: each is found as the text the
template adds between the conversation up to that turn with the generation prompt and the
conversation including the turn, so the learned span is the reply plus the template's
end-of-turn marker (the model learns to stop). Text segments are tokenized one by one, as
`generate --chat` tokenizes a prompt and then generates. prompt/completion records are plain
text with no template: the completion and an <eos> after it are learned.

An example is token ids x (n) and a learned flag per token; a row's labels are
labels[t] = x[t+1] where token t+1 is learned, else -100 (and -100 at the last position).
Rows are either one example each, right-padded (batches of similar lengths with
`group_by_length`), or packed: several examples in one row, each with positions from 0 and a
block-diagonal causal attention mask, so each example sees only itself (and gives the same
logits as alone).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchlm.data import readers
from scratchlm.errors import ScratchLMError
from scratchlm.tokenizers import Tokenizer
from scratchlm.tokenizers.chat import render_chat

FORMATS = ("alpaca", "chat", "prompt_completion")
ROLES = ("system", "user", "assistant")
def chat_segments(
    messages: list[dict[str, str]], *, tokenizer: Tokenizer, template: str | None = None,
) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, learned) pieces: learned = an assistant turn."""
    full = render_chat(messages, tokenizer=tokenizer, template=template)
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render_chat(messages[:i], tokenizer=tokenizer, template=template,
                             add_generation_prompt=True)
        upto = render_chat(messages[: i + 1], tokenizer=tokenizer, template=template)
        if not (upto.startswith(prompt) and full.startswith(upto) and len(prompt) >= pos):
            raise ScratchLMError(
                "the chat template does not render a conversation as a prefix of its "
                "continuation, so assistant turns cannot be located for loss masking"
            )
        pieces += [(full[pos : len(prompt)], False), (full[len(prompt) : len(upto)], True)]
        pos = len(upto)
    pieces.append((full[pos:], False))
    return [(t, learned) for t, learned in pieces if t]


# ----------------------------------------------------------------------------- records
@dataclass
class Example:
    ids: list[int]
    learn: list[bool]  # per token: is it a target (predicted from the tokens before it)?
    where: str = ""  # file:line, for messages

    def __len__(self) -> int:
        return len(self.ids)

    def labels(self) -> list[int]:
        """labels[t] = ids[t+1] if that token is learned, else -100; -100 at the end."""
        out = [i if keep else -100 for i, keep in zip(self.ids[1:], self.learn[1:], strict=True)]
        return [*out, -100]

    @property
    def num_labels(self) -> int:
        return sum(self.learn[1:])


def detect_format(record: dict[str, Any]) -> str | None:
    if "messages" in record:
        return "chat"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    return None


def _text(record: dict[str, Any], key: str, *, optional: bool = False) -> str:
    value = record.get(key, "" if optional else None)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise ValueError(f'"{key}" must be a string')
    return value


def to_messages(record: dict[str, Any], fmt: str) -> list[dict[str, str]]:
    """A chat or Alpaca record as a checked list of {role, content} messages."""
    if fmt == "alpaca":
        instruction, extra = _text(record, "instruction"), _text(record, "input", optional=True)
        output = _text(record, "output")
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    else:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError('"messages" must be a non-empty list')
    out = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise ValueError(f'message {j} must be an object with "role" and "content"')
        if m["role"] not in ROLES:
            raise ValueError(f"message {j} has unknown role {m['role']!r} (roles: {', '.join(ROLES)})")
        if not isinstance(m["content"], str):
            raise ValueError(f'message {j} "content" must be a string')
        if m["role"] == "assistant" and not m["content"].strip():
            raise ValueError(f"message {j} is an empty assistant turn")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("the conversation has no assistant turn to learn")
    return out


def encode_record(
    record: dict[str, Any], *, tokenizer: Tokenizer, fmt: str = "auto",
    template: str | None = None, where: str = "",
) -> Example:
    """One record -> Example. Raises ValueError (with what is wrong) for a bad record."""
    if not isinstance(record, dict):
        raise ValueError("a record must be a JSON object")
    found = detect_format(record)
    if fmt == "auto":
        if found is None:
            raise ValueError('unknown record format: expected "messages", "instruction" + '
                             '"output", or "prompt" + "completion"')
        fmt = found
    elif fmt not in FORMATS:
        raise ScratchLMError(f"unknown SFT format {fmt!r} (formats: {', '.join(FORMATS)})")
    if fmt == "prompt_completion":
        prompt, completion = _text(record, "prompt"), _text(record, "completion")
        if not completion.strip():
            raise ValueError("the completion is empty")
        p_ids, c_ids = tokenizer.encode(prompt), tokenizer.encode(completion)
        ids = [*p_ids, *c_ids, tokenizer.eos_id]
        return Example(ids, [False] * len(p_ids) + [True] * (len(c_ids) + 1), where)
    if fmt == "chat" and "messages" not in record:
        raise ValueError('a chat record needs "messages"')
    ids: list[int] = []
    learn: list[bool] = []
    for text, learned in chat_segments(to_messages(record, fmt), tokenizer=tokenizer,
                                       template=template):
        piece = tokenizer.encode(text)
        ids += piece
        learn += [learned] * len(piece)
    return Example(ids, learn, where)


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, record or None, error) for a JSONL file, a JSON array file, or any
    record file data/readers.py reads (.parquet, .csv, .arrow, a datasets directory,
    compressed or not); for those the number is the row's."""
    p = Path(path)
    if not p.exists():
        raise ScratchLMError(f"SFT data file {p} does not exist")
    src = readers.source_of(p)
    if src.is_text:  # an SFT file named otherwise (.txt, no extension): JSON lines or array
        src = readers.Source(p, "json", src.compression)
    for row in readers.iter_rows(src):
        yield row.number, row.value, row.error


@dataclass
class LoadReport:
    examples: int = 0
    skipped: list[str] = field(default_factory=list)  # "file:line: reason"
    truncated: int = 0
    dropped_long: int = 0  # too long, with truncation "drop" (or nothing learned left)
    tokens: int = 0
    learned: int = 0

    def summary(self) -> str:
        parts = [f"{self.examples:,} examples, {self.tokens:,} tokens ({self.learned:,} learned)"]
        if self.truncated:
            parts.append(f"{self.truncated:,} truncated to fit the context")
        if self.dropped_long:
            parts.append(f"{self.dropped_long:,} dropped as too long")
        if self.skipped:
            parts.append(f"{len(self.skipped):,} skipped as bad (first: {self.skipped[0]})")
        return "; ".join(parts)


def load_examples(
    path: str | os.PathLike, *, tokenizer: Tokenizer, fmt: str = "auto",
    template: str | None = None, max_len: int, truncation: str = "right",
    bad_lines: str = "error",
) -> tuple[list[Example], LoadReport]:
    """Read, check, encode and fit to `max_len` tokens every record of an SFT file.

    Bad records (malformed JSON, unknown format or role, empty assistant turn) stop with
    `file:line: reason` (bad_lines="error") or are skipped and counted ("skip"). Examples
    longer than max_len are cut at the end ("right"), at the start ("left": the latest turns
    are kept), or dropped ("drop"); an example with nothing left to learn is dropped."""
    if truncation not in ("right", "left", "drop"):
        raise ScratchLMError(f"truncation must be right, left or drop, got {truncation!r}")
    if max_len < 2:
        raise ScratchLMError(f"max_len must be at least 2 tokens, got {max_len}")
    report = LoadReport()
    out: list[Example] = []
    for lineno, record, error in iter_records(path):
        where = f"{path}:{lineno}"
        ex = None
        if error is None:
            try:
                ex = encode_record(record, tokenizer=tokenizer, fmt=fmt, template=template,
                                   where=where)
                if ex.num_labels == 0:
                    raise ValueError("nothing to learn (the learned part is empty)")
            except ValueError as e:
                error = str(e)
        if error is not None:
            if bad_lines == "error":
                raise ScratchLMError(f"{where}: {error} (finetune.bad_lines=skip skips bad lines)")
            report.skipped.append(f"{where}: {error}")
            continue
        if len(ex) > max_len:
            if truncation == "drop":
                report.dropped_long += 1
                continue
            keep = slice(0, max_len) if truncation == "right" else slice(len(ex) - max_len, None)
            ex = Example(ex.ids[keep], ex.learn[keep], where)
            report.truncated += 1
            if ex.num_labels == 0:
                report.dropped_long += 1
                continue
        out.append(ex)
        report.tokens += len(ex)
        report.learned += ex.num_labels
    report.examples = len(out)
    if not out:
        raise ScratchLMError(f"{path} has no usable examples ({report.summary()})")
    return out, report


# ----------------------------------------------------------------------------- batches
def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: groups of example indices whose lengths sum to <= capacity."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids -> (B, 1, T, T) bool: query t sees key s iff s <= t in its segment."""
    T = segments.shape[1]
    same = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    return (same & causal)[:, None]


def collate(rows: list[list[Example]], *, pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
    """Rows of examples -> input_ids, labels (B, T), right-padded (labels -100 on padding);
    packed rows also get position_ids (B, T) and attn_mask (B, 1, T, T)."""
    T = max(sum(len(e) for e in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)  # padding: its own segment
    for b, row in enumerate(rows):
        at = 0
        for j, ex in enumerate(row):
            n = len(ex)
            ids[b, at : at + n] = torch.tensor(ex.ids)
            labels[b, at : at + n] = torch.tensor(ex.labels())
            pos[b, at : at + n] = torch.arange(n)
            seg[b, at : at + n] = j
            at += n
    batch = {"input_ids": ids, "labels": labels}
    if packed:
        batch["position_ids"] = pos
        batch["attn_mask"] = block_causal_mask(seg)
    return batch


class SFTData:
    """Batches of SFT examples for the Trainer: `batch(rng)` is a pure function of rng.

    packing: rows of several examples (first-fit decreasing into `block_size` tokens), drawn
    at random. Otherwise one example a row: with group_by_length, a random group of
    `batch_size` examples of neighbouring lengths (little padding); else random examples."""

    def __init__(
        self, examples: list[Example], *, batch_size: int, block_size: int, pad_id: int,
        packing: bool = False, group_by_length: bool = True,
    ) -> None:
        if not examples:
            raise ScratchLMError("no SFT examples")
        too_long = [e.where for e in examples if len(e) > block_size]
        if too_long:
            raise ScratchLMError(f"{too_long[0]}: example longer than the context ({block_size})")
        self.examples = examples
        self.batch_size, self.pad_id, self.packing = batch_size, pad_id, packing
        lengths = [len(e) for e in examples]
        if packing:
            self.rows = [[examples[i] for i in row] for row in pack(lengths, block_size)]
        else:
            self.rows = [[e] for e in examples]
        self.groups: list[list[int]] | None = None
        if not packing and group_by_length:
            order = sorted(range(len(examples)), key=lambda i: (lengths[i], i))
            self.groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def batch(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        if self.groups is not None:
            idx = self.groups[int(rng.integers(len(self.groups)))]
        else:
            idx = rng.integers(0, len(self.rows), size=self.batch_size).tolist()
        return collate([self.rows[i] for i in idx], pad_id=self.pad_id, packed=self.packing)


def split_examples(
    examples: list[Example], *, val_fraction: float, seed: int,
) -> tuple[list[Example], list[Example]]:
    """A fixed random `val_fraction` of the examples (at least one) as validation."""
    if len(examples) < 2:
        raise ScratchLMError("need at least 2 examples to hold some out for validation "
                             "(or pass a separate validation file)")
    n_val = max(1, round(len(examples) * val_fraction))
    perm = np.random.default_rng([seed, 0x5F7]).permutation(len(examples))
    val = set(perm[:n_val].tolist())
    return ([e for i, e in enumerate(examples) if i not in val],
            [e for i, e in enumerate(examples) if i in val])
