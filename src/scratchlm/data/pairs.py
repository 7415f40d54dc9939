"""Parallel sentence pairs for translation: read them, `prepare_pairs` writes token files,
`PairData` draws length-bucketed batches from them.

    scratchlm prepare datasets/en-fr --out data/en-fr --tokenizer bpe --vocab-size 8000
    scratchlm prepare pairs.tsv --format pairs --out data/mine --max-len 128
    scratchlm prepare --src-file train.en --tgt-file train.fr --out data/mine

Inputs: TSV (src<TAB>tgt, a pair a line; or a header row naming the two columns), any record
file of data/readers.py whose `src_field`/`tgt_field` hold the pair (.jsonl, .json, .parquet,
.csv, .arrow, compressed or not), a Hugging Face `datasets` directory (a DatasetDict's
train/validation/test are the splits), two line-aligned text files, or a dataset directory
holding train/valid[/test] files (what `scratchlm datasets get libreoffice-en-fr` writes).
Without a valid split, a fixed `valid_fraction` of the distinct source sentences (by sha256)
is held out.

A pairs data directory holds
    meta.json                  kind "pairs", dtype, vocab size, counts and max lengths per split
    tokenizer/                 ONE tokenizer for both sides (trained on the train split of both)
    {split}.src.bin, .tgt.bin  flat token ids of every sentence, no special tokens
    {split}.src.idx.npy, ...   int64 offsets (n + 1): sentence i is bin[idx[i] : idx[i + 1]]
    valid.tsv, test.tsv        the raw pairs, so BLEU scores against untruncated references

Every batch follows one convention (`collate`): the source gets <|eos|> at its end and no
<|bos|>; the decoder input is <|bos|> + target, the labels are target + <|eos|>.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scratchlm.data import readers
from scratchlm.data.libreoffice import split_pairs
from scratchlm.data.pretrain import tokenizer_for
from scratchlm.data.seq2seq import clean, collate, write_tsv
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import (
    atomic_dir,
    damaged_if_wrong,
    inside_dir,
    read_json,
    write_json,
)
from scratchlm.tokenizers import Tokenizer

Pair = tuple[str, str]
PairSource = str | os.PathLike | tuple[str | os.PathLike, str | os.PathLike] | Mapping[str, Sequence[Pair]]
EMPTY_POLICIES = ("skip", "refuse")
LONG_POLICIES = ("truncate", "skip", "refuse")
BAD_POLICIES = readers.BAD_POLICIES
SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "validation", "val", "dev"), "test": ("test",)}
# Files a pairs dataset directory may hold a split in, in order of preference.
SPLIT_EXTS = (".tsv", ".jsonl", ".json", ".parquet", ".csv", ".tsv.gz", ".jsonl.gz", ".jsonl.zst")
BUCKET_BATCHES = 10  # a length bucket holds this many batches' worth of pairs
CHUNK_PAIRS = 4096  # encode this many sentences at a time


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- reading
@dataclass
class PairSet:
    """Pairs read from one input, with how many were skipped for an empty side."""

    pairs: list[Pair]
    source: str
    skipped_empty: int = 0
    first_empty: str | None = field(default=None, repr=False)  # file:line of the first skip

    def add(self, src: str, tgt: str, *, where: str, on_empty: str) -> None:
        src, tgt = clean(src), clean(tgt)
        if src and tgt:
            self.pairs.append((src, tgt))
            return
        side = "both sides are" if not (src or tgt) else ("the source is" if not src else "the target is")
        if on_empty == "refuse":
            raise ScratchLMError(f"{where}: {side} empty; fix the line or use --on-empty skip")
        self.skipped_empty += 1
        self.first_empty = self.first_empty or where

    def report(self) -> PairSet:
        if self.skipped_empty:
            warn(f"skipped {self.skipped_empty} pair(s) with an empty side in {self.source} "
                 f"(first at {self.first_empty}); --on-empty refuse stops instead")
        return self


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) with only '\\n' (and a '\\r' before it) as the line break; the file
    may be compressed (.gz, .xz, .zst)."""
    if not path.is_file():
        raise ScratchLMError(f"input {path} does not exist")
    src = readers.source_of(path)
    with readers.open_stream(src) as (stream, _):
        if b"\x00" in stream.peek(8192)[:8192]:
            raise ScratchLMError(f"{path} looks like a binary file (it contains NUL bytes); give text files")
        for n, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ScratchLMError(f"{path}:{n} is not UTF-8 text; convert the file to UTF-8") from None
            yield n, line.removesuffix("\n").removesuffix("\r")


