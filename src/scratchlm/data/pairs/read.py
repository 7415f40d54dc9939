"""Reading parallel pairs: TSV (src<TAB>tgt, a pair a line; or a header row naming the two
columns), any record file of data/readers.py whose `src_field`/`tgt_field` hold the pair
(.jsonl, .json, .parquet, .csv, .arrow, compressed or not), a Hugging Face `datasets`
directory (a DatasetDict's train/validation/test are the splits), two line-aligned text files,
or a dataset directory holding train/val[/test] files (what `scratchlm datasets get
libreoffice-en-fr` writes; valid, validation and dev name val too, see data/splits.py).
Without a val split, a fixed `valid_fraction` of the distinct source sentences (by sha256)
is held out.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from scratchlm.data import readers
from scratchlm.data.seq2seq import clean
from scratchlm.data.splits import ALIASES, split_name
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import read_json

Pair = tuple[str, str]
PairSource = str | os.PathLike | tuple[str | os.PathLike, str | os.PathLike] | Mapping[str, Sequence[Pair]]
EMPTY_POLICIES = ("skip", "refuse")
LONG_POLICIES = ("truncate", "skip", "refuse")
BAD_POLICIES = readers.BAD_POLICIES
# Files a pairs dataset directory may hold a split in, in order of preference.
SPLIT_EXTS = (".tsv", ".jsonl", ".json", ".parquet", ".csv", ".tsv.gz", ".jsonl.gz", ".jsonl.zst")


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- reading
# Readers yield raw rows (src, tgt, where), re-reading their input on every pass, so that
# prepare holds no more than a chunk of pairs however large the corpus; `PairSet.check`
# cleans a row and applies --on-empty.
Row = tuple[str, str, str]


@dataclass
class PairSet:
    """Pairs read from one input (or, streaming, only the counts), with how many were
    skipped for an empty side."""

    pairs: list[Pair]
    source: str
    skipped_empty: int = 0
    first_empty: str | None = field(default=None, repr=False)  # file:line of the first skip

    def check(self, src: str, tgt: str, *, where: str, on_empty: str) -> Pair | None:
        """The cleaned pair, or None (counted) when a side is empty."""
        src, tgt = clean(src), clean(tgt)
        if src and tgt:
            return src, tgt
        side = "both sides are" if not (src or tgt) else ("the source is" if not src else "the target is")
        if on_empty == "refuse":
            raise ScratchLMError(f"{where}: {side} empty; fix the line or use --on-empty skip")
        self.skipped_empty += 1
        self.first_empty = self.first_empty or where
        return None

    def add(self, src: str, tgt: str, *, where: str, on_empty: str) -> None:
        if (pair := self.check(src, tgt, where=where, on_empty=on_empty)) is not None:
            self.pairs.append(pair)

    def report(self) -> PairSet:
        if self.skipped_empty:
            warn(f"skipped {self.skipped_empty} pair(s) with an empty side in {self.source} "
                 f"(first at {self.first_empty}); --on-empty refuse stops instead")
        return self


@dataclass
class SplitStream:
    """One split of a pairs input, read again on every pass; nothing is held in memory.
    `held`: the sources a held-out cut keeps (by hash), None for all; `counts`: False for a
    split held out of another's input (that split counts and reports its skipped rows)."""

    source: str
    rows: Callable[[bool], Iterator[Row]]  # rows(report): report bad rows at the end
    on_empty: str = "skip"
    held: Callable[[str], bool] | None = None
    counts: bool = True

    def pairs(self, stats: PairSet | None = None, *, report: bool = False) -> Iterator[Pair]:
        """The cleaned pairs; skipped ones counted in `stats` (and warned about if `report`)."""
        if stats is None or not self.counts:
            stats, report = PairSet([], self.source), False
        for src, tgt, where in self.rows(report):
            pair = stats.check(src, tgt, where=where, on_empty=self.on_empty)
            if pair is not None and (self.held is None or self.held(pair[0])):
                yield pair
        if report:
            stats.report()


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


