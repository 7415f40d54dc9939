"""Token files for pretraining: `prepare` writes them, `TokenData` draws batches from them.

A data directory holds `train.bin` and `val.bin` (flat token ids, uint16 when the vocabulary
fits, else uint32, read back as numpy memmaps), `meta.json`, and the `tokenizer/` used.
Inputs are text files (one document each) or record files whose `field` holds a document
(.jsonl, .parquet, .csv, a datasets directory, compressed or not: see data/readers.py); every
document ends with <|eos|>. Validation: the last `val_fraction` of the text files' bytes, and
an evenly spread `val_fraction` of the records' documents (see `_assign_splits`).

Reading is streamed and tokens are appended to the files, so memory stays flat however large
the corpus. Text goes to the tokenizer in pieces cut where a byte-level BPE would split anyway
(readers.LINE_CUT), so the tokens equal those of encoding each document whole. Batches of
byte-level BPE pieces are encoded on every core by tiktoken where it gives the tokenizers
library's ids (checked on the vocabulary, a probe text and the corpus' first piece:
tokenizers/fast.py; about 4x faster), else by the tokenizers library (`encode_batch`); char
tokenizers by a numpy table lookup. `parallel=False` encodes one piece at a time on one core
with the tokenizers library: the output is byte-identical (tested), only slower.

    scratchlm prepare corpus/ --out data/mine --tokenizer bpe --vocab-size 8000
    scratchlm prepare 'shards/*.parquet' --text-field content --out data/web --tokenizer tok.json
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from scratchlm.data.readers import BadRows, Source, iter_pieces, list_sources
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_dir, damaged_if_wrong, inside_dir, read_json, write_json
from scratchlm.interop.gguf import load_tokenizer
from scratchlm.tokenizers import Tokenizer, train_tokenizer
from scratchlm.tokenizers.fast import same_ids

if TYPE_CHECKING:
    from tiktoken import Encoding

CHUNK_CHARS = 1 << 20  # tokenizer training reads text about 1M characters at a time
BATCH_CHARS = 1 << 21  # encode about 2M characters of pieces per batch
IN_FLIGHT = 2  # batches being encoded at once
THREADS = os.cpu_count() or 1
PROBE_CHARS = 1 << 16  # the start of the corpus both encoders must agree on (fast_encoder)


def _iter_chunks(sources: list[Source], *, field: str = "text", bad: BadRows | None = None
                 ) -> Iterator[str]:
    buf: list[str] = []
    size = 0
    for piece in iter_pieces(sources, field=field, bad=bad or BadRows("skip")):
        buf.append(piece.text)
        size += len(piece.text)
        if size >= CHUNK_CHARS:
            yield "".join(buf)
            buf, size = [], 0
    if buf:
        yield "".join(buf)


def tokenizer_for(
    spec: str | os.PathLike | Tokenizer, *, texts: Callable[[], Iterable[str]], what: str,
    vocab_size: int, show_progress: bool = True,
) -> Tokenizer:
    """The one --tokenizer rule of every prepare (text, pairs, SFT): a Tokenizer is used as
    it is; 'char' or 'bpe' trains a new one on `texts()` (`what` says on what); anything else
    is a tokenizer, model or prepared data directory, a tokenizer.json file or a GGUF file."""
    if isinstance(spec, Tokenizer):
        return spec
    if str(spec) in ("char", "bpe"):
        if show_progress:
            print(f"training a {spec} tokenizer on {what}")
        return train_tokenizer(kind=str(spec), texts=texts(), vocab_size=vocab_size,
                               show_progress=show_progress)
    return load_tokenizer(spec)


def resolve_tokenizer(
    spec: str | Tokenizer, *, files: list[Path] | list[Source], vocab_size: int,
    show_progress: bool = True, field: str = "text", on_bad: str = "skip",
) -> Tokenizer:
    """`tokenizer_for` on text inputs (files, directories, globs; `field` of record files)."""
    sources = [s for f in files for s in ([f] if isinstance(f, Source) else list_sources([f]))]
    return tokenizer_for(spec, texts=lambda: _iter_chunks(sources, field=field, bad=BadRows(on_bad)),
                         what=f"{len(sources)} input(s)", vocab_size=vocab_size,
                         show_progress=show_progress)


def encode_pieces(tok: Tokenizer, texts: list[str], *, parallel: bool = True,
                  fast: Encoding | None = None) -> list[np.ndarray]:
    """Token ids of each text (no special tokens added): with `fast` (tok's tiktoken
    encoding, `Tokenizer.tiktoken_encoding`) on every core, else a batch through the
    tokenizers library's thread pool, or one text at a time (`parallel=False`)."""
    if tok.kind == "char" or not parallel:
        return [tok.encode_array(t) for t in texts]
    if fast is not None:
        try:  # encode_to_numpy: no Python list of ints; the Rust code runs without the GIL
            with ThreadPoolExecutor(min(len(texts), THREADS) or 1) as ex:
                return list(ex.map(lambda t: fast.encode_to_numpy(t, allowed_special="all"), texts))
        except UnicodeEncodeError:  # lone surrogates (from JSON escapes): the library says so
            pass
    return [np.array(e.ids, dtype=np.int64) for e in tok.hf.encode_batch_fast(texts, add_special_tokens=False)]


