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
    Example,
    collate,
    detect_format,
    encode_record,
    iter_records,
    to_messages,
)
from scratchlm.errors import ScratchLMError
from scratchlm.eval import metrics as M
from scratchlm.generate.beam import BeamConfig, beam_search
from scratchlm.generate.decode import GenerationConfig, generate_batch, stop_at, stop_checker
from scratchlm.tokenizers import Tokenizer
from scratchlm.tokenizers.chat import chat_prompt, chat_template_for


@dataclass
class Item:
    prompt: str  # exactly what the model reads
    reference: str
    where: str  # file:line
    example: Example  # the record as fine-tuning encodes it (for the loss)


def _item(record: object, *, tokenizer: Tokenizer, where: str) -> Item:
    """Checked as fine-tuning checks a record (`encode_record`: formats, roles, an empty
    completion or assistant turn), then split into prompt and reference."""
    if not isinstance(record, dict) or detect_format(record) is None:
        raise ValueError('expected "messages", "instruction" + "output", or "prompt" + "completion"')
    example = encode_record(record, tokenizer=tokenizer, where=where)
    if "prompt" in record and "completion" in record and "messages" not in record:
        return Item(record["prompt"], record["completion"].strip(), where, example)
    messages = to_messages(record, detect_format(record))
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    # Asked as `scratchlm chat` asks it (the model's template; plain text without one).
    prompt = chat_prompt(messages[:last], tokenizer=tokenizer, template=chat_template_for(tokenizer))
    return Item(prompt, messages[last]["content"].strip(), where, example)


def read_items(path: str | os.PathLike, *, tokenizer: Tokenizer, limit: int | None = None) -> list[Item]:
    """The first `limit` records of an SFT file as (prompt, reference) items; a bad record
    stops with `file:line: reason`."""
    items: list[Item] = []
    for lineno, record, error in iter_records(path):
        if limit is not None and len(items) >= limit:
            break
        where = f"{path}:{lineno}"
        if error is None:
            try:
                items.append(_item(record, tokenizer=tokenizer, where=where))
            except ValueError as e:
                error = str(e)
        if error is not None:
            raise ScratchLMError(f"{where}: {error}")
    if not items:
        raise ScratchLMError(f"{path} has no records to score")
    return items


def check_fit(model: torch.nn.Module, tokenizer: Tokenizer, items: list[Item]) -> None:
    """Every prompt leaves room for at least one new token in the context (checked before
    decoding anything, so a long run does not stop at its last batch)."""
    context = model.max_context
    for it in items if context else []:
        n = len(tokenizer.encode(it.prompt))
        if n >= context:
            raise ScratchLMError(f"{it.where}: the prompt is {n} tokens and the model's context "
                                 f"{context}; shorten it (or leave the record out)")


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
                               eos_id=tokenizer.eos_id, ends=stop_checker(tokenizer, config.stop))[0][0]
            text = tokenizer.decode([t for t in best.tokens if t != tokenizer.eos_id])
            at = stop_at(text, config.stop)
            outputs[i] = (text if at is None else text[:at]).strip()
            bar.update(1)
    bar.close()
    return outputs


@torch.inference_mode()
def completion_loss(
    model: torch.nn.Module, tokenizer: Tokenizer, items: list[Item], *, batch_size: int = 8,
) -> dict[str, float]:
    """Mean cross-entropy (nats per learned token) of the items' learned spans (the
    completions with their <eos>, or the assistant turns with the template's end-of-turn),
    each record alone; records longer than the context lose their start."""
    model.eval()
    device = next(model.parameters()).device
    block = model.config.block_size
    examples = [Example(it.example.ids[-block:], it.example.learn[-block:], it.where) for it in items]
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
