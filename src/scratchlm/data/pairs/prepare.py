"""Preparing pairs: `prepare_pairs` trains (or loads) ONE tokenizer for both sides, encodes
every split and writes a pairs data directory:

    meta.json                  kind "pairs", dtype, vocab size, counts and max lengths per split
    tokenizer/                 the tokenizer (trained on the train split of both sides)
    {split}.src.bin, .tgt.bin  flat token ids of every sentence, no special tokens
    {split}.src.idx.npy, ...   int64 offsets (n + 1): sentence i is bin[idx[i] : idx[i + 1]]
    val.tsv, test.tsv          the raw pairs, so BLEU scores against untruncated references

(Directories prepared before the split naming was one call the val split "valid"; batch.py
reads both.)
"""

from __future__ import annotations

import itertools
import os
from array import array
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from scratchlm.data.pairs.read import (
    LONG_POLICIES,
    Pair,
    PairSet,
    PairSource,
    SplitStream,
    _check_policy,
    split_streams,
    warn,
)
from scratchlm.data.pretrain import tokenizer_for
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_dir, read_json, write_json
from scratchlm.tokenizers import Tokenizer

CHUNK_PAIRS = 4096  # encode this many sentences at a time


def _pair_texts(train: SplitStream) -> Iterator[str]:
    """Both sides of the train pairs, in chunks, for training a tokenizer."""
    for chunk in _chunks(train.pairs()):
        yield "\n".join(x for pair in chunk for x in pair)


def _chunks(pairs: Iterator[Pair]) -> Iterator[list[Pair]]:
    while chunk := list(itertools.islice(pairs, CHUNK_PAIRS)):
        yield chunk


class _SplitWriter:
    """Encodes one split chunk by chunk into {split}.src/.tgt.bin (+ .idx.npy) and, for val
    and test, {split}.tsv: only a chunk of pairs and two lengths a pair are held."""

    def __init__(self, tmp: Path, split: str, dtype: np.dtype, *, max_len: int | None,
                 on_long: str) -> None:
        self.tmp, self.split, self.dtype = tmp, split, dtype
        self.max_len, self.on_long = max_len, on_long
        self.limit = None if max_len is None else max_len - 1  # one token for <|eos|> / <|bos|>
        self.lengths = {"src": array("q"), "tgt": array("q")}
        self.files = ExitStack()  # the writer's files stay open across chunks; close() closes them
        self.bins = {side: self.files.enter_context(open(tmp / f"{split}.{side}.bin", "wb"))  # noqa: SIM115
                     for side in ("src", "tgt")}
        self.tsv = (self.files.enter_context(open(tmp / f"{split}.tsv", "w", encoding="utf-8"))  # noqa: SIM115
                    if split != "train" else None)
        self.stats = {"truncated": 0, "skipped_long": 0}
        self.seen = 0

    def add(self, tok: Tokenizer, chunk: list[Pair]) -> None:
        enc = {"src": tok.encode_batch([s for s, _ in chunk]), "tgt": tok.encode_batch([t for _, t in chunk])}
        kept: dict[str, list[list[int]]] = {"src": [], "tgt": []}
        limit = self.limit
        for i, (pair, s, t) in enumerate(zip(chunk, enc["src"], enc["tgt"], strict=True)):
            if limit is not None and (len(s) > limit or len(t) > limit):
                if self.on_long == "refuse":
                    side, n = ("source", len(s)) if len(s) > limit else ("target", len(t))
                    raise ScratchLMError(
                        f"pair {self.seen + i + 1} of the {self.split} split ({pair[0][:40]!r}...): "
                        f"its {side} has {n} tokens, over --max-len {self.max_len} minus 1 for "
                        f"<|eos|>; raise --max-len or use --on-long truncate or skip")
                if self.on_long == "skip":
                    self.stats["skipped_long"] += 1
                    continue
                self.stats["truncated"] += 1
                s, t = s[:limit], t[:limit]
            kept["src"].append(s)
            kept["tgt"].append(t)
            if self.tsv is not None:
                self.tsv.write(f"{pair[0]}\t{pair[1]}\n")
        self.seen += len(chunk)
        for side, ids in kept.items():
            self.lengths[side].extend(len(x) for x in ids)
            flat = [t for x in ids for t in x]
            np.asarray(flat, dtype=self.dtype).tofile(self.bins[side])

    def close(self) -> dict:
        """Close the files and write the offsets; return the split's counts for meta.json."""
        self.files.close()
        counts: dict = {"pairs": len(self.lengths["src"])}
        for side, lengths in self.lengths.items():
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(np.frombuffer(lengths, dtype=np.int64), out=offsets[1:])
            np.save(self.tmp / f"{self.split}.{side}.idx.npy", offsets)
            counts[f"{side}_tokens"] = int(offsets[-1])
        for side, lengths in self.lengths.items():  # with <|eos|> (src, labels) or <|bos|> (tgt_in)
            counts[f"max_{side}_len"] = max(lengths, default=0) + 1
        return counts