def fast_encoder(tok: Tokenizer, sample: str, *, show_progress: bool = False) -> Encoding | None:
    """tok's tiktoken encoding where it exists and gives the tokenizers library's ids on
    `sample` too (the start of the corpus), else None: see tokenizers/fast.py."""
    if tok.kind != "bpe":
        return None
    enc, why = tok.tiktoken_encoding()
    if enc is not None and not same_ids(tok.hf, enc, [sample]):
        enc, why = None, "it gives other ids than the tokenizers library on the corpus' first piece"
    if show_progress:
        print("encoding with tiktoken (the same ids as the tokenizers library, checked)" if enc
              else f"encoding with the tokenizers library (tiktoken not used: {why})")
    return enc


def prepare(
    inputs: list[str | os.PathLike],
    *,
    out: str | os.PathLike,
    tokenizer: str | Tokenizer = "char",
    vocab_size: int = 8000,
    val_fraction: float = 0.1,
    field: str = "text",
    on_bad: str = "refuse",
    parallel: bool = True,
    show_progress: bool = True,
) -> dict:
    """Tokenize files, directories, globs or datasets into `out`; returns the metadata written."""
    if not 0.0 < val_fraction < 1.0:
        raise ScratchLMError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    BadRows(on_bad)  # checks the policy before any work
    sources = list_sources(inputs)
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else resolve_tokenizer(
        tokenizer, files=sources, vocab_size=vocab_size, show_progress=show_progress, field=field,
        on_bad=on_bad,
    )
    if tok.eos_id is None:
        raise ScratchLMError("the tokenizer has no end-of-text token to separate documents; "
                             "give its tokenizer_config.json an eos_token")
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    total_bytes = sum(s.size for s in sources)
    counts = {"train": {"tokens": 0, "bytes": 0}, "val": {"tokens": 0, "bytes": 0}}
    eos = np.array([tok.eos_id], dtype=dtype)
    bad = BadRows(on_bad)  # a fresh count: training the tokenizer read the rows once already

    with atomic_dir(out) as tmp:
        outs = {s: open(tmp / f"{s}.bin", "wb") for s in counts}  # noqa: SIM115 (closed below)
        batch: list[tuple[str, str, bool]] = []  # (split, text, doc_end)
        # parallel: batches are encoded on worker threads (the tokenizers library releases the
        # GIL and spreads each batch over every core) while this thread reads the next batch
        # and writes finished ones in order. Two batches in flight keep the cores busy while
        # the last pieces of one finish. The char lookup is mostly GIL-holding numpy work on
        # one core: threads only slow it.
        pool = ThreadPoolExecutor(IN_FLIGHT) if parallel and tok.kind != "char" else None
        pending: deque[tuple[Future, list]] = deque()
        fast: list[Encoding | None] = []  # chosen on the first batch

        def write(done: list[tuple[str, str, bool]], ids: list[np.ndarray]) -> None:
            for (split, text, doc_end), x in zip(done, ids, strict=True):
                outs[split].write(x.astype(dtype, copy=False))
                if doc_end:
                    outs[split].write(eos)
                counts[split]["tokens"] += len(x) + doc_end
                counts[split]["bytes"] += len(text.encode("utf-8"))

        def flush(*, last: bool = False) -> None:
            nonlocal batch
            texts = [t for _, t, _ in batch]
            if pool is None:
                write(batch, encode_pieces(tok, texts, parallel=False))
            else:
                if not fast:
                    fast.append(fast_encoder(tok, texts[0][:PROBE_CHARS] if texts else "",
                                             show_progress=show_progress))
                pending.append((pool.submit(encode_pieces, tok, texts, fast=fast[0]), batch))
                while pending and (last or len(pending) > IN_FLIGHT):
                    future, done = pending.popleft()
                    write(done, future.result())
            batch = []

        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing",
                   disable=None if show_progress else True)  # None: off when not a terminal
        start, pos, size = time.perf_counter(), 0, 0
        try:
            for split, text, doc_end, read in _assign_splits(sources, field=field, bad=bad,
                                                             val_fraction=val_fraction):
                batch.append((split, text, doc_end))
                size += len(text)
                if size >= BATCH_CHARS:
                    flush()
                    size = 0
                    text_mb = sum(c["bytes"] for c in counts.values()) / 1e6
                    bar.set_postfix_str(f"text {text_mb / (time.perf_counter() - start):.1f} MB/s",
                                        refresh=False)
                bar.update(read - pos)
                pos = read
            flush(last=True)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            bar.close()
            for fh in outs.values():
                fh.close()
        bad.report()
        if show_progress:
            mb, secs = sum(c["bytes"] for c in counts.values()) / 1e6, time.perf_counter() - start
            print(f"tokenized {mb:,.1f} MB of text in {secs:,.1f} s ({mb / max(secs, 1e-9):,.1f} MB/s)")
        for split in ("train", "val"):
            if counts[split]["tokens"] < 2:
                raise ScratchLMError(
                    f"the {split} split is empty ({counts[split]['tokens']} tokens); "
                    "give more text or change --val-fraction"
                )
        tok.save(tmp / "tokenizer")
        meta = {
            "format": "scratchlm-tokens/1",
            "kind": "tokens",
            "dtype": np.dtype(dtype).name,
            "vocab_size": tok.vocab_size,
            "tokenizer": "tokenizer",
            "tokenizer_kind": tok.kind,
            "val_fraction": val_fraction,
            "field": field,
            "splits": counts,
            "skipped_bad": bad.count,
            "sources": [str(s.path) for s in sources],
        }
        write_json(tmp / "meta.json", meta)
    return meta