def pair_format(path: str | os.PathLike) -> str:
    fmt = readers.source_of(path).fmt
    if fmt == "text":
        raise ScratchLMError(f"cannot tell the format of {path} from its extension; name it .tsv "
                             f'(src<TAB>tgt a line), .jsonl ({{"src": ..., "tgt": ...}} a line), '
                             f".parquet, .csv or .arrow")
    return fmt


def _check_policy(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ScratchLMError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}")


def read_pairs(path: str | os.PathLike, *, on_empty: str = "skip", src_field: str = "src",
               tgt_field: str = "tgt", on_bad: str = "refuse") -> PairSet:
    """Pairs from a .tsv file (src<TAB>tgt, or a header row naming `src_field` and
    `tgt_field`) or a record file / datasets directory whose two fields hold them."""
    _check_policy("on-empty", on_empty, EMPTY_POLICIES)
    bad = readers.BadRows(on_bad)
    path = Path(path)
    fmt = "hf" if path.is_dir() else pair_format(path)
    out = PairSet([], str(path))
    if fmt == "tsv":
        _read_tsv(path, out, src_field=src_field, tgt_field=tgt_field, on_empty=on_empty, bad=bad)
    else:
        fields = [src_field, tgt_field]
        for row in readers.iter_rows(readers.source_of(path), columns=fields):
            if row.error is None and not all(isinstance(row.value.get(f), str) for f in fields):
                row.error = (f'expected an object with string fields "{src_field}" and "{tgt_field}", '
                             f"got {str(row.value)[:60]!r}; --src-field/--tgt-field name other fields")
            if row.error is not None:
                bad(row.where, row.error)
                continue
            out.add(row.value[src_field], row.value[tgt_field], where=row.where, on_empty=on_empty)
    bad.report()
    return out.report()


def _read_tsv(path: Path, out: PairSet, *, src_field: str, tgt_field: str, on_empty: str,
              bad: readers.BadRows) -> None:
    cols, width = (0, 1), 2
    for n, line in _lines(path):
        where = f"{path}:{n}"
        if not line.strip():
            out.add("", "", where=where, on_empty=on_empty)
            continue
        values = line.split("\t")
        if n == 1 and src_field in values and tgt_field in values:  # a header row
            cols, width = (values.index(src_field), values.index(tgt_field)), -len(values)
            continue
        if width == 2 and len(values) != 2:
            bad(where, f"expected 2 tab-separated columns (src<TAB>tgt), found {len(values)}; "
                       f"write one pair a line")
        elif width < 0 and len(values) != -width:
            bad(where, f"{len(values)} columns where the header has {-width}")
        else:
            out.add(values[cols[0]], values[cols[1]], where=where, on_empty=on_empty)


