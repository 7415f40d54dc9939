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

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from scratchlm.data.pairs.read import (
    LONG_POLICIES,
    Pair,
    PairSource,
    _check_policy,
    load_splits,
    warn,
)
from scratchlm.data.pretrain import tokenizer_for
from scratchlm.data.seq2seq import write_tsv
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_dir, read_json, write_json
from scratchlm.tokenizers import Tokenizer

CHUNK_PAIRS = 4096  # encode this many sentences at a time

def _pair_texts(train: list[Pair]) -> Iterator[str]:
    """Both sides of the train pairs, in chunks, for training a tokenizer."""
    for i in range(0, len(train), CHUNK_PAIRS):
        yield "\n".join(x for pair in train[i:i + CHUNK_PAIRS] for x in pair)


def _encode(tok: Tokenizer, split: str, pairs: list[Pair], *, max_len: int | None,
            on_long: str) -> tuple[list[Pair], list[list[int]], list[list[int]], dict]:
    """Token ids of both sides; over-long sides truncated, skipped or refused (one token of
    `max_len` is kept for <|eos|> / <|bos|>)."""
    limit = None if max_len is None else max_len - 1
    kept: list[Pair] = []
    src_ids: list[list[int]] = []
    tgt_ids: list[list[int]] = []
    stats = {"truncated": 0, "skipped_long": 0}
    for lo in range(0, len(pairs), CHUNK_PAIRS):
        chunk = pairs[lo:lo + CHUNK_PAIRS]
        enc_src = tok.encode_batch([s for s, _ in chunk])
        enc_tgt = tok.encode_batch([t for _, t in chunk])
        for i, (pair, s, t) in enumerate(zip(chunk, enc_src, enc_tgt, strict=True)):
            if limit is not None and (len(s) > limit or len(t) > limit):
                if on_long == "refuse":
                    side, n = ("source", len(s)) if len(s) > limit else ("target", len(t))
                    raise ScratchLMError(
                        f"pair {lo + i + 1} of the {split} split ({pair[0][:40]!r}...): its {side} "
                        f"has {n} tokens, over --max-len {max_len} minus 1 for <|eos|>; raise "
                        f"--max-len or use --on-long truncate or skip")
                if on_long == "skip":
                    stats["skipped_long"] += 1
                    continue
                stats["truncated"] += 1
                s, t = s[:limit], t[:limit]
            kept.append(pair)
            src_ids.append(s)
            tgt_ids.append(t)
    return kept, src_ids, tgt_ids, stats


def _write_ids(tmp: Path, name: str, ids: list[list[int]], dtype: np.dtype) -> None:
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in ids], out=offsets[1:])
    flat = np.fromiter((t for x in ids for t in x), dtype=dtype, count=int(offsets[-1]))
    flat.tofile(tmp / f"{name}.bin")
    np.save(tmp / f"{name}.idx.npy", offsets)


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
    splits = load_splits(data, valid_fraction=valid_fraction, on_empty=on_empty,
                         src_field=src_field, tgt_field=tgt_field, on_bad=on_bad)
    dataset_meta = Path(data) / "meta.json" if isinstance(data, (str, os.PathLike)) else None
    if dataset_meta is not None and dataset_meta.is_file():
        found = read_json(dataset_meta)
        src_lang, tgt_lang = src_lang or found.get("src_lang"), tgt_lang or found.get("tgt_lang")
    train = splits["train"].pairs
    tok = tokenizer_for(tokenizer, texts=lambda: _pair_texts(train), vocab_size=vocab_size,
                        what=f"both sides of {len(train):,} train pairs", show_progress=show_progress)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    counts: dict[str, dict] = {}
    with atomic_dir(out) as tmp:
        for split, ps in splits.items():
            kept, src_ids, tgt_ids, stats = _encode(tok, split, ps.pairs, max_len=max_len,
                                                    on_long=on_long)
            if not kept:
                raise ScratchLMError(f"every pair of the {split} split is over --max-len {max_len}; "
                                     f"raise it or use --on-long truncate")
            if stats["truncated"] or stats["skipped_long"]:
                what = "truncated" if stats["truncated"] else "skipped"
                warn(f"{what} {stats['truncated'] or stats['skipped_long']} {split} pair(s) longer "
                     f"than --max-len {max_len} tokens")
            _write_ids(tmp, f"{split}.src", src_ids, dtype)
            _write_ids(tmp, f"{split}.tgt", tgt_ids, dtype)
            if split != "train":
                write_tsv(tmp / f"{split}.tsv", kept)
            counts[split] = {
                "pairs": len(kept),
                "src_tokens": sum(map(len, src_ids)),
                "tgt_tokens": sum(map(len, tgt_ids)),
                "max_src_len": max(map(len, src_ids)) + 1,  # with <|eos|>
                "max_tgt_len": max(map(len, tgt_ids)) + 1,  # with <|bos|> (tgt_in) or <|eos|> (labels)
                "skipped_empty": ps.skipped_empty,
                **stats,
            }
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
            "sources": {s: ps.source for s, ps in splits.items()},
        }
        write_json(tmp / "meta.json", meta)
    return meta


