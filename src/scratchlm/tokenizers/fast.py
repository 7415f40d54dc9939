"""A tiktoken encoder for a byte-level BPE tokenizer, used only where it gives the same ids.

tiktoken (Rust, GIL released) encodes byte-level BPE about 4x faster than the tokenizers
library here (docs/benchmarks.md, prepare_speed). Its algorithm differs from the tokenizers
library's BPE in three ways, each checked before it is used:

- it splits text with one regex (`pat_str`): the GPT-2 pattern is what a `ByteLevel`
  pre-tokenizer with `use_regex=True, add_prefix_space=False` applies, and nothing else
  (no normalizer, no other pre-tokenizer) may change the text first;
- it merges the adjacent pair whose concatenation has the lowest rank, where the tokenizers
  library merges the pair with the lowest merge index: the ranks must follow the merges
  (every multi-byte token is the result of exactly one merge, and result ids grow with the
  merge index, which is what the library's trainer writes);
- it returns a pre-tokenized word at once when the word is itself a token: every vocabulary
  token that is valid text is encoded both ways and must give the same ids.

Added tokens become tiktoken special tokens, all allowed: the tokenizers library splits them
out of any text (add_special_tokens=False only drops post-processor templates), and so does
tiktoken's `encode(..., allowed_special="all")`. Their flags must be plain (no lstrip, rstrip,
single_word) and none may be a prefix of another (the library takes the longest match,
tiktoken the first alternative).

These checks and a probe text (contractions, whitespace runs, digits, CJK, emoji, special
tokens inside words) make the choice; `scratchlm prepare` also compares the two encoders on
its first piece of the corpus and falls back to the tokenizers library if they differ.
Anything that fails a check keeps the tokenizers library (`reason` says why).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tiktoken import Encoding
    from tokenizers import Tokenizer as HFTokenizer

# GPT-2's pre-tokenizer regex, as tiktoken writes it (r50k_base); the tokenizers library's
# ByteLevel(use_regex=True) applies the same: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|...
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

PROBE = (
    "It's 'the' we'll they've I'd you're she'S don't 'll ''s\n\n\n  \t\r\n    x  \n"
    "Numbers 12345 3.14 ٣٤٥ Ⅻ ½ and 1st 2nd, CamelCase snake_case a.b.c!!! ... ?!?\n"
    "我喜欢吃苹果。你好，世界！ 日本語のテキスト 한국어 텍스트 Ελληνικά Русский текст עברית العربية\n"
    "emoji 🙂👍🏽👨‍👩‍👧 e\u0301 ﬁ \u00a0nbsp\u2003em\u3000ideo \u200bzw \x00\x1f\x7f\x85 end   "
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map of the 256 bytes to printable characters (the ByteLevel alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def _pattern(pre: dict | None) -> str | None:
    """tiktoken's pat_str for a pre-tokenizer, or None where it has none."""
    if pre and pre.get("type") == "Sequence" and len(pre.get("pretokenizers") or []) == 1:
        pre = pre["pretokenizers"][0]
    if (pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space")):
        return GPT2_PATTERN
    return None


def tiktoken_encoding(hf: HFTokenizer, *, name: str = "scratchlm") -> tuple[Encoding | None, str]:
    """A tiktoken Encoding giving the ids `hf.encode(text, add_special_tokens=False)` gives,
    and "" -- or None and the reason there is none."""
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    spec = json.loads(hf.to_str())
    model = spec.get("model") or {}
    if spec.get("normalizer") is not None:
        return None, "the tokenizer has a normalizer"
    if spec.get("truncation") is not None or spec.get("padding") is not None:
        return None, "the tokenizer truncates or pads"
    pat = _pattern(spec.get("pre_tokenizer"))
    if pat is None:
        return None, "its pre-tokenizer is not ByteLevel(use_regex=True, add_prefix_space=False)"
    if (model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix")
            or model.get("end_of_word_suffix") or model.get("byte_fallback")):
        return None, "its model is not a plain BPE (dropout, prefixes or byte fallback)"
    added = spec.get("added_tokens") or []
    specials = {t["content"]: t["id"] for t in added}
    if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
        return None, "an added token strips whitespace or matches single words only"
    if any(a != b and b.startswith(a) for a in specials for b in specials):
        return None, "one added token is a prefix of another"
    u2b = {c: b for b, c in bytes_to_unicode().items()}
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    # Added tokens may sit in the model's vocabulary too (ours do), under the same id.
    if any(vocab.pop(t, i) != i for t, i in specials.items()):
        return None, "an added token has another id in the model's vocabulary"
    if set(specials.values()) & set(vocab.values()):
        return None, "an added token's id is also a vocabulary token's"
    if any(c not in vocab for c in u2b):
        return None, "its vocabulary lacks some of the 256 byte tokens"
    try:
        ranks = {bytes(u2b[c] for c in t): i for t, i in vocab.items()}
    except KeyError:
        return None, "its vocabulary has tokens outside the byte-level alphabet"
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    results = [vocab.get(a + b) for a, b in merges]
    if None in results or results != sorted(set(results)) or len(vocab) != 256 + len(merges):
        return None, "its token ids do not follow its merges (rank order differs from merge order)"
    enc = tiktoken.Encoding(name, pat_str=pat, mergeable_ranks=ranks, special_tokens=specials)
    texts = [PROBE, PROBE * 3 + "".join(specials)]
    for t in vocab:
        try:
            texts.append(bytes(u2b[c] for c in t).decode("utf-8"))
        except UnicodeDecodeError:
            continue  # never a whole word of valid text
    texts += [f"x{s}y {s}{s}\n{s} z" for s in specials]
    if not same_ids(hf, enc, texts):
        return None, "it gives other ids than the tokenizers library on the probe text"
    return enc, ""


def same_ids(hf: HFTokenizer, enc: Encoding, texts: list[str]) -> bool:
    """Whether tiktoken and the tokenizers library encode every text to the same ids."""
    ours = [enc.encode(t, allowed_special="all") for t in texts]  # a thread each: slower here
    theirs = [e.ids for e in hf.encode_batch_fast(texts, add_special_tokens=False)]
    return ours == theirs