def read_pair_files(src_path: str | os.PathLike, tgt_path: str | os.PathLike, *,
                    on_empty: str = "skip") -> PairSet:
    """Pairs from two line-aligned text files: line i of one translates line i of the other."""
    _check_policy("on-empty", on_empty, EMPTY_POLICIES)
    sp, tp = Path(src_path), Path(tgt_path)
    src, tgt = [x for _, x in _lines(sp)], [x for _, x in _lines(tp)]
    if len(src) != len(tgt):
        (short, n_short), (long, _) = sorted([(sp, len(src)), (tp, len(tgt))], key=lambda x: x[1])
        raise ScratchLMError(f"{sp} has {len(src)} lines but {tp} has {len(tgt)}: {short} is "
                             f"shorter, so {long}:{n_short + 1} has no partner; the files must "
                             f"be line-aligned")
    out = PairSet([], f"{sp} + {tp}")
    for n, (s, t) in enumerate(zip(src, tgt, strict=True), start=1):
        out.add(s, t, where=f"{sp}:{n} / {tp}:{n}", on_empty=on_empty)
    return out.report()


def is_pairs_dataset(path: str | os.PathLike) -> bool:
    """A raw pairs dataset directory, told apart from a text corpus by itself (`prepare`'s
    --format auto): it holds train.tsv or train.jsonl. Directories of other split files or a
    DatasetDict are read as pairs with --format pairs (see `load_splits`)."""
    p = Path(path)
    return p.is_dir() and any((p / f"train{ext}").is_file() for ext in (".tsv", ".jsonl"))


def is_pairs_dir(path: str | os.PathLike) -> bool:
    """Pairs rather than plain text: a prepared pairs directory or a raw pairs dataset."""
    meta = Path(path) / "meta.json"
    if meta.is_file():
        try:
            return read_json(meta).get("kind") in ("pairs", "pairs-dataset")
        except (ValueError, AttributeError):
            return False
    return is_pairs_dataset(path)


def load_splits(data: PairSource, *, valid_fraction: float = 0.1, on_empty: str = "skip",
                src_field: str = "src", tgt_field: str = "tgt", on_bad: str = "refuse",
                ) -> dict[str, PairSet]:
    """{"train", "valid"[, "test"]: PairSet} from a file, a dataset directory, a
    (src_file, tgt_file) tuple, or a mapping of split -> pairs already in memory."""
    read = {"on_empty": on_empty, "src_field": src_field, "tgt_field": tgt_field, "on_bad": on_bad}
    if isinstance(data, Mapping):
        splits = {}
        for split, pairs in data.items():
            splits[split] = PairSet([], f"the {split} pairs")
            for i, (a, b) in enumerate(pairs):
                splits[split].add(a, b, where=f"{split} pair {i + 1}", on_empty=on_empty)
            splits[split].report()
    elif isinstance(data, tuple):
        splits = {"train": read_pair_files(*data, on_empty=on_empty)}
    elif Path(data).is_dir() and readers.is_hf_dataset(Path(data)):
        d = Path(data)
        names = readers.hf_splits(d)
        if not names:  # a single Dataset: train only
            splits = {"train": read_pairs(d, **read)}
        else:
            splits = {}
            for split, aliases in SPLIT_NAMES.items():
                found = [n for n in aliases if n in names]
                if found:
                    splits[split] = read_pairs(d / found[0], **read)
    elif Path(data).is_dir():
        d = Path(data)
        if not any((d / f"train{ext}").is_file() for ext in SPLIT_EXTS):
            raise ScratchLMError(f"{d} holds no train.tsv or train.jsonl; a pairs dataset directory "
                                 f"has train, valid and optionally test as .tsv, .jsonl, .parquet "
                                 f"or .csv")
        splits = {}
        for split, names in SPLIT_NAMES.items():
            found = [d / f"{n}{ext}" for n in names for ext in SPLIT_EXTS
                     if (d / f"{n}{ext}").is_file()]
            if found:
                splits[split] = read_pairs(found[0], **read)
    else:
        splits = {"train": read_pairs(data, **read)}
    unknown = set(splits) - set(SPLIT_NAMES)
    if unknown or "train" not in splits:
        raise ScratchLMError(f"pair splits must be train, valid and test; got {', '.join(splits)}")
    if "valid" not in splits:
        if not 0.0 < valid_fraction < 1.0:
            raise ScratchLMError(f"--valid-fraction must be between 0 and 1, got {valid_fraction}")
        train = splits["train"]
        n_src = len({s for s, _ in train.pairs})
        held = split_pairs(train.pairs, test_size=0, valid_size=max(1, round(valid_fraction * n_src)))
        splits["valid"] = PairSet(held["valid"], f"{train.source} (held out)")
        splits["train"] = PairSet(held["train"], train.source, train.skipped_empty, train.first_empty)
    for split in ("train", "valid"):
        if not splits[split].pairs:
            raise ScratchLMError(f"the {split} split is empty ({splits[split].source}); give more "
                                 f"pairs or change --valid-fraction")
    return splits


