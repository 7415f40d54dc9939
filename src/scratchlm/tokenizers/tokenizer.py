"""The Tokenizer: a thin, typed wrapper over a `tokenizers.Tokenizer`.

Two kinds, both lossless on any Unicode text:
- `char`: one token per character seen in training, plus 256 byte tokens <0x00>..<0xFF>
  used as a fallback for unseen characters (so text outside the training alphabet still
  round-trips). Built as a BPE model with no merges and byte_fallback=True.
- `bpe`: byte-level BPE (GPT-2 style; Sennrich et al. 2016, Radford et al. 2019) trained with
  the `tokenizers` library; every byte is in the base alphabet, so nothing is ever unknown.

A saved tokenizer is `tokenizer.json` plus `tokenizer_config.json` (Hugging Face names, so
`transformers.AutoTokenizer` loads it too).

Tokenizers trained here use the special tokens <|pad|>, <|bos|>, <|eos|>, <|unk|>. Imported
ones (a Hugging Face directory, a GGUF file) keep their own: the roles bos/eos/pad/unk are
read from `tokenizer_config.json` (`bos_token`, ...), any of them may be absent (pad then
falls back to eos), and a chat template found there (or in `chat_template.jinja`) is kept in
`chat_template` and written back on save.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_file, inside_dir, read_json, write_json

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
KINDS = ("char", "bpe")
# Role -> token of the tokenizers trained here.
DEFAULT_ROLES = {"pad": PAD, "bos": BOS, "eos": EOS, "unk": UNK}
ROLES = tuple(DEFAULT_ROLES)


class Tokenizer:
    """`kind`: "char" or "bpe" (byte-level) for tokenizers trained here; imported ones are
    "bpe" when byte-level, else "sentencepiece" (a ▁-marked vocabulary) or "other".

    `special_tokens` maps the roles pad/bos/eos/unk to token strings (None: the tokenizer has
    no such token); the default is ours. `chat_template` is a Jinja template or None."""

    def __init__(
        self, hf: HFTokenizer, *, kind: str, special_tokens: dict[str, str | None] | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.hf = hf
        self.kind = kind
        self._char_table: tuple | None = None  # built on first use by _char_ids
        self._tiktoken: tuple | None = None  # (Encoding or None, reason): tiktoken_encoding()
        roles = dict(DEFAULT_ROLES) if special_tokens is None else {r: special_tokens.get(r) for r in ROLES}
        self.special_tokens = roles
        self.chat_template = chat_template
        ids = {r: (hf.token_to_id(t) if t is not None else None) for r, t in roles.items()}
        missing = [t for r, t in roles.items() if t is not None and ids[r] is None]
        if missing:
            raise ScratchLMError(f"the tokenizer lacks the special tokens {missing}")
        self.bos_id, self.eos_id, self.unk_id = ids["bos"], ids["eos"], ids["unk"]
        # Without a pad token, padding uses eos (what is padded is never attended to or learned).
        pad = ids["pad"] if ids["pad"] is not None else self.eos_id
        self.pad_id = pad if pad is not None else 0

    # -- encoding
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        ids = self._char_ids(text) if self.kind == "char" else None
        ids = ids.tolist() if ids is not None else self.hf.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_id is None:
            raise ScratchLMError("this tokenizer has no bos token to add")
        return [self.bos_id, *ids] if add_bos else ids

    def encode_array(self, text: str) -> np.ndarray:
        """`encode(text)` as an integer array (the char kind never builds a Python list)."""
        ids = self._char_ids(text) if self.kind == "char" else None
        if ids is None:
            ids = np.array(self.hf.encode(text, add_special_tokens=False).ids, dtype=np.int64)
        return ids

    def _char_ids(self, text: str) -> np.ndarray | None:
        """The char tokenizer as a table lookup over code points (what HF's BPE model with no
        merges and byte fallback computes, ~100x faster on long text); None where HF's path
        must run (text containing a special token's string, or not encodable)."""
        if self._char_table is None:
            if self.hf.normalizer is not None or self.hf.pre_tokenizer is not None:
                return None
            vocab = self.hf.get_vocab(with_added_tokens=False)
            chars = {ord(t): i for t, i in vocab.items() if len(t) == 1}
            # Every code point has a row (4.4 MB), so no lookup needs a bounds check.
            table = np.full(0x110000, -1, dtype=np.int32)
            table[list(chars)] = list(chars.values())
            byte_ids = np.array([vocab.get(f"<0x{b:02X}>", -1) for b in range(256)])
            specials = [t.content for t in self.hf.get_added_tokens_decoder().values()]
            usable = not (byte_ids < 0).any()
            self._char_table = (table, byte_ids, specials, os.path.commonprefix(specials), usable)
        table, byte_ids, specials, prefix, usable = self._char_table
        # One scan for the specials' common prefix ("<|") spares one scan per special token.
        if not usable or ((not prefix or prefix in text) and any(s in text for s in specials)):
            return None
        try:
            cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        except UnicodeEncodeError:
            return None
        ids = table[cps]
        if not len(ids) or ids.min() >= 0:
            return ids
        unknown = np.flatnonzero(ids < 0)
        if not len(unknown):
            return ids
        out, start = [], 0  # unseen characters: one <0xXX> token per UTF-8 byte
        for i in unknown.tolist():
            out.append(ids[start:i])
            out.append(byte_ids[list(text[i].encode("utf-8"))])
            start = i + 1
        out.append(ids[start:])
        return np.concatenate(out)

    def tiktoken_encoding(self):
        """(a tiktoken Encoding giving this byte-level BPE's ids, "") or (None, why not):
        see tokenizers/fast.py. Built once; None for every other kind."""
        if self._tiktoken is None:
            from scratchlm.tokenizers.fast import tiktoken_encoding

            self._tiktoken = (tiktoken_encoding(self.hf) if self.kind == "bpe"
                              else (None, f"a {self.kind} tokenizer is not byte-level BPE"))
        return self._tiktoken

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def special_ids(self) -> set[int]:
        """The role tokens' ids and those of every added token marked special."""
        ids = {i for i in (self.pad_id, self.bos_id, self.eos_id, self.unk_id) if i is not None}
        ids.update(i for i, t in self.hf.get_added_tokens_decoder().items() if t.special)
        return ids

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each token stands for (0 for special tokens), for bits-per-byte."""
        out = np.zeros(self.vocab_size, dtype=np.int64)
        byte_level = self.kind == "bpe"
        special = self.special_ids
        added = set(self.hf.get_added_tokens_decoder())
        for token, i in self.hf.get_vocab(with_added_tokens=True).items():
            if i in special:
                continue
            if byte_level and i not in added:
                out[i] = len(token)  # one printable character per byte (GPT-2 byte map)
            elif token.startswith("<0x") and token.endswith(">") and len(token) == 6:
                out[i] = 1
            else:
                if self.kind == "sentencepiece":
                    token = token.replace("\u2581", " ")
                out[i] = len(token.encode("utf-8"))
        return out

    # -- files
    def save(self, directory: str | os.PathLike, *, model_max_length: int | None = None) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_file(d / "tokenizer.json") as f:
            f.write(self.hf.to_str(pretty=False))
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast"}
        for role, token in self.special_tokens.items():
            if token is not None:
                cfg[f"{role}_token"] = token
        cfg["clean_up_tokenization_spaces"] = False
        cfg["scratchlm_kind"] = self.kind
        if self.special_tokens != DEFAULT_ROLES:
            cfg["scratchlm_special_tokens"] = self.special_tokens  # which roles are absent
        if self.chat_template:
            cfg["chat_template"] = self.chat_template
        if model_max_length:
            cfg["model_max_length"] = model_max_length
        write_json(d / "tokenizer_config.json", cfg)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        """A tokenizer or model directory, or a tokenizer.json file: a file named
        tokenizer.json reads the tokenizer_config.json beside it; a file with another name
        stands alone (its roles are read from its special tokens' names)."""
        d = Path(directory)
        path = d / "tokenizer.json"
        alone = False
        if d.is_file():
            path, d, alone = d, d.parent, d.name != "tokenizer.json"
        elif not path.is_file():
            raise ScratchLMError(f"{d} has no tokenizer.json; train one with `scratchlm tokenizer train`")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception on bad JSON
            raise ScratchLMError(f"{path} is not a valid tokenizer file ({e})") from None
        cfg = {}
        if not alone and (d / "tokenizer_config.json").is_file():
            try:
                cfg = read_json(d / "tokenizer_config.json")
            except ValueError as e:
                raise ScratchLMError(f"{d / 'tokenizer_config.json'} is not valid JSON ({e})") from None
        chat_template = cfg.get("chat_template")
        if isinstance(chat_template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in chat_template}
            chat_template = named.get("default") or next(iter(named.values()), None)
        if chat_template is None and not alone and (d / "chat_template.jinja").is_file():
            chat_template = (d / "chat_template.jinja").read_text(encoding="utf-8")
        ours = all(hf.token_to_id(t) is not None for t in SPECIAL_TOKENS)
        if not cfg and not ours and not alone and (d / "config.json").is_file():
            cfg = _roles_from_model_config(hf, d / "config.json")  # tokenizer.json alone
        if not cfg and not ours:
            cfg = _roles_from_names(hf)  # a bare tokenizer.json of another library
        if "scratchlm_kind" in cfg or not cfg:  # ours
            roles = cfg.get("scratchlm_special_tokens") or dict(DEFAULT_ROLES)
            if roles == DEFAULT_ROLES:
                missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
                if missing:
                    raise ScratchLMError(f"{path} lacks the special tokens {missing}")
            kind = cfg.get("scratchlm_kind", "bpe")
        else:  # a Hugging Face tokenizer: its own special tokens
            roles = {r: _token_text(cfg.get(f"{r}_token")) for r in ROLES}
            kind = detect_kind(hf)
        try:
            return cls(hf, kind=kind, special_tokens=roles, chat_template=chat_template)
        except ScratchLMError as e:
            raise ScratchLMError(f"{d}: {e}") from None


def _roles_from_model_config(hf: HFTokenizer, path: Path) -> dict:
    """bos/eos/pad/unk tokens from a model config.json's *_token_id (a directory that has a
    tokenizer.json but no tokenizer_config.json)."""
    try:
        raw = read_json(path)
    except ValueError:
        return {}
    out = {}
    for role in ROLES:
        i = raw.get(f"{role}_token_id")
        if isinstance(i, list):
            i = i[0] if i else None
        token = hf.id_to_token(i) if isinstance(i, int) else None
        if token is not None:
            out[f"{role}_token"] = token
    return out


# Usual names of the role tokens, for a tokenizer.json that comes without its config.
ROLE_NAMES = {
    "eos": ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eos|>", "<|im_end|>"),
    "bos": ("<s>", "<bos>", "<|begin_of_text|>", "<|bos|>", "<|startoftext|>"),
    "pad": ("<pad>", "<|pad|>", "[PAD]"),
    "unk": ("<unk>", "<|unk|>", "[UNK]"),
}


def _roles_from_names(hf: HFTokenizer) -> dict:
    """bos/eos/pad/unk among a tokenizer's special added tokens, by their usual names."""
    added = {t.content for t in hf.get_added_tokens_decoder().values() if t.special}
    out = {}
    for role, names in ROLE_NAMES.items():
        found = next((n for n in names if n in added), None)
        if found is not None:
            out[f"{role}_token"] = found
    return out


def load_tokenizer(spec: str | os.PathLike) -> Tokenizer:
    """--tokenizer given as a path: a tokenizer, model or prepared data directory, or a
    tokenizer.json file (a GGUF file's tokenizer: `scratchlm.interop.gguf.load_tokenizer`)."""
    p = Path(spec)
    if not (p.is_dir() or (p.is_file() and p.suffix.lower() == ".json")):
        raise ScratchLMError(f"--tokenizer {str(spec)!r} is neither 'char', 'bpe', a tokenizer, "
                             f"model or data directory, a tokenizer.json file nor a GGUF file")
    if p.is_dir() and not (p / "tokenizer.json").is_file() and (p / "meta.json").is_file():
        # a prepared data directory (prepare --tokenizer data/general): the tokenizer it names
        name = read_json(p / "meta.json").get("tokenizer")
        if isinstance(name, str):
            p = inside_dir(p, name, source=str(p / "meta.json"))
    return Tokenizer.load(p)


def _token_text(value) -> str | None:
    """A tokenizer_config.json token entry: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def detect_kind(hf: HFTokenizer) -> str:
    """"bpe" for byte-level vocabularies (GPT-2 style), "sentencepiece" for ▁-marked ones."""
    import json

    spec = json.loads(hf.to_str())

    def types(node) -> set[str]:
        if not isinstance(node, dict):
            return set()
        out = {node.get("type")}
        for child in node.get("pretokenizers") or node.get("decoders") or []:
            out |= types(child)
        return out

    found = types(spec.get("pre_tokenizer")) | types(spec.get("decoder"))
    if "ByteLevel" in found:
        return "bpe"
    if "Metaspace" in found or "\u2581" in json.dumps(spec.get("normalizer") or {}, ensure_ascii=False):
        return "sentencepiece"
    return "other"


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