def _assign_splits(sources: list[Source], *, field: str, bad: BadRows, val_fraction: float
                   ) -> Iterator[tuple[str, str, bool, int]]:
    """(split, text, doc_end, bytes of the inputs read) for every piece, in input order.

    Text files: the last `val_fraction` of their bytes (as stored) is validation, cut exactly
    inside an uncompressed file, at the next piece in a compressed one. Records: document i
    is validation when floor((i + 1) f) > floor(i f): an evenly spread `val_fraction` of the
    documents, whole. Both are fixed by the input alone (not by batch sizes or threads)."""
    boundary = (1.0 - val_fraction) * sum(s.size for s in sources if s.is_text)
    text_base = base = doc = 0
    for src in sources:
        prev = text_base
        for piece in iter_pieces([src], field=field, bad=bad):
            read = base + piece.end
            if src.is_text:
                end = text_base + piece.end
                if prev < boundary < end and piece.exact:  # the split point is in this piece
                    head, rest = _cut(piece.text, int(boundary) - prev)
                    yield "train", head, False, read
                    yield "val", rest, piece.doc_end, read
                    prev = end
                    continue
                split = "val" if prev >= boundary else "train"
                prev = end
            else:
                split = "val" if int((doc + 1) * val_fraction) > int(doc * val_fraction) else "train"
                doc += piece.doc_end
            yield split, piece.text, piece.doc_end, read
        base += src.size
        text_base += src.size if src.is_text else 0


