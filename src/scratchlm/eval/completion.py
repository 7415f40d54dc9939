"""Score a decoder-only model on prompt -> reference records (the SFT files of data/sft.py):
generate from each prompt, greedy, and compare with BLEU/chrF/ROUGE; or the teacher-forced
loss and perplexity of the references, as fine-tuning's validation loss counts it.

    items = read_items("data/debian-sft/test.jsonl", tokenizer=tok, limit=100)
    scores, outputs = score_completions(model, tok, items, metrics=["rouge"], max_new_tokens=48)

A prompt/completion record is scored as fine-tuning learned it: the prompt is plain text and
the completion (stripped) is the reference. A chat or Alpaca record is the conversation up to
its last assistant turn, rendered with the model's chat template and generation prompt; that
turn is the reference.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from scratchlm.data.sft import (
    collate,
    detect_format,
    iter_records,
    load_examples,
    render_chat,
    to_messages,
)
from scratchlm.errors import ScratchLMError
from scratchlm.eval import metrics as M
from scratchlm.generate.beam import BeamConfig, beam_search
from scratchlm.generate.decode import GenerationConfig, generate_batch
from scratchlm.tokenizers import Tokenizer


@dataclass
class Item:
    prompt: str  # exactly what the model reads
    reference: str
    where: str  # file:line


def _item(record: object, *, tokenizer: Tokenizer, where: str) -> Item:
    fmt = detect_format(record) if isinstance(record, dict) else None
    if fmt is None:
        raise ValueError('expected "messages", "instruction" + "output", or "prompt" + "completion"')
    if fmt == "prompt_completion":
        prompt, completion = record["prompt"], record["completion"]
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise ValueError('"prompt" and "completion" must be strings')
        return Item(prompt, completion.strip(), where)
    messages = to_messages(record, fmt)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = render_chat(messages[:last], tokenizer=tokenizer, add_generation_prompt=True)
    return Item(prompt, messages[last]["content"].strip(), where)


def read_items(path: str | os.PathLike, *, tokenizer: Tokenizer, limit: int | None = None) -> list[Item]:
    """The first `limit` records of an SFT file as (prompt, reference) items; a bad record
    stops with `file:line: reason`."""
    items: list[Item] = []
    for lineno, record, error in iter_records(path):
        where = f"{path}:{lineno}"
        if error is None:
            try:
                items.append(_item(record, tokenizer=tokenizer, where=where))
            except ValueError as e:
                error = str(e)
        if error is not None:
            raise ScratchLMError(f"{where}: {error}")
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise ScratchLMError(f"{path} has no records to score")
    return items


def _cut(text: str, stop: list[str]) -> str:
    """The text up to its first stop string."""
    for s in stop:
        text = text.split(s, 1)[0]
    return text


def complete(
    model: torch.nn.Module, tokenizer: Tokenizer, items: list[Item], config: GenerationConfig,
    *, beam: BeamConfig | None = None, batch_size: int = 8, show_progress: bool = False,
) -> list[str]:
    """One output per item (stripped): by `config` (greedy at temperature 0), prompts of
    similar lengths decoded `batch_size` at a time (left-padded); or by beam search when
    `beam` is given, one prompt at a time (cut at config.stop)."""
    device = next(model.parameters()).device
    outputs: list[str] = [""] * len(items)
    bar = tqdm(total=len(items), desc="generate", unit="prompt", disable=not show_progress)
    if beam is None:
        lengths = [len(tokenizer.encode(it.prompt)) for it in items]
        order = sorted(range(len(items)), key=lambda i: lengths[i])  # little padding
        for at in range(0, len(order), batch_size):
            chunk = order[at : at + batch_size]
            texts = generate_batch(model, tokenizer, [items[i].prompt for i in chunk], config)
            for i, text in zip(chunk, texts, strict=True):
                outputs[i] = text.strip()
            bar.update(len(chunk))
    else:
        for i, it in enumerate(items):
            ids = tokenizer.encode(it.prompt) or [tokenizer.eos_id]
            best = beam_search(model, torch.tensor([ids], device=device), config=beam,
                               eos_id=tokenizer.eos_id)[0][0]
            text = tokenizer.decode([t for t in best.tokens if t != tokenizer.eos_id])
            outputs[i] = _cut(text, config.stop).strip()
            bar.update(1)
    bar.close()
    return outputs


@torch.inference_mode()
def completion_loss(
    model: torch.nn.Module, tokenizer: Tokenizer, path: str | os.PathLike, *,
    limit: int | None = None, batch_size: int = 8,
) -> dict[str, float]:
    """Mean cross-entropy (nats per learned token) of the learned spans of an SFT file (the
    completions with their <eos>, or the assistant turns with the template's end-of-turn),
    each record alone; records longer than the context lose their start."""
    model.eval()
    device = next(model.parameters()).device
    examples, _ = load_examples(path, tokenizer=tokenizer, max_len=model.config.block_size,
                                truncation="left")
    examples = examples[:limit]
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))  # little padding
    for i in range(0, len(order), batch_size):
        batch = collate([[examples[j]] for j in order[i : i + batch_size]], pad_id=tokenizer.pad_id,
                        packed=False)
        labels = batch["labels"].to(device)
        keep = labels != -100  # (B, T)
        if model.config.family in ("gpt", "llama"):  # logits only where a label is
            logits = model(batch["input_ids"].to(device), logits_mask=keep)  # (N, V)
        else:
            logits = model(batch["input_ids"].to(device))[keep]
        total += float(F.cross_entropy(logits.float(), labels[keep], reduction="sum"))
        count += int(keep.sum())
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": count}


def score_completions(
    model: torch.nn.Module, tokenizer: Tokenizer, items: list[Item], *, metrics: list[str],
    config: GenerationConfig, beam: BeamConfig | None = None, lang: str | None = None,
    batch_size: int = 8, show_progress: bool = False,
) -> tuple[dict[str, M.MetricResult], list[str]]:
    """({metric: result}, outputs) for the text metrics bleu, chrf and rouge."""
    outputs = complete(model, tokenizer, items, config, beam=beam, batch_size=batch_size,
                       show_progress=show_progress)
    out = M.score_texts(outputs, [it.reference for it in items], metrics, lang=lang)
    return out, outputs