def _file_rows(path: Path, *, src_field: str, tgt_field: str, on_bad: str,
               report: bool) -> Iterator[Row]:
    """Rows of a .tsv file (src<TAB>tgt, or a header row naming `src_field` and `tgt_field`)
    or of a record file / datasets directory whose two fields hold them."""
    bad = readers.BadRows(on_bad)
    fmt = "hf" if path.is_dir() else pair_format(path)
    if fmt == "tsv":
        yield from _tsv_rows(path, src_field=src_field, tgt_field=tgt_field, bad=bad)
    else:
        fields = [src_field, tgt_field]
        for row in readers.iter_rows(readers.source_of(path), columns=fields):
            if row.error is None and not all(isinstance(row.value.get(f), str) for f in fields):
                row.error = (f'expected an object with string fields "{src_field}" and "{tgt_field}", '
                             f"got {str(row.value)[:60]!r}; --src-field/--tgt-field name other fields")
            if row.error is not None:
                bad(row.where, row.error)
                continue
            yield row.value[src_field], row.value[tgt_field], row.where
    if report:
        bad.report()


def _tsv_rows(path: Path, *, src_field: str, tgt_field: str, bad: readers.BadRows) -> Iterator[Row]:
    cols, width = (0, 1), 2
    for n, line in _lines(path):
        where = f"{path}:{n}"
        if not line.strip():
            yield "", "", where
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
            yield values[cols[0]], values[cols[1]], where


def _aligned_rows(sp: Path, tp: Path) -> Iterator[Row]:
    """Rows of two line-aligned text files: line i of one translates line i of the other."""
    src, tgt = _lines(sp), _lines(tp)
    n = 0
    for n, s in src:
        t = next(tgt, None)
        if t is None:
            _misaligned(sp, n + sum(1 for _ in src), tp, n - 1)
        yield s, t[1], f"{sp}:{n} / {tp}:{n}"
    rest = sum(1 for _ in tgt)
    if rest:
        _misaligned(sp, n, tp, n + rest)


def _misaligned(sp: Path, n_src: int, tp: Path, n_tgt: int) -> None:
    (short, n_short), (long, _) = sorted([(sp, n_src), (tp, n_tgt)], key=lambda x: x[1])
    raise ScratchLMError(f"{sp} has {n_src} lines but {tp} has {n_tgt}: {short} is shorter, so "
                         f"{long}:{n_short + 1} has no partner; the files must be line-aligned")


def read_pairs(path: str | os.PathLike, *, on_empty: str = "skip", src_field: str = "src",
               tgt_field: str = "tgt", on_bad: str = "refuse") -> PairSet:
    """Pairs from a .tsv file (src<TAB>tgt, or a header row naming `src_field` and
    `tgt_field`) or a record file / datasets directory whose two fields hold them."""
    return _collect(_file_stream(Path(path), on_empty=on_empty, src_field=src_field,
                                 tgt_field=tgt_field, on_bad=on_bad))


def read_pair_files(src_path: str | os.PathLike, tgt_path: str | os.PathLike, *,
                    on_empty: str = "skip") -> PairSet:
    """Pairs from two line-aligned text files: line i of one translates line i of the other."""
    _check_policy("on-empty", on_empty, EMPTY_POLICIES)
    return _collect(_aligned_stream(Path(src_path), Path(tgt_path), on_empty))


def _aligned_stream(sp: Path, tp: Path, on_empty: str) -> SplitStream:
    return SplitStream(f"{sp} + {tp}", lambda report: _aligned_rows(sp, tp), on_empty)


def _file_stream(path: Path, *, on_empty: str, src_field: str, tgt_field: str,
                 on_bad: str) -> SplitStream:
    _check_policy("on-empty", on_empty, EMPTY_POLICIES)
    readers.BadRows(on_bad)  # checks the policy before any reading
    return SplitStream(str(path), lambda report: _file_rows(
        path, src_field=src_field, tgt_field=tgt_field, on_bad=on_bad, report=report), on_empty)


def _collect(stream: SplitStream) -> PairSet:
    stats = PairSet([], stream.source)
    stats.pairs = list(stream.pairs(stats, report=True))
    return stats


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


