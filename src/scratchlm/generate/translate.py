"""Translation (any source -> target task) with an encoder-decoder, over the one generate and
the one beam search:

    texts = translate(model, tokenizer, ["Click OK."], beam=BeamConfig(num_beams=5))

Sources are batched as training batches them (data/seq2seq.py: tokens plus <|eos|>), sorted
by length into batches, encoded once, and decoded from <|bos|>. The output length is capped
at max_len_a * source_length + max_len_b tokens (fairseq's convention), and by the model's
positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from scratchlm.data.seq2seq import collate, encode_sources
from scratchlm.errors import ScratchLMError
from scratchlm.generate.beam import BeamConfig, beam_search
from scratchlm.generate.decode import GenerationConfig, generate_tokens
from scratchlm.registry import is_encoder_decoder
from scratchlm.tokenizers import Tokenizer


@dataclass
class LengthLimit:
    max_len_a: float = 2.0
    max_len_b: int = 10

    def of(self, src_len: int) -> int:
        return max(1, math.ceil(self.max_len_a * src_len + self.max_len_b))


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


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
    if not is_encoder_decoder(model):
        raise ScratchLMError("this is a decoder-only model; use `scratchlm generate` for it")
    length = length or LengthLimit()
    config = config or GenerationConfig(temperature=0.0)
    model.eval()
    device = next(model.parameters()).device
    src = encode_sources(tokenizer, sources, limit=model.config.block_size, on_long=on_long)
    results: list[list[tuple[list[int], float]]] = [[] for _ in sources]
    special = tokenizer.special_ids
    for idx in _batches([len(s) for s in src], batch_size):
        batch = collate([src[i] for i in idx], tokenizer=tokenizer)
        memory = model.encode(batch["src_ids"].to(device), batch["src_mask"].to(device))
        n_new = length.of(batch["src_ids"].shape[1])  # the longest source, <|eos|> included
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
