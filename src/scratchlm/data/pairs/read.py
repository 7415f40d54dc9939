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

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.data import readers
from scratchlm.data.libreoffice import split_pairs
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
    """{"train", "val"[, "test"]: PairSet} from a file, a dataset directory, a
    (src_file, tgt_file) tuple, or a mapping of split -> pairs already in memory."""
    read = {"on_empty": on_empty, "src_field": src_field, "tgt_field": tgt_field, "on_bad": on_bad}
    if isinstance(data, Mapping):
        splits = {}
        for name, pairs in data.items():
            split = split_name(name) or name
            splits[split] = PairSet([], f"the {name} pairs")
            for i, (a, b) in enumerate(pairs):
                splits[split].add(a, b, where=f"{name} pair {i + 1}", on_empty=on_empty)
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
            for split, aliases in ALIASES.items():
                found = [n for n in aliases if n in names]
                if found:
                    splits[split] = read_pairs(d / found[0], **read)
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
                splits[split] = read_pairs(found[0], **read)
    else:
        splits = {"train": read_pairs(data, **read)}
    unknown = set(splits) - set(ALIASES)
    if unknown or "train" not in splits:
        raise ScratchLMError(f"pair splits must be train, val (or valid) and test; got "
                             f"{', '.join(splits)}")
    if "val" not in splits:
        if not 0.0 < valid_fraction < 1.0:
            raise ScratchLMError(f"--valid-fraction must be between 0 and 1, got {valid_fraction}")
        train = splits["train"]
        n_src = len({s for s, _ in train.pairs})
        held = split_pairs(train.pairs, test_size=0, val_size=max(1, round(valid_fraction * n_src)))
        splits["val"] = PairSet(held["val"], f"{train.source} (held out)")
        splits["train"] = PairSet(held["train"], train.source, train.skipped_empty, train.first_empty)
    for split in ("train", "val"):
        if not splits[split].pairs:
            raise ScratchLMError(f"the {split} split is empty ({splits[split].source}); give more "
                                 f"pairs or change --valid-fraction")
    return splits