def split_streams(data: PairSource, *, valid_fraction: float = 0.1, on_empty: str = "skip",
                  src_field: str = "src", tgt_field: str = "tgt", on_bad: str = "refuse",
                  ) -> dict[str, SplitStream]:
    """{"train", "val"[, "test"]: SplitStream} from a file, a dataset directory, a
    (src_file, tgt_file) tuple, or a mapping of split -> pairs already in memory. Without a
    val split, a fixed `valid_fraction` of the distinct train sources (the first by sha256)
    is held out: one pass keeps 8 bytes a distinct source, nothing else."""
    _check_policy("on-empty", on_empty, EMPTY_POLICIES)
    read = {"on_empty": on_empty, "src_field": src_field, "tgt_field": tgt_field, "on_bad": on_bad}
    if isinstance(data, Mapping):
        splits = {}
        for name, pairs in data.items():
            rows = [(a, b, f"{name} pair {i + 1}") for i, (a, b) in enumerate(pairs)]
            splits[split_name(name) or name] = SplitStream(f"the {name} pairs", lambda _, r=rows: iter(r),
                                                           on_empty)
    elif isinstance(data, tuple):
        splits = {"train": _aligned_stream(Path(data[0]), Path(data[1]), on_empty)}
    elif Path(data).is_dir() and readers.is_hf_dataset(Path(data)):
        d = Path(data)
        names = readers.hf_splits(d)
        if not names:  # a single Dataset: train only
            splits = {"train": _file_stream(d, **read)}
        else:
            splits = {}
            for split, aliases in ALIASES.items():
                found = [n for n in aliases if n in names]
                if found:
                    splits[split] = _file_stream(d / found[0], **read)
    elif Path(data).is_dir():
        d = Path(data)
        if not any((d / f"train{ext}").is_file() for ext in SPLIT_EXTS):
            raise ScratchLMError(f"{d} holds no train.tsv or train.jsonl; a pairs dataset directory "
                                 f"has train, val and optionally test as .tsv, .jsonl, .parquet "
                                 f"or .csv")
        splits = {}
        for split, names in ALIASES.items():
            found = [d / f"{n}{ext}" for n in names for ext in SPLIT_EXTS
                     if (d / f"{n}{ext}").is_file()]
            if found:
                splits[split] = _file_stream(found[0], **read)
    else:
        if not Path(data).exists():
            raise ScratchLMError(f"input {data} does not exist")
        splits = {"train": _file_stream(Path(data), **read)}
    unknown = set(splits) - set(ALIASES)
    if unknown or "train" not in splits:
        raise ScratchLMError(f"pair splits must be train, val (or valid) and test; got "
                             f"{', '.join(splits)}")
    if "val" not in splits:
        if not 0.0 < valid_fraction < 1.0:
            raise ScratchLMError(f"--valid-fraction must be between 0 and 1, got {valid_fraction}")
        train = splits["train"]
        hashes = np.unique(np.fromiter((source_hash(s) for s, _ in train.pairs()), dtype=np.uint64))
        cut = hashes[max(1, round(valid_fraction * len(hashes))) - 1] if len(hashes) else 0
        splits["val"] = replace(train, source=f"{train.source} (held out)",
                                held=lambda s: source_hash(s) <= cut, counts=False)
        splits["train"] = replace(train, held=lambda s: source_hash(s) > cut)
    return splits


def source_hash(text: str) -> int:
    """The first 8 bytes of the sha256 of a source sentence, as the order of held-out cuts
    (libreoffice.split_pairs orders by the same digest)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def load_splits(data: PairSource, *, valid_fraction: float = 0.1, on_empty: str = "skip",
                src_field: str = "src", tgt_field: str = "tgt", on_bad: str = "refuse",
                ) -> dict[str, PairSet]:
    """`split_streams`, read into memory (for evaluation sets and tests)."""
    streams = split_streams(data, valid_fraction=valid_fraction, on_empty=on_empty,
                            src_field=src_field, tgt_field=tgt_field, on_bad=on_bad)
    splits = {split: _collect(stream) for split, stream in streams.items()}
    for split in ("train", "val"):
        if not splits[split].pairs:
            raise ScratchLMError(f"the {split} split is empty ({splits[split].source}); give more "
                                 f"pairs or change --valid-fraction")
    return splits
