"""Token files for pretraining: `prepare` writes them, `TokenData` draws batches from them.

A data directory holds `train.bin` and `val.bin` (flat token ids, uint16 when the vocabulary
fits, else uint32, read back as numpy memmaps), `meta.json`, and the `tokenizer/` used.
`prepare` streams its input line by line and writes in chunks, so memory stays flat however
large the corpus. The last `val_fraction` of the input bytes becomes the validation split.

    scratchlm prepare corpus/ --out data/mine --tokenizer bpe --vocab-size 8000
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from scratchlm.data.text import iter_lines, list_text_files
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_dir, read_json, write_json
from scratchlm.tokenizers import Tokenizer, train_tokenizer

CHUNK_CHARS = 1 << 20  # encode about 1M characters at a time


def _iter_chunks(files: list[Path]) -> Iterator[str]:
    buf: list[str] = []
    size = 0
    for f in files:
        for line in iter_lines(f):
            buf.append(line)
            size += len(line)
            if size >= CHUNK_CHARS:
                yield "".join(buf)
                buf, size = [], 0
    if buf:
        yield "".join(buf)


def resolve_tokenizer(
    spec: str, *, files: list[Path], vocab_size: int, show_progress: bool = True
) -> Tokenizer:
    """'char' or 'bpe' trains a new tokenizer on `files`; anything else is a tokenizer dir."""
    if spec in ("char", "bpe"):
        if show_progress:
            print(f"training a {spec} tokenizer on {len(files)} file(s)")
        return train_tokenizer(
            kind=spec, texts=_iter_chunks(files), vocab_size=vocab_size, show_progress=show_progress
        )
    if not Path(spec).is_dir():
        raise ScratchLMError(
            f"--tokenizer {spec!r} is neither 'char', 'bpe' nor a tokenizer directory"
        )
    return Tokenizer.load(spec)


def prepare(
    inputs: list[str | os.PathLike],
    *,
    out: str | os.PathLike,
    tokenizer: str | Tokenizer = "char",
    vocab_size: int = 8000,
    val_fraction: float = 0.1,
    show_progress: bool = True,
) -> dict:
    """Tokenize text files/directories into `out`; returns the metadata written."""
    if not 0.0 < val_fraction < 1.0:
        raise ScratchLMError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    files = list_text_files(inputs)
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else resolve_tokenizer(
        tokenizer, files=files, vocab_size=vocab_size, show_progress=show_progress
    )
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    total_bytes = sum(f.stat().st_size for f in files)
    boundary = (1.0 - val_fraction) * total_bytes
    counts = {"train": {"tokens": 0, "bytes": 0}, "val": {"tokens": 0, "bytes": 0}}

    with atomic_dir(out) as tmp:
        outs = {s: open(tmp / f"{s}.bin", "wb") for s in counts}  # noqa: SIM115 (closed below)
        bufs: dict[str, list[str]] = {"train": [], "val": []}
        sizes = {"train": 0, "val": 0}

        def flush(split: str, *, end_of_doc: bool = False) -> None:
            text = "".join(bufs[split])
            ids = tok.encode(text) if text else []
            if end_of_doc:
                ids.append(tok.eos_id)  # documents are separated by <|eos|>
            np.asarray(ids, dtype=dtype).tofile(outs[split])
            nbytes = len(text.encode("utf-8"))
            counts[split]["tokens"] += len(ids)
            counts[split]["bytes"] += nbytes
            bufs[split], sizes[split] = [], 0
            bar.update(nbytes)

        seen = 0
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing",
                   disable=not show_progress)
        try:
            for f in files:
                split = "train"
                for line in iter_lines(f):
                    nbytes = len(line.encode("utf-8"))
                    if seen < boundary < seen + nbytes:
                        # The piece straddles the split point: cut it there.
                        cut = int(len(line) * (boundary - seen) / nbytes)
                        head, line = line[:cut], line[cut:]
                        bufs["train"].append(head)
                        seen += len(head.encode("utf-8"))
                        nbytes = len(line.encode("utf-8"))
                    new_split = "val" if seen >= boundary else "train"
                    if new_split != split and bufs[split]:
                        flush(split)
                    split = new_split
                    seen += nbytes
                    bufs[split].append(line)
                    sizes[split] += len(line)
                    if sizes[split] >= CHUNK_CHARS:
                        flush(split)
                flush(split, end_of_doc=True)
        finally:
            bar.close()
            for fh in outs.values():
                fh.close()
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
            "splits": counts,
            "sources": [str(f) for f in files],
        }
        write_json(tmp / "meta.json", meta)
    return meta


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
        return Tokenizer.load(self.dir / self.meta["tokenizer"])

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
