"""Translation (any source -> target task) with an encoder-decoder, over the one generate and
the one beam search:

    texts = translate(model, tokenizer, ["Click OK."], beam=BeamConfig(num_beams=5))

Sources are encoded as their tokens plus <|eos|> (as `scratchlm prepare` stores them), sorted
by length into batches, encoded once, and decoded from <|bos|>. The output length is capped
at max_len_a * source_length + max_len_b tokens (fairseq's convention), and by the model's
positions.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from scratchlm.errors import ScratchLMError
from scratchlm.generate.beam import BeamConfig, beam_search
from scratchlm.generate.decode import GenerationConfig, generate_tokens
from scratchlm.tokenizers import Tokenizer


@dataclass
class LengthLimit:
    max_len_a: float = 2.0
    max_len_b: int = 10

    def of(self, src_len: int) -> int:
        return max(1, math.ceil(self.max_len_a * src_len + self.max_len_b))


def encode_sources(
    model: torch.nn.Module, tokenizer: Tokenizer, sources: list[str], *, on_long: str = "truncate"
) -> list[list[int]]:
    """Token ids (+ <|eos|>) of each source; over-long ones are truncated (with a warning on
    stderr) or refused (on_long="refuse")."""
    limit = model.config.block_size
    out, cut = [], 0
    for i, text in enumerate(sources):
        ids = tokenizer.encode(text) + [tokenizer.eos_id]
        if len(ids) > limit:
            if on_long == "refuse":
                raise ScratchLMError(f"source {i + 1} is {len(ids)} tokens, longer than the model's "
                                     f"{limit} (model.block_size); shorten it")
            ids, cut = ids[: limit - 1] + [tokenizer.eos_id], cut + 1
        out.append(ids)
    if cut:
        print(f"warning: {cut} source(s) longer than {limit} tokens were truncated", file=sys.stderr)
    return out


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    S = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), S), pad_id, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
    lengths = torch.tensor([len(s) for s in seqs])
    mask = torch.arange(S)[None, :] < lengths[:, None]  # (B, S) True at real tokens
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def translate_nbest(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    sources: list[str],
    *,
    config: GenerationConfig | None = None,
    beam: BeamConfig | None = None,
    batch_size: int = 32,
    length: LengthLimit | None = None,
    on_long: str = "truncate",
) -> list[list[tuple[list[int], float]]]:
    """Per source, a list of (target token ids without specials, score), best first: one
    entry for greedy/sampling (score nan), beam.num_return_sequences for beam search."""
    if not getattr(model, "is_encoder_decoder", False):
        raise ScratchLMError("this is a decoder-only model; use `scratchlm generate` for it")
    length = length or LengthLimit()
    config = config or GenerationConfig(temperature=0.0)
    model.eval()
    device = next(model.parameters()).device
    src = encode_sources(model, tokenizer, sources, on_long=on_long)
    results: list[list[tuple[list[int], float]]] = [[] for _ in sources]
    special = tokenizer.special_ids
    for idx in _batches([len(s) for s in src], batch_size):
        seqs = [src[i] for i in idx]
        ids, mask = _pad(seqs, tokenizer.pad_id, device)
        memory = model.encode(ids, mask)
        n_new = length.of(max(len(s) for s in seqs))
        start = torch.full((len(idx), 1), tokenizer.bos_id, dtype=torch.long, device=device)
        if beam is not None:
            bcfg = BeamConfig(**{**beam.__dict__, "max_new_tokens": min(beam.max_new_tokens, n_new)})
            hyps = beam_search(model, start, config=bcfg, eos_id=tokenizer.eos_id, memory=memory)
            for i, row in zip(idx, hyps, strict=True):
                results[i] = [([t for t in h.tokens if t not in special], h.score) for h in row]
            continue
        gcfg = GenerationConfig(**{**config.__dict__, "max_new_tokens": min(config.max_new_tokens, n_new),
                                   "stop": []})
        steps = list(generate_tokens(model, start, config=gcfg, eos_id=tokenizer.eos_id,
                                     pad_id=tokenizer.pad_id, memory=memory))
        out = torch.stack(steps, 1).tolist()  # (B, steps)
        for i, row in zip(idx, out, strict=True):
            toks = []
            for t in row:
                if t == tokenizer.eos_id:
                    break
                if t not in special:
                    toks.append(t)
            results[i] = [(toks, float("nan"))]
    return results


def translate(
    model: torch.nn.Module, tokenizer: Tokenizer, sources: list[str], **kwargs
) -> list[str]:
    """The best translation of each source (see translate_nbest for the options)."""
    return [tokenizer.decode(nbest[0][0]) for nbest in translate_nbest(model, tokenizer, sources, **kwargs)]
