"""Reading corpora in the formats they ship in, streamed: what `prepare` (text and pairs) and
fine-tuning (SFT records) read through.

    plain text     any other extension: one document per file, read in blocks
    .jsonl/.json   one JSON object a line (a .json file starting with "[" is one array)
    .parquet       read one row group at a time, only the columns asked for
    .csv/.tsv      a header row naming the columns (pairs .tsv may be headerless src<TAB>tgt)
    .arrow         an Arrow IPC stream or file
    DIR            a Hugging Face `datasets` directory written by `save_to_disk` (state.json +
                   data-*.arrow), or a DatasetDict (dataset_dict.json + one such dir a split)
    .gz/.xz/.zst   any of the file formats compressed: data.jsonl.zst, corpus.txt.gz

An input is a file, a directory (recursive, sorted, hidden entries skipped; where it holds
record files, only those are read) or a glob ('shards/*.parquet'). A bad row (broken JSON, a
missing or non-string field) is named FILE:LINE (or FILE: row N) in one line; `on_bad` says
whether it stops the run ("refuse") or is counted and skipped ("skip"). A corrupt file stops
the run in one line whatever `on_bad` says.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import glob
import gzip
import io
import json
import lzma
import os
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from scratchlm.errors import ScratchLMError

BAD_POLICIES = ("refuse", "skip")
COMPRESSIONS = {".gz": "gzip", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd"}
RECORD_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet",
                  ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".arrow": "arrow"}
BLOCK_BYTES = 1 << 20  # plain text is read a block at a time
PIECE_CHARS = 1 << 18  # text is handed to the tokenizer in pieces of about this size...
MAX_PIECE_CHARS = 1 << 22  # ... and never larger, however long a line is
# Pieces are cut only where a byte-level BPE pre-tokenizer (GPT-2's regex, and Llama 3's)
# would split anyway, so encoding piece by piece gives the tokens of encoding the document
# whole: after a newline that has a non-space on both sides. Without one for MAX_PIECE_CHARS
# characters, before a space that follows a non-space; failing that, anywhere.
LINE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
SPACE_CUT = re.compile(r"(?<=\S)(?= \S)")
csv.field_size_limit((1 << 31) - 1)  # one field may hold a whole document


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


@dataclass(frozen=True)
class Source:
    """One input: a file, or a Hugging Face dataset directory (fmt "hf")."""

    path: Path
    fmt: str  # text, jsonl, json, parquet, csv, tsv, arrow or hf
    compression: str | None = None  # gzip, xz, zstd

    @property
    def size(self) -> int:
        """Bytes as stored (compressed, or all the arrow files of a dataset)."""
        if self.fmt == "hf":
            return sum(f.stat().st_size for f in hf_arrow_files(self.path))
        return self.path.stat().st_size

    @property
    def is_text(self) -> bool:
        return self.fmt == "text"


def source_of(path: str | os.PathLike) -> Source:
    """What a path holds, from its extensions (`x.jsonl.gz`: jsonl, gzip) or its contents."""
    p = Path(path)
    if p.is_dir():
        if is_hf_dataset(p):
            return Source(p, "hf")
        raise ScratchLMError(f"{p} is a directory, not a Hugging Face dataset (no state.json)")
    suffixes = [s.lower() for s in p.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    inner = suffixes[-2] if compression and len(suffixes) > 1 else (suffixes[-1] if suffixes and not compression else "")
    return Source(p, RECORD_FORMATS.get(inner, "text"), compression)


def is_hf_dataset(path: Path) -> bool:
    """A `Dataset.save_to_disk` directory (state.json + arrow files) or a DatasetDict's."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def hf_splits(path: Path) -> list[str]:
    """The splits of a DatasetDict directory, in its order ([] for a single Dataset)."""
    f = path / "dataset_dict.json"
    if not f.is_file():
        return []
    try:
        return list(json.loads(f.read_text(encoding="utf-8"))["splits"])
    except (ValueError, KeyError, TypeError):
        raise ScratchLMError(f"{f} is not a valid dataset_dict.json") from None


