"""tiktoken for our byte-level BPE (tokenizers/fast.py): the same ids as the tokenizers
library on real text and edge cases, and the tokenizers library wherever that is not sure."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import normalizers, pre_tokenizers

from scratchlm.data.sources import shakespeare_sample_path
from scratchlm.tokenizers import SPECIAL_TOKENS, Tokenizer, train_tokenizer
from scratchlm.tokenizers.fast import tiktoken_encoding

pytest.importorskip("tiktoken")

# Tang and Song poems and sayings (public domain), with the punctuation of the fortunes-zh text.
CHINESE = """床前明月光，疑是地上霜。举头望明月，低头思故乡。
春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。
白日依山尽，黄河入海流。欲穷千里目，更上一层楼。
明月几时有？把酒问青天。不知天上宫阙，今夕是何年。
我欲乘风归去，又恐琼楼玉宇，高处不胜寒。起舞弄清影，何似在人间。
天下大势，分久必合，合久必分。——《三国演义》
学而时习之，不亦说乎？有朋自远方来，不亦乐乎？人不知而不愠，不亦君子乎？
知之为知之，不知为不知，是知也。  三人行，必有我师焉。
"""


def shakespeare() -> str:
    return shakespeare_sample_path().read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    text = shakespeare()
    return train_tokenizer(kind="bpe", texts=[text[:100_000], CHINESE * 30], vocab_size=1500)


def hf_ids(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.hf.encode_batch(texts, add_special_tokens=False)]


def tt_ids(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    enc, why = tok.tiktoken_encoding()
    assert enc is not None, why
    return [enc.encode_to_numpy(t, allowed_special="all").tolist() for t in texts]


def test_real_text_gives_the_same_ids(tok):
    """The whole shipped Shakespeare sample (141 KB, most of it unseen in training) and the
    Chinese text, whole and in lines."""
    texts = [shakespeare(), CHINESE, *shakespeare().splitlines(keepends=True)[:3000],
             *CHINESE.splitlines()]
    ours = tt_ids(tok, texts)
    assert ours == hf_ids(tok, texts)
    assert len(ours[0]) > 30_000 and len(set(ours[0])) > 800  # merges used, not just bytes


EDGE_CASES = [
    "", " ", "  ", "\n", "\n\n\n", " \n ", "\t\t x", "x   ", "   x", "a  b   c    d",
    "\r\n\r\n", "trailing spaces   \n   leading", "\u00a0\u2003\u3000\u200b mixed spaces",
    "It's can't we'll they've I'd you're 'S 'LL ''s", "isn't it's' '", "O'Neill's",
    "1234567890 3.14 1,000,000 ٣٤٥ Ⅻ ½ 2nd", "snake_case CamelCase kebab-case a.b.c",
    "!!!???... ---- ==== ____", "emoji 🙂👍🏽👨‍👩‍👧 🏳️‍🌈", "e\u0301 ﬁ Å Å", "\x00\x01\x1f\x7f\x85",
    "日本語のテキスト 한국어 Ελληνικά Русский עברית العربية हिन्दी ไทย",
    "<|eos|>", "text<|eos|>more", "<|eos|><|bos|><|pad|><|unk|>", " <|eos|> ", "<|eos|",
    "<|eos|>\n\n<|eos|>   ", "a<|eos|>'s", "<|<|eos|>|>", "<|endoftext|> is not ours",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_give_the_same_ids(tok, text):
    """Whitespace runs, contractions, digits, scripts, emoji, control characters, and special
    tokens inside text (both encoders split them out as their ids)."""
    assert tt_ids(tok, [text]) == hf_ids(tok, [text])


def test_every_basic_plane_code_point_gives_the_same_ids(tok):
    """Each code point of the basic multilingual plane (and every 61st above it) between
    letters, digits, spaces and an apostrophe: the two regex engines agree on what is a
    letter, a number and a space."""
    cps = [c for c in range(1, 0x10000) if not 0xD800 <= c < 0xE000] + list(range(0x10000, 0x110000, 61))
    texts = []
    for i in range(0, len(cps), 2048):
        chunk = [chr(c) for c in cps[i:i + 2048]]
        texts.append("".join(f"a{c}b {c}1 {c}{c}'s{c} " for c in chunk))
        texts.append("".join(chunk))
    assert tt_ids(tok, texts) == hf_ids(tok, texts)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("abcdeth ABC'\n\t 12.!我明月🙂\u00a0")
                                + ["<|eos|>", "'s", "  ", "the", " and", "ing", "<|"]), max_size=40))
def test_random_text_gives_the_same_ids(tok, parts):
    text = "".join(parts)
    assert tt_ids(tok, [text]) == hf_ids(tok, [text])


def test_other_tokenizers_keep_the_tokenizers_library(tok):
    """Whatever tiktoken cannot reproduce exactly says why and gets no encoding."""
    def variant(edit) -> HFTokenizer:
        hf = HFTokenizer.from_str(tok.hf.to_str())
        edit(hf)
        return hf

    def no_fast(hf: HFTokenizer) -> str:
        enc, why = tiktoken_encoding(hf)
        assert enc is None and why
        return why

    assert "normalizer" in no_fast(variant(lambda hf: setattr(hf, "normalizer", normalizers.NFC())))
    assert "pre-tokenizer" in no_fast(variant(
        lambda hf: setattr(hf, "pre_tokenizer", pre_tokenizers.ByteLevel(add_prefix_space=True))))
    assert "pre-tokenizer" in no_fast(variant(lambda hf: setattr(hf, "pre_tokenizer", pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]))))
    # Two merges swapped: ranks no longer follow merge order.
    spec = json.loads(tok.hf.to_str())
    merges = spec["model"]["merges"]
    merges[10], merges[11] = merges[11], merges[10]
    assert "merges" in no_fast(HFTokenizer.from_str(json.dumps(spec)))
    char = train_tokenizer(kind="char", texts=["abc"])
    assert char.tiktoken_encoding()[0] is None
    assert tok.tiktoken_encoding()[0] is not None and SPECIAL_TOKENS[0] in tok.tiktoken_encoding()[0].special_tokens_set
