"""The Tokenizer: a thin, typed wrapper over a `tokenizers.Tokenizer`.

Two kinds, both lossless on any Unicode text:
- `char`: one token per character seen in training, plus 256 byte tokens <0x00>..<0xFF>
  used as a fallback for unseen characters (so text outside the training alphabet still
  round-trips). Built as a BPE model with no merges and byte_fallback=True.
- `bpe`: byte-level BPE (GPT-2 style; Sennrich et al. 2016, Radford et al. 2019) trained with
  the `tokenizers` library; every byte is in the base alphabet, so nothing is ever unknown.

A saved tokenizer is `tokenizer.json` plus `tokenizer_config.json` (Hugging Face names, so
`transformers.AutoTokenizer` loads it too).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_file, read_json, write_json

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
KINDS = ("char", "bpe")


class Tokenizer:
    def __init__(self, hf: HFTokenizer, *, kind: str) -> None:
        self.hf = hf
        self.kind = kind
        ids = {t: hf.token_to_id(t) for t in SPECIAL_TOKENS}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (ids[PAD], ids[BOS], ids[EOS], ids[UNK])

    # -- encoding
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos else ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def special_ids(self) -> set[int]:
        return {self.pad_id, self.bos_id, self.eos_id, self.unk_id}

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each token stands for (0 for special tokens), for bits-per-byte."""
        out = np.zeros(self.vocab_size, dtype=np.int64)
        byte_level = self.kind == "bpe"
        for token, i in self.hf.get_vocab(with_added_tokens=True).items():
            if i in self.special_ids:
                continue
            if byte_level:
                out[i] = len(token)  # one printable character per byte (GPT-2 byte map)
            elif token.startswith("<0x") and token.endswith(">") and len(token) == 6:
                out[i] = 1
            else:
                out[i] = len(token.encode("utf-8"))
        return out

    # -- files
    def save(self, directory: str | os.PathLike, *, model_max_length: int | None = None) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_file(d / "tokenizer.json") as f:
            f.write(self.hf.to_str(pretty=False))
        cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "unk_token": UNK,
            "clean_up_tokenization_spaces": False,
            "scratchlm_kind": self.kind,
        }
        if model_max_length:
            cfg["model_max_length"] = model_max_length
        write_json(d / "tokenizer_config.json", cfg)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        d = Path(directory)
        path = d / "tokenizer.json"
        if not path.is_file():
            raise ScratchLMError(f"{d} has no tokenizer.json; train one with `scratchlm tokenizer train`")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception on bad JSON
            raise ScratchLMError(f"{path} is not a valid tokenizer file ({e})") from None
        kind = "bpe"
        if (d / "tokenizer_config.json").is_file():
            kind = read_json(d / "tokenizer_config.json").get("scratchlm_kind", "bpe")
        tok = cls(hf, kind=kind)
        missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
        if missing:
            raise ScratchLMError(f"{path} lacks the special tokens {missing}")
        return tok


# ----------------------------------------------------------------------------- training
def _train_char(texts: Iterable[str]) -> HFTokenizer:
    chars: set[str] = set()
    for t in texts:
        chars.update(t)
    vocab: dict[str, int] = {}
    for tok in [*SPECIAL_TOKENS, *(f"<0x{b:02X}>" for b in range(256)), *sorted(chars)]:
        vocab.setdefault(tok, len(vocab))
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, byte_fallback=True))
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    hf.add_special_tokens(SPECIAL_TOKENS)
    return hf


def _train_bpe(texts: Iterable[str], vocab_size: int, show_progress: bool) -> HFTokenizer:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return hf


def train_tokenizer(
    *, kind: str, texts: Iterable[str] | Iterator[str], vocab_size: int = 8000,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a tokenizer of `kind` ('char' or 'bpe') on an iterable of text chunks."""
    if kind == "char":
        return Tokenizer(_train_char(texts), kind="char")
    if kind == "bpe":
        min_size = 256 + len(SPECIAL_TOKENS)
        if vocab_size < min_size:
            raise ScratchLMError(
                f"--vocab-size {vocab_size} is too small for byte-level BPE (at least {min_size})"
            )
        return Tokenizer(_train_bpe(texts, vocab_size, show_progress), kind="bpe")
    raise ScratchLMError(f"unknown tokenizer kind {kind!r}; use one of {', '.join(KINDS)}")