# ----------------------------------------------------------------------------- preparing
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
    mapping {"train": [(src, tgt), ...], "valid": [...]}. `max_len` bounds every side in
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


# ----------------------------------------------------------------------------- batches
class PairData:
    """A prepared pairs directory. Split names: train, valid ("val" is accepted too), test."""

    def __init__(self, directory: str | os.PathLike, *, bucket_batches: int = BUCKET_BATCHES) -> None:
        d = Path(directory)
        meta_path = d / "meta.json"
        if not meta_path.is_file():
            raise ScratchLMError(f"{d} is not a prepared data directory (no meta.json); run "
                                 f"`scratchlm prepare PAIRS --format pairs --out {d}`")
        self.dir = d
        self.meta = read_json(meta_path)
        if self.meta.get("kind") == "pairs-dataset":
            raise ScratchLMError(f"{d} holds raw text pairs; tokenize them first: "
                                 f"`scratchlm prepare {d} --out DATA_DIR`, then use DATA_DIR")
        if self.meta.get("kind") != "pairs":
            raise ScratchLMError(f"{d} holds pretraining token files, not parallel pairs; prepare "
                                 f"pairs with `scratchlm prepare PAIRS.tsv --format pairs --out DIR`")
        self.bucket_batches = bucket_batches
        with damaged_if_wrong(meta_path):
            self.dtype = np.dtype(self.meta["dtype"])
            self._tok = Tokenizer.load(inside_dir(d, self.meta.get("tokenizer"), source=str(meta_path)))
            self._ids: dict[str, dict[str, tuple[np.memmap, np.ndarray]]] = {}
            for split, c in self.meta["splits"].items():
                self._ids[split] = {side: self._load(split, side, c[f"{side}_tokens"], c["pairs"])
                                    for side in ("src", "tgt")}
        self._buckets: dict[tuple[str, int], list[np.ndarray]] = {}

    def _load(self, split: str, side: str, n_tokens: int, n_pairs: int) -> tuple[np.memmap, np.ndarray]:
        source = str(self.dir / "meta.json")  # split names come from it
        bin_path = inside_dir(self.dir, f"{split}.{side}.bin", source=source)
        idx_path = inside_dir(self.dir, f"{split}.{side}.idx.npy", source=source)
        for p in (bin_path, idx_path):
            if not p.is_file():
                raise ScratchLMError(f"{p} is missing; run `scratchlm prepare` again")
        offsets = np.load(idx_path, allow_pickle=False)
        n = bin_path.stat().st_size // self.dtype.itemsize
        if n != n_tokens or len(offsets) != n_pairs + 1 or offsets[-1] != n:
            raise ScratchLMError(f"{bin_path} does not match meta.json ({n} tokens, "
                                 f"{len(offsets) - 1} pairs); prepare again")
        arr = np.memmap(bin_path, dtype=self.dtype, mode="r", shape=(n,)) if n else np.zeros(0, self.dtype)
        return arr, offsets

    # -- metadata
    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def max_src_len(self) -> int:
        """Longest src_ids row in any split, <|eos|> included."""
        return int(self.meta["max_src_len"])

    @property
    def max_tgt_len(self) -> int:
        """Longest tgt_in / labels row in any split, <|bos|> / <|eos|> included."""
        return int(self.meta["max_tgt_len"])

    def max_len(self, split: str) -> tuple[int, int]:
        """(longest src_ids row, longest tgt_in / labels row) of `split`, specials included."""
        c = self.meta["splits"][self._split(split)]
        return int(c["max_src_len"]), int(c["max_tgt_len"])

    @property
    def splits(self) -> list[str]:
        return list(self._ids)

    def tokenizer(self) -> Tokenizer:
        return self._tok

    def _split(self, split: str) -> str:
        name = "valid" if split == "val" else split
        if name not in self._ids:
            raise ScratchLMError(f"{self.dir} has no {split!r} split (it has {', '.join(self._ids)})")
        return name

    def num_pairs(self, split: str) -> int:
        return len(self._ids[self._split(split)]["src"][1]) - 1

    def lengths(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Token counts of each source and target, special tokens excluded."""
        ids = self._ids[self._split(split)]
        return np.diff(ids["src"][1]), np.diff(ids["tgt"][1])

    def ids(self, split: str, index: int) -> tuple[list[int], list[int]]:
        """Token ids of pair `index` (source, target), no special tokens."""
        out = []
        for side in ("src", "tgt"):
            arr, off = self._ids[self._split(split)][side]
            out.append(arr[off[index] : off[index + 1]].astype(np.int64).tolist())
        return out[0], out[1]

    def texts(self, split: str) -> list[Pair]:
        """(source, reference) strings: the raw text for valid and test; for train, decoded
        from the tokens (so truncated where `prepare` truncated)."""
        split = self._split(split)
        path = self.dir / f"{split}.tsv"
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                rows = [line.rstrip("\n").split("\t") for line in f]
            return [(s, t) for s, t in rows]
        tok = self._tok
        return [tuple(tok.decode(x) for x in self.ids(split, i)) for i in range(self.num_pairs(split))]

    # -- batches
    def _collate(self, split: str, indices: np.ndarray) -> dict[str, torch.Tensor]:
        pairs = [self.ids(split, int(i)) for i in indices]
        return collate([s for s, _ in pairs], [t for _, t in pairs], tokenizer=self._tok)

    def _sorted(self, split: str) -> np.ndarray:
        src_len, tgt_len = self.lengths(split)
        return np.lexsort((tgt_len, src_len))  # by source length, then target length

    def buckets(self, split: str, batch_size: int) -> list[np.ndarray]:
        """Pair indices sorted by length and cut into buckets of `bucket_batches` batches."""
        key = (self._split(split), batch_size)
        if key not in self._buckets:
            order = self._sorted(key[0])
            size = self.bucket_batches * batch_size
            buckets = [order[i : i + size] for i in range(0, len(order), size)]
            if len(buckets) > 1 and len(buckets[-1]) < batch_size:
                buckets[-2:] = [np.concatenate(buckets[-2:])]  # no bucket smaller than a batch
            self._buckets[key] = buckets
        return self._buckets[key]

    def batch(self, split: str, *, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """A random length-bucketed batch: a bucket drawn in proportion to its size (so every
        pair is equally likely), then `batch_size` distinct pairs from it. See `collate`."""
        split = self._split(split)
        buckets = self.buckets(split, batch_size)
        sizes = np.array([len(b) for b in buckets], dtype=np.float64)
        bucket = buckets[int(rng.choice(len(buckets), p=sizes / sizes.sum()))]
        idx = rng.choice(bucket, size=batch_size, replace=len(bucket) < batch_size)
        return self._collate(split, idx)

    def iter_batches(self, split: str, *, batch_size: int, sort_by_length: bool = True
                     ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Every pair of `split` once, as (indices (B,), batch), in a fixed order: by length
        (least padding) or, with sort_by_length=False, in file order."""
        split = self._split(split)
        order = self._sorted(split) if sort_by_length else np.arange(self.num_pairs(split))
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            yield idx, self._collate(split, idx)