def prepare_pairs(
    data: PairSource,
    *,
    out: str | os.PathLike,
    tokenizer: str | Tokenizer = "char",
    vocab_size: int = 8000,
    max_len: int | None = 256,
    on_long: str = "truncate",
    on_empty: str = "skip",
    valid_fraction: float = 0.1,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
    src_field: str = "src",
    tgt_field: str = "tgt",
    on_bad: str = "refuse",
    show_progress: bool = True,
) -> dict:
    """Tokenize pairs into the data directory `out`; returns the metadata written.

    `data` is a .tsv/.jsonl file, a dataset directory, a (src_file, tgt_file) tuple or a
    mapping {"train": [(src, tgt), ...], "val": [...]}. `max_len` bounds every side in
    tokens, its <|eos|> (or <|bos|>) included; `on_long` says what happens above it.
    The languages (for BLEU's tokenizer, e.g. "zh") default to a dataset's meta.json."""
    _check_policy("on-long", on_long, LONG_POLICIES)
    if max_len is not None and max_len < 2:
        raise ScratchLMError(f"--max-len must be at least 2 (one token and <|eos|>), got {max_len}")
    streams = split_streams(data, valid_fraction=valid_fraction, on_empty=on_empty,
                            src_field=src_field, tgt_field=tgt_field, on_bad=on_bad)
    dataset_meta = Path(data) / "meta.json" if isinstance(data, (str, os.PathLike)) else None
    if dataset_meta is not None and dataset_meta.is_file():
        found = read_json(dataset_meta)
        src_lang, tgt_lang = src_lang or found.get("src_lang"), tgt_lang or found.get("tgt_lang")
    tok = tokenizer_for(tokenizer, texts=lambda: _pair_texts(streams["train"]), vocab_size=vocab_size,
                        what="both sides of the train pairs", show_progress=show_progress)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    counts: dict[str, dict] = {}
    with atomic_dir(out) as tmp:
        for split, stream in streams.items():
            read = PairSet([], stream.source)
            writer = _SplitWriter(tmp, split, dtype, max_len=max_len, on_long=on_long)
            try:
                for chunk in _chunks(stream.pairs(read, report=True)):
                    writer.add(tok, chunk)
            finally:
                c = writer.close()
            stats = writer.stats
            if not c["pairs"]:
                if stats["skipped_long"]:
                    raise ScratchLMError(f"every pair of the {split} split is over --max-len "
                                         f"{max_len}; raise it or use --on-long truncate")
                raise ScratchLMError(f"the {split} split is empty ({stream.source}); give more "
                                     f"pairs or change --valid-fraction")
            if stats["truncated"] or stats["skipped_long"]:
                what = "truncated" if stats["truncated"] else "skipped"
                warn(f"{what} {stats['truncated'] or stats['skipped_long']} {split} pair(s) longer "
                     f"than --max-len {max_len} tokens")
            counts[split] = {**c, "skipped_empty": read.skipped_empty, **stats}
        tok.save(tmp / "tokenizer")
        meta = {
            "format": "scratchlm-pairs/1",
            "kind": "pairs",
            "dtype": dtype.name,
            "vocab_size": tok.vocab_size,
            "tokenizer": "tokenizer",
            "tokenizer_kind": tok.kind,
            "special_ids": {"pad": tok.pad_id, "bos": tok.bos_id, "eos": tok.eos_id},
            "src_lang": src_lang,
            "tgt_lang": tgt_lang,
            "convention": "src_ids = src + [eos]; tgt_in = [bos] + tgt; labels = tgt + [eos]",
            "max_len": max_len,
            "on_long": on_long,
            "max_src_len": max(c["max_src_len"] for c in counts.values()),
            "max_tgt_len": max(c["max_tgt_len"] for c in counts.values()),
            "splits": counts,
            "sources": {s: stream.source for s, stream in streams.items()},
        }
        write_json(tmp / "meta.json", meta)
    return meta