def hf_dataset_dir(path: Path, *, split: str = "train") -> Path:
    """The Dataset directory to read: `path`, or its `split` when it is a DatasetDict."""
    splits = hf_splits(path)
    if not splits:
        return path
    if split not in splits:
        raise ScratchLMError(f"{path} is a DatasetDict without a {split!r} split (splits: "
                             f"{', '.join(splits)}); give one split's directory, e.g. {path / splits[0]}")
    return path / split


def hf_arrow_files(path: Path) -> list[Path]:
    d = hf_dataset_dir(path)
    try:
        state = json.loads((d / "state.json").read_text(encoding="utf-8"))
        names = [f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise ScratchLMError(f"{d / 'state.json'} is missing or not a datasets state.json; "
                             f"write the directory with Dataset.save_to_disk") from None
    files = [d / n for n in names]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ScratchLMError(f"{missing[0]} (listed in {d / 'state.json'}) is missing")
    return files


def list_sources(inputs: list[str | os.PathLike]) -> list[Source]:
    """Expand files, directories and globs into sources, in a fixed order."""
    out: list[Source] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(_dir_sources(p))
        elif p.is_file():
            out.append(source_of(p))
        elif glob.has_magic(str(item)):
            found = sorted(glob.glob(str(item), recursive=True))
            if not found:
                raise ScratchLMError(f"no file matches {item}")
            out.extend(s for f in found for s in list_sources([f]))
        else:
            raise ScratchLMError(f"input {p} does not exist")
    if all(s.size == 0 for s in out):
        raise ScratchLMError(f"the input is empty ({len(out)} file(s), 0 bytes)")
    return out


def _walk(d: Path) -> Iterator[Source]:
    """Sources under `d`, sorted; a datasets directory is one source."""
    if is_hf_dataset(d):
        yield Source(d, "hf")
        return
    for f in sorted(d.iterdir()):
        if f.name.startswith("."):
            continue
        if f.is_dir():
            yield from _walk(f)
        elif f.is_file():
            yield source_of(f)


def _dir_sources(d: Path) -> list[Source]:
    found = list(_walk(d))
    if not found:
        raise ScratchLMError(f"directory {d} contains no files")
    records = [s for s in found if not s.is_text]
    if records and len(records) < len(found):
        other = [s for s in found if s.is_text]
        warn(f"{d}: reading its {len(records)} record file(s) and skipping {len(other)} other "
             f"file(s) such as {other[0].path.name}; name files or use a glob to choose")
        return records
    return found


# ----------------------------------------------------------------------------- opening
class _Counting(io.RawIOBase):
    """A binary file that counts the bytes read from it (progress through compressed files)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.pos = f, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        self.pos += n or 0
        return n


class _Zstd(io.RawIOBase):
    """zstd frames one after another, decompressed; a truncated frame raises EOFError (the
    zstandard package's stream reader returns a short read instead)."""

    def __init__(self, raw: io.RawIOBase, path: Path) -> None:
        try:
            import zstandard
        except ImportError:
            raise ScratchLMError(f"{path} is zstd-compressed: pip install zstandard") from None
        self.raw, self.dctx = raw, zstandard.ZstdDecompressor()
        self.obj, self.in_frame = self.dctx.decompressobj(), False
        self.out, self.at = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self.at == len(self.out):
            chunk = self.raw.read(1 << 17)
            if not chunk:
                if self.in_frame:
                    raise EOFError("the last zstd frame is truncated")
                return 0
            out, self.in_frame = self.obj.decompress(chunk), True
            while self.obj.eof:  # a frame ended: what follows starts the next one
                rest = self.obj.unused_data
                self.obj, self.in_frame = self.dctx.decompressobj(), bool(rest)
                out += self.obj.decompress(rest) if rest else b""
            self.out, self.at = out, 0
        n = min(len(b), len(self.out) - self.at)
        b[:n] = self.out[self.at : self.at + n]
        self.at += n
        return n


@contextlib.contextmanager
def open_stream(src: Source) -> Iterator[tuple[BinaryIO, _Counting]]:
    """(decompressed binary stream, the raw file with its byte count)."""
    with open(src.path, "rb") as f:
        raw = _Counting(f)
        if src.compression == "gzip":
            stream: Any = gzip.GzipFile(fileobj=raw, mode="rb")
        elif src.compression == "xz":
            stream = lzma.LZMAFile(raw, mode="rb")  # noqa: SIM115 (closed with f)
        elif src.compression == "zstd":
            stream = io.BufferedReader(_Zstd(raw, src.path), BLOCK_BYTES)
        else:
            stream = io.BufferedReader(raw, BLOCK_BYTES)
        try:
            yield stream, raw
        except (OSError, EOFError, lzma.LZMAError, zlib.error, *_zstd_errors()) as e:
            what = f"{src.compression} file" if src.compression else "file"
            raise ScratchLMError(f"{src.path} is a corrupt or truncated {what} ({e}); "
                                 f"fetch it again") from None


def _zstd_errors() -> tuple[type[BaseException], ...]:
    try:
        import zstandard
    except ImportError:
        return ()
    return (zstandard.ZstdError,)


# ----------------------------------------------------------------------------- text
def cut_point(text: str, start: int = 0, *, final: bool = False) -> int | None:
    """Where the piece of `text` beginning at `start` ends (see LINE_CUT); None: the text
    so far has no cut, read more first."""
    left = len(text) - start
    if final and left <= PIECE_CHARS:
        return len(text)
    m = LINE_CUT.search(text, start + min(PIECE_CHARS, left))
    if m:
        return m.start()
    if left < MAX_PIECE_CHARS:
        return len(text) if final else None
    m = SPACE_CUT.search(text, start + PIECE_CHARS, start + MAX_PIECE_CHARS)
    return m.start() if m else start + MAX_PIECE_CHARS


def split_pieces(text: str) -> Iterator[str]:
    """A document's text in pieces cut by `cut_point`."""
    at = 0
    while at < len(text):
        end = cut_point(text, at, final=True)
        assert end is not None and end > at
        yield text[at:end]
        at = end


def iter_text(src: Source) -> Iterator[tuple[str, int]]:
    """(piece, bytes of the file read so far) over a text file, decoded as UTF-8; positions
    are exact byte counts of the text for uncompressed files."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open_stream(src) as (stream, raw):
        buf, done = "", 0  # done: bytes of text handed out
        first = True
        while True:
            block = stream.read(BLOCK_BYTES)
            if first and b"\x00" in block[:8192]:
                raise ScratchLMError(f"{src.path} looks like a binary file (it contains NUL "
                                     f"bytes); give text files")
            first = False
            try:
                buf += decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                at = done + len(buf.encode()) + e.start
                raise ScratchLMError(f"{src.path}:{_line_at(src, at)}: not UTF-8 text (bad byte "
                                     f"near offset {at}); convert it to UTF-8") from None
            at = 0
            while at < len(buf) and (end := cut_point(buf, at, final=not block)) is not None:
                piece = buf[at:end]
                at = end
                done += len(piece.encode("utf-8"))
                yield piece, (done if src.compression is None else raw.pos)
            buf = buf[at:]
            if not block:
                return


def _line_at(src: Source, offset: int) -> int:
    """The line number of byte `offset` of a text source (counted again, for a message)."""
    lines, left = 1, offset
    with open_stream(src) as (stream, _):
        while left > 0 and (block := stream.read(min(left, BLOCK_BYTES))):
            lines += block.count(b"\n")
            left -= len(block)
    return lines


# ----------------------------------------------------------------------------- records
@dataclass
class Row:
    """One record: its number in the file (line for JSONL/CSV), where (for messages), and
    the value (a dict) or what is wrong with it."""

    number: int
    where: str
    value: dict[str, Any] | None
    error: str | None = None
    pos: int = 0  # bytes of the source read so far (progress; approximate)


def iter_rows(src: Source, *, columns: list[str] | None = None) -> Iterator[Row]:
    """Records of a record source; columnar formats read only `columns` (None: all) and
    refuse a missing one in one line."""
    if src.fmt in ("jsonl", "json"):
        yield from _json_rows(src)
    elif src.fmt in ("csv", "tsv"):
        yield from _csv_rows(src, columns=columns)
    elif src.fmt in ("parquet", "arrow", "hf"):
        yield from _arrow_rows(src, columns=columns)
    else:
        raise ScratchLMError(f"{src.path} is plain text, not a record file (.jsonl, .json, "
                             f".parquet, .csv, .tsv, .arrow or a datasets directory)")


def _json_rows(src: Source) -> Iterator[Row]:
    with open_stream(src) as (stream, raw):
        head = stream.peek(64)[:64].removeprefix(codecs.BOM_UTF8)
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="\n")
        try:
            if src.fmt == "json" and head.lstrip().startswith(b"["):  # one array: read whole
                try:
                    records = json.load(text)
                except json.JSONDecodeError as e:
                    raise ScratchLMError(f"{src.path}:{e.lineno}: not valid JSON ({e.msg})") from None
                for i, r in enumerate(records, 1):
                    yield _row(i, f"{src.path}: item {i}", r, pos=raw.pos)
                return
            for n, line in enumerate(text, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    yield Row(n, f"{src.path}:{n}", None, f"not valid JSON ({e.msg.removesuffix(' at')}, column {e.colno})", raw.pos)
                    continue
                yield _row(n, f"{src.path}:{n}", value, pos=raw.pos)
        except UnicodeDecodeError:
            raise ScratchLMError(f"{src.path} is not UTF-8 text; convert it to UTF-8") from None


def _row(n: int, where: str, value: Any, *, pos: int) -> Row:
    if not isinstance(value, dict):
        return Row(n, where, None, f"expected an object {{...}}, got {type(value).__name__}", pos)
    return Row(n, where, value, None, pos)


def _csv_rows(src: Source, *, columns: list[str] | None) -> Iterator[Row]:
    with open_stream(src) as (stream, raw):
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        reader = csv.reader(text, dialect="excel-tab" if src.fmt == "tsv" else "excel")
        try:
            header = next(reader, None)
            if header is None:
                return
            _check_columns(src, header, columns)
            for values in reader:
                n = reader.line_num
                if not values:
                    continue
                if len(values) != len(header):
                    yield Row(n, f"{src.path}:{n}", None, f"{len(values)} columns where the header "
                              f"has {len(header)}", raw.pos)
                    continue
                yield Row(n, f"{src.path}:{n}", dict(zip(header, values, strict=True)), None, raw.pos)
        except UnicodeDecodeError:
            raise ScratchLMError(f"{src.path} is not UTF-8 text; convert it to UTF-8") from None
        except csv.Error as e:
            raise ScratchLMError(f"{src.path}:{reader.line_num}: bad CSV ({e})") from None


def _check_columns(src: Source, names: list[str], wanted: list[str] | None) -> None:
    missing = [c for c in wanted or [] if c not in names]
    if missing:
        flag = {"src": "--src-field", "tgt": "--tgt-field"}.get(missing[0], "--text-field")
        raise ScratchLMError(f"{src.path} has no column {missing[0]!r} (columns: "
                             f"{', '.join(names) or 'none'}); name the right one with {flag}")


def _arrow_rows(src: Source, *, columns: list[str] | None) -> Iterator[Row]:
    try:
        import pyarrow as pa
        import pyarrow.ipc
        import pyarrow.parquet as pq
    except ImportError:
        raise ScratchLMError(f"reading {src.path} needs pyarrow: pip install pyarrow") from None
    errors = (pa.ArrowException, OSError, EOFError)
    n = 0
    base = 0
    try:
        if src.fmt == "parquet":
            pf = pq.ParquetFile(src.path)
            _check_columns(src, pf.schema_arrow.names, columns)
            total = max(pf.metadata.num_rows, 1)
            size = src.size
            for batch in pf.iter_batches(batch_size=4096, columns=columns):
                for value in batch.to_pylist():
                    n += 1
                    yield Row(n, f"{src.path}: row {n}", value, None, size * n // total)
            return
        files = hf_arrow_files(src.path) if src.fmt == "hf" else [src.path]
        for f in files:
            size = f.stat().st_size
            with pa.memory_map(str(f)) as mm:
                try:
                    reader: Any = pa.ipc.open_stream(mm)
                    batches = iter(reader)
                except pa.ArrowInvalid:
                    mm.seek(0)
                    reader = pa.ipc.open_file(mm)
                    batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
                _check_columns(src, reader.schema.names, columns)
                for batch in batches:
                    if columns is not None:
                        batch = batch.select(columns)
                    for value in batch.to_pylist():
                        n += 1
                        yield Row(n, f"{src.path}: row {n}", value, None, base + min(mm.tell(), size))
            base += size
    except errors as e:
        kind = {"parquet": "parquet file", "hf": "datasets directory"}.get(src.fmt, "Arrow file")
        raise ScratchLMError(f"{src.path} is not a readable {kind} ({str(e).splitlines()[0]}); "
                             f"it may be corrupt or truncated") from None


# ----------------------------------------------------------------------------- bad rows
class BadRows:
    """Applies --on-bad: "refuse" raises on the first bad row, "skip" counts them."""

    def __init__(self, policy: str = "refuse") -> None:
        if policy not in BAD_POLICIES:
            raise ScratchLMError(f"--on-bad must be one of {', '.join(BAD_POLICIES)}, got {policy!r}")
        self.policy, self.count, self.first = policy, 0, ""
        self.good = 0  # rows read well: before the first, a missing field is a wrong name

    def __call__(self, where: str, reason: str) -> None:
        if self.policy == "refuse":
            raise ScratchLMError(f"{where}: {reason}; fix the row or use --on-bad skip")
        self.count += 1
        self.first = self.first or f"{where}: {reason}"

    def report(self) -> None:
        if self.count:
            warn(f"skipped {self.count:,} bad row(s) (first: {self.first})")


def field_text(row: Row, field: str, bad: BadRows, *, flag: str = "--text-field") -> str | None:
    """The string `field` of a row, or None (reported to `bad`) when the row has none."""
    if row.error is None:
        value = row.value.get(field) if row.value is not None else None
        if isinstance(value, str):
            bad.good += 1
            return value
        if value is None and field not in (row.value or {}):
            keys = ", ".join(list(row.value or {})[:8])
            row.error = f"no {field!r} field (fields: {keys}); name the right one with {flag}"
            if not bad.good:
                raise ScratchLMError(f"{row.where}: {row.error}")
        else:
            row.error = f"{field!r} is {'null' if value is None else type(value).__name__}, not a string"
    bad(row.where, row.error)
    return None


# ----------------------------------------------------------------------------- documents
@dataclass
class Piece:
    """Text for the tokenizer, with where the input stands after it.

    `end`: bytes of all the inputs (as stored) read when the piece is complete; `exact`: the
    piece is plain uncompressed text and `end` counts its own bytes exactly, so a split may cut
    inside it; `doc_end`: the last piece of a document (<|eos|> follows)."""

    text: str
    end: int
    exact: bool
    doc_end: bool


def iter_pieces(sources: list[Source], *, field: str = "text", bad: BadRows | None = None
                ) -> Iterator[Piece]:
    """Every document of `sources` as pieces: a text file is one document, a record one."""
    bad = bad or BadRows()
    base = 0
    for src in sources:
        size = src.size
        if src.is_text:
            pending: tuple[str, int] | None = None
            for text, pos in iter_text(src):
                if pending is not None:
                    yield Piece(pending[0], base + pending[1], src.compression is None, False)
                pending = (text, pos)
            if pending is not None:
                yield Piece(pending[0], base + pending[1], src.compression is None, True)
        else:
            for row in iter_rows(src, columns=[field]):
                text = field_text(row, field, bad)
                if not text:
                    continue
                parts = list(split_pieces(text)) if len(text) > PIECE_CHARS else [text]
                for i, part in enumerate(parts):
                    yield Piece(part, base + min(row.pos, size), False, i == len(parts) - 1)
        base += size
