"""Batches from a prepared pairs directory: `PairData` memory-maps the token files and draws
length-bucketed batches. Every batch follows one convention (data/seq2seq.py `collate`): the
source gets <|eos|> at its end and no <|bos|>; the decoder input is <|bos|> + target, the labels
are target + <|eos|>.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from scratchlm.data.pairs.read import Pair
from scratchlm.data.seq2seq import collate
from scratchlm.data.splits import check_split, split_name
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import damaged_if_wrong, inside_dir, read_json
from scratchlm.tokenizers import Tokenizer

BUCKET_BATCHES = 10  # a length bucket holds this many batches' worth of pairs

class PairData:
    """A prepared pairs directory. Splits train, val, test (valid, validation and dev are
    accepted for val; data/splits.py)."""

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
            self._stem: dict[str, str] = {}  # split -> its files' name ("valid" before one naming)
            for stem, c in self.meta["splits"].items():
                split = split_name(stem) or stem
                self._stem[split] = stem
                self._ids[split] = {side: self._load(stem, side, c[f"{side}_tokens"], c["pairs"])
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
        c = self.meta["splits"][self._stem[self._split(split)]]
        return int(c["max_src_len"]), int(c["max_tgt_len"])

    @property
    def splits(self) -> list[str]:
        return list(self._ids)

    def tokenizer(self) -> Tokenizer:
        return self._tok

    def _split(self, split: str) -> str:
        return check_split(split, list(self._ids), str(self.dir))

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
        path = self.dir / f"{self._stem[split]}.tsv"
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
