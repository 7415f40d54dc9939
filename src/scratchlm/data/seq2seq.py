"""The one sequence-to-sequence batch convention, used by training (data/pairs/batch.py), translate,
the reference loss, `scratchlm attention` and the server:

    src_ids  (B, S) long  source + <|eos|>, right-padded with the pad id
    src_mask (B, S) bool  True at real tokens
    tgt_in   (B, T) long  <|bos|> + target (what the decoder reads)
    labels   (B, T) long  target + <|eos|> (what it must predict), IGNORE_INDEX at padding

    batch = collate(encode_sources(tok, ["Click OK."], limit=256), [tok.encode("Cliquez")], tokenizer=tok)

Sources and targets are token lists without special tokens, as `prepare` stores them; text
is first made one line (`clean`), as `prepare` does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_file
from scratchlm.tokenizers import Tokenizer

IGNORE_INDEX = -100  # labels at padding: ignored by cross_entropy


def clean(text: str) -> str:
    """One line: runs of whitespace (tabs and newlines included) become one space."""
    return " ".join(text.split())


def write_tsv(path: Path, pairs: Iterable[tuple[str, str]]) -> None:
    """Pairs as a TSV file (source<TAB>target a line, each side cleaned), written atomically."""
    with atomic_file(path) as f:
        for src, tgt in pairs:
            f.write(f"{clean(src)}\t{clean(tgt)}\n")


def _pad(seqs: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists: (B, L) long ids and (B, L) bool mask, True at real tokens."""
    L = max(len(s) for s in seqs)
    ids = np.full((len(seqs), L), value, dtype=np.int64)  # (B, L)
    mask = np.zeros((len(seqs), L), dtype=bool)  # (B, L)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = True
    return torch.from_numpy(ids), torch.from_numpy(mask)


def collate(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]] | None = None, *,
            tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
    """A batch in the convention above (tgt_in and labels only when `tgt` is given)."""
    eos = tokenizer.eos_id
    src_ids, src_mask = _pad([[*s, eos] for s in src], tokenizer.pad_id)
    batch = {"src_ids": src_ids, "src_mask": src_mask}
    if tgt is not None:
        batch["tgt_in"], _ = _pad([[tokenizer.bos_id, *t] for t in tgt], tokenizer.pad_id)
        batch["labels"], _ = _pad([[*t, eos] for t in tgt], IGNORE_INDEX)
    return batch


def encode_sources(tokenizer: Tokenizer, texts: Sequence[str], *, limit: int | None = None,
                   on_long: str = "truncate") -> list[list[int]]:
    """Token ids of each (cleaned) source, without <|eos|>. With `limit` (the model's
    positions), a source whose ids + <|eos|> are longer is cut to fit (one warning on stderr
    for all of them) or refused (on_long="refuse")."""
    ids = tokenizer.encode_batch([clean(t) for t in texts])
    if limit is None:
        return ids
    cut = 0
    for i, x in enumerate(ids):
        if len(x) + 1 > limit:
            if on_long == "refuse":
                raise ScratchLMError(f"source {i + 1} is {len(x) + 1} tokens, longer than the model's "
                                     f"{limit} (model.block_size); shorten it")
            ids[i], cut = x[: limit - 1], cut + 1
    if cut:
        print(f"warning: {cut} source(s) longer than {limit} tokens were truncated", file=sys.stderr)
    return ids
