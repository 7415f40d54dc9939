"""TextStream: incremental detokenization. What it streams, joined, is what decoding the whole
row gives (multi-byte characters split across tokens included), it cuts at stop strings, and
each token costs a bounded amount of decoding however long the row is."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models

from scratchlm.generate.decode import TextStream
from scratchlm.tokenizers import train_tokenizer

TEXT = ("你好，世界！今天天气很好。🙂👍🏽 naïve café — 中文测试：机器学习。"
        "Emoji: 🎉🚀 and 𝄞 (four bytes). 我们一起学习语言模型吧！\n")


@pytest.fixture(scope="module")
def bpe():
    """Byte-level BPE with few merges: most CJK characters and every emoji are split over
    several tokens."""
    return train_tokenizer(kind="bpe", texts=[TEXT * 3, "plain ascii text " * 20],
                           vocab_size=300)


class Counting:
    """A tokenizer whose decode counts the ids it is given."""

    def __init__(self, tok) -> None:
        self.tok, self.decoded = tok, 0

    def decode(self, ids) -> str:
        ids = list(ids)
        self.decoded += len(ids)
        return self.tok.decode(ids)


def stream(tok, ids: list[int], stop: list[str] | None = None) -> tuple[list[str], TextStream]:
    s = TextStream(tok, stop or [])
    pieces = []
    for t in ids:
        if s.done:
            break
        pieces.append(s.push(t))
    if not s.done:
        pieces.append(s.finish())
    return [p for p in pieces if p], s


def test_streamed_pieces_are_the_whole_decode_with_chinese_and_emoji(bpe):
    ids = bpe.encode(TEXT * 2)
    assert any("\ufffd" in bpe.decode([i]) for i in ids)  # tokens do split characters
    pieces, s = stream(bpe, ids)
    assert "".join(pieces) == s.text == bpe.decode(ids) == TEXT * 2
    assert not any("\ufffd" in p for p in pieces)  # never half a character
    assert len(pieces) > len(ids) // 4  # streamed as it goes, not all at the end


def test_random_tokens_stream_what_the_whole_decode_gives(bpe):
    """Any ids (special tokens, lone bytes that are not valid UTF-8, characters cut at the
    end): the pieces join to the whole row's decode."""
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(bpe.vocab_size) for _ in range(rng.randrange(1, 40))]
        pieces, s = stream(bpe, ids)
        assert "".join(pieces) == s.text == bpe.decode(ids)


def test_decoding_work_is_linear_in_the_tokens(bpe):
    ids = bpe.encode(TEXT * 40)  # thousands of tokens
    counting = Counting(bpe)
    pieces, _ = stream(counting, ids)
    assert "".join(pieces) == TEXT * 40
    # The whole row decoded each token would be len(ids)**2 / 2 ids; a window of the last
    # few tokens is a small constant per token.
    assert len(ids) > 2000 and counting.decoded <= 8 * len(ids)


def test_stop_strings_across_tokens_and_held_back_text(bpe):
    ids = bpe.encode(TEXT)
    pieces, s = stream(bpe, ids, stop=["天气很好"])
    assert s.done and "".join(pieces) == s.text == "你好，世界！今天"
    # The earliest of several stop strings wins, whichever is listed first.
    pieces, s = stream(bpe, ids, stop=["🚀", "café"])
    assert "".join(pieces) == TEXT[: TEXT.index("café")]
    # A stop string that never completes holds nothing back at the end.
    pieces, s = stream(bpe, ids, stop=["学习语言模型呢"])
    assert not s.done and "".join(pieces) == TEXT


def test_pieces_hold_back_only_a_possible_stop_string(bpe):
    s = TextStream(bpe, ["。🙂"])
    out = "".join(s.push(t) for t in bpe.encode("你好。"))
    assert out == "你好"  # "。" may start the stop string
    out += "".join(s.push(t) for t in bpe.encode("🙂 next"))
    assert s.done and out == "你好"


def test_sentencepiece_style_decoder_with_byte_fallback():
    """A Llama-2-like tokenizer: "▁" for spaces, <0xNN> byte tokens for characters outside
    the vocabulary, and the leading space of the text stripped."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["▁", "▁the", "▁cat", "▁sat", "中", "文", "。", "▁on"]:
        vocab[piece] = len(vocab)
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                    decoders.Fuse(), decoders.Strip(" ", 1, 0)])

    class Tok:
        def decode(self, ids):
            return hf.decode(list(ids))

    emoji = [3 + b for b in "🙂".encode()]  # one character, four byte tokens
    zh = [3 + b for b in "语".encode()]
    ids = [vocab["▁the"], vocab["▁cat"], *emoji, vocab["▁sat"], vocab["中"], *zh, vocab["文"],
           vocab["。"], vocab["▁on"], *emoji]
    whole = hf.decode(ids)
    assert whole == "the cat🙂 sat中语文。 on🙂"
    pieces, s = stream(Tok(), ids)
    assert "".join(pieces) == s.text == whole and not any("\ufffd" in p for p in pieces)
    cut, s = stream(Tok(), ids[:-1])  # ends inside the emoji: a replacement character
    assert "".join(cut) == hf.decode(ids[:-1]) and cut[-1].endswith("\ufffd")


def test_a_row_ended_from_outside_still_gets_its_last_bytes(bpe):
    """`generate` marks a row done when <eos> comes; what finish() returns then is the rest
    of the text, a character cut short included (as U+FFFD, as the whole decode has it)."""
    ids = bpe.encode("好🙂")
    cut = ids[:-1]
    assert bpe.decode(cut).endswith("\ufffd")
    s = TextStream(bpe, [])
    out = "".join(s.push(t) for t in cut)
    s.done = True  # what generate does on <eos>
    out += s.finish()
    assert out == s.text == bpe.decode(cut)