def _cut(text: str, nbytes: int) -> tuple[str, str]:
    """The first `nbytes` bytes of `text` (to a character boundary), and the rest."""
    head = text.encode("utf-8")[:max(nbytes, 0)].decode("utf-8", errors="ignore")
    return head, text[len(head):]


class TokenData:
    """A prepared data directory, read through memmaps."""

    def __init__(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        meta_path = d / "meta.json"
        if not meta_path.is_file():
            raise ScratchLMError(f"{d} is not a prepared data directory (no meta.json); run `scratchlm prepare`")
        self.dir = d
        self.meta = read_json(meta_path)
        if self.meta.get("kind") in ("pairs", "pairs-dataset"):
            raise ScratchLMError(f"{d} is a parallel-pairs data directory; train a seq2seq family on it "
                                 f"(model.family=seq2seq_rnn or seq2seq_transformer)")
        with damaged_if_wrong(meta_path):
            self.dtype = np.dtype(self.meta["dtype"])
            self.splits: dict[str, np.memmap] = {}
            for s in ("train", "val"):
                p = d / f"{s}.bin"
                if not p.is_file():
                    raise ScratchLMError(f"{p} is missing; run `scratchlm prepare` again")
                n = p.stat().st_size // self.dtype.itemsize
                if n != self.meta["splits"][s]["tokens"]:
                    raise ScratchLMError(f"{p} holds {n} tokens but meta.json says {self.meta['splits'][s]['tokens']}; prepare again")
                self.splits[s] = np.memmap(p, dtype=self.dtype, mode="r", shape=(n,))

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(inside_dir(self.dir, self.meta.get("tokenizer"),
                                         source=str(self.dir / "meta.json")))

    def check_block_size(self, block_size: int) -> None:
        for s, arr in self.splits.items():
            if len(arr) < block_size + 1:
                raise ScratchLMError(
                    f"the {s} split has {len(arr)} tokens, fewer than model.block_size + 1 = "
                    f"{block_size + 1}; use more text, a larger --val-fraction or a smaller block_size"
                )

    def batch(
        self, split: str, *, batch_size: int, block_size: int, rng: np.random.Generator,
        rank: int = 0, world: int = 1,
    ) -> dict[str, torch.Tensor]:
        """Random windows: input_ids (B, T) and labels (B, T), the inputs shifted by one.

        On `world` processes, the start positions of a global batch of world x batch_size
        windows are drawn from `rng` (the same on every rank) and rank `rank` reads only its
        own batch_size of them: the union over ranks is the batch one process with
        batch_size x world would draw, and no rank touches the rest of the file."""
        arr = self.splits[split]
        starts = rng.integers(0, len(arr) - block_size, size=batch_size * world)
        starts = starts[rank * batch_size : (rank + 1) * batch_size]
        win = np.stack([arr[s : s + block_size + 1] for s in starts]).astype(np.int64)  # (B, T+1)
        t = torch.from_numpy(win)
        return {"input_ids": t[:, :-1], "labels": t[:, 1:]}

    def windows(
        self, split: str, *, block_size: int, batch_size: int = 16
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive non-overlapping windows covering every token of `split` once, as
        (inputs (B, T), targets (B, T)) batches; the last window may be shorter (B = 1)."""
        arr = self.splits[split]
        n_full = (len(arr) - 1) // block_size
        for b in range(0, n_full, batch_size):
            rows = min(batch_size, n_full - b)
            lo = b * block_size
            win = np.asarray(arr[lo : lo + rows * block_size + 1], dtype=np.int64)
            x = torch.from_numpy(win[:-1].reshape(rows, block_size))
            y = torch.from_numpy(win[1:].reshape(rows, block_size))
            yield x, y
        rest = n_full * block_size
        if rest < len(arr) - 1:
            win = torch.from_numpy(np.asarray(arr[rest:], dtype=np.int64))
            yield win[None, :-1], win[None, 1:]
