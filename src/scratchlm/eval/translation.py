"""Score an encoder-decoder on (source, reference) pairs: translate, then BLEU/chrF/ROUGE,
or the teacher-forced loss and perplexity of the references.

    scores = score_pairs(model, tokenizer, pairs, metrics=["bleu", "chrf"], beam=5, lang="fr")
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from scratchlm.data.seq2seq import IGNORE_INDEX, collate, encode_sources
from scratchlm.eval import metrics as M
from scratchlm.generate.beam import BeamConfig
from scratchlm.generate.decode import GenerationConfig
from scratchlm.generate.translate import translate
from scratchlm.tokenizers import Tokenizer

METRICS = ("bleu", "chrf", "rouge", "ppl")


def score_pairs(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    pairs: list[tuple[str, str]],
    *,
    metrics: list[str],
    beam: int = 1,
    lang: str | None = None,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
) -> tuple[dict[str, M.MetricResult | dict], list[str]]:
    """Returns ({metric: result}, hypotheses). "ppl" gives {"loss", "perplexity", "tokens"}.
    Translations are at most `max_new_tokens` long (None: the length limit of translate)."""
    sources = [s for s, _ in pairs]
    refs = [r for _, r in pairs]
    out: dict[str, M.MetricResult | dict] = {}
    hyps: list[str] = []
    if any(m != "ppl" for m in metrics):
        bcfg = BeamConfig(num_beams=beam, max_new_tokens=max_new_tokens or 10_000) if beam > 1 else None
        gcfg = GenerationConfig(temperature=0.0, max_new_tokens=max_new_tokens) if max_new_tokens else None
        hyps = translate(model, tokenizer, sources, beam=bcfg, config=gcfg, batch_size=batch_size)
    out.update(M.score_texts(hyps, refs, [m for m in metrics if m != "ppl"], lang=lang))
    if "ppl" in metrics:
        out["ppl"] = reference_loss(model, tokenizer, pairs, batch_size=batch_size)
    return out, hyps


@torch.inference_mode()
def reference_loss(
    model: torch.nn.Module, tokenizer: Tokenizer, pairs: list[tuple[str, str]], *, batch_size: int = 32
) -> dict[str, float]:
    """Mean cross-entropy (nats per target token, <|eos|> included) of the references given
    their sources, with teacher forcing; and its exponential, the perplexity."""
    model.eval()
    device = next(model.parameters()).device
    src = encode_sources(tokenizer, [s for s, _ in pairs], limit=model.config.block_size)
    limit = model.max_context or 10**9
    total, count = 0.0, 0
    for i in range(0, len(pairs), batch_size):
        chunk = range(i, min(i + batch_size, len(pairs)))
        tgts = [tokenizer.encode(pairs[j][1])[: limit - 1] for j in chunk]
        b = {k: v.to(device) for k, v in collate([src[j] for j in chunk], tgts, tokenizer=tokenizer).items()}
        logits = model(b["tgt_in"], memory=model.encode(b["src_ids"], b["src_mask"]))  # (B, T, V)
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), b["labels"].flatten(),
                                       ignore_index=IGNORE_INDEX, reduction="sum"))
        count += int((b["labels"] != IGNORE_INDEX).sum())
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": count}


def validator(tokenizer: Tokenizer, pairs: list[tuple[str, str]], *, beam: int, lang: str | None):
    """For the Trainer: translate `pairs` at each evaluation -> {"val_bleu", "val_chrf"}."""

    def validate(model: torch.nn.Module) -> dict[str, float]:
        scores, _ = score_pairs(model, tokenizer, pairs, metrics=["bleu", "chrf"], beam=beam, lang=lang)
        return {"val_bleu": scores["bleu"].score, "val_chrf": scores["chrf"].score}

    return validate
