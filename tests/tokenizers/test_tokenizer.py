import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.errors import ScratchLMError
from scratchlm.tokenizers import SPECIAL_TOKENS, Tokenizer, train_tokenizer

TRAIN_TEXT = ["To be, or not to be: that is the question.\n" * 30, "我喜欢吃苹果。" * 10]
# Valid Unicode text (no lone surrogates); special-token strings are reserved.
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200).filter(
    lambda s: not any(t in s for t in SPECIAL_TOKENS)
)


@pytest.fixture(scope="module", params=["char", "bpe"])
def tok(request):
    return train_tokenizer(kind=request.param, texts=TRAIN_TEXT, vocab_size=400)


def test_chinese_round_trip(tok):
    ids = tok.encode("我喜欢吃苹果")
    assert tok.decode(ids) == "我喜欢吃苹果"


@settings(max_examples=200, deadline=None)
@given(text=TEXT)
def test_any_text_round_trips(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=50, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("😀🎉👍🏽中文日本語한국어é\u0301\n\t "), max_size=60))
def test_emoji_and_cjk_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_specials_and_save_load(tok, tmp_path):
    assert len({tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id}) == 4
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.kind == tok.kind and again.vocab_size == tok.vocab_size
    s = "Hello, 世界! 🌍"
    assert again.encode(s) == tok.encode(s)
    assert tok.encode("ab", add_bos=True)[0] == tok.bos_id


def test_char_is_one_token_per_seen_character():
    t = train_tokenizer(kind="char", texts=["abc"])
    assert len(t.encode("abcabc")) == 6
    assert t.decode(t.encode("xyz")) == "xyz"  # unseen: byte fallback


def test_token_byte_lengths_sum_to_utf8_length(tok):
    s = "Thy 苹果 is 😀!"
    lengths = tok.token_byte_lengths()
    assert sum(int(lengths[i]) for i in tok.encode(s)) == len(s.encode("utf-8"))


def test_transformers_loads_our_tokenizer(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    s = "To be 我喜欢"
    assert hf(s, add_special_tokens=False)["input_ids"] == tok.encode(s)
    assert hf.eos_token_id == tok.eos_id


def test_errors(tmp_path):
    with pytest.raises(ScratchLMError, match="too small"):
        train_tokenizer(kind="bpe", texts=["a"], vocab_size=10)
    with pytest.raises(ScratchLMError, match="unknown tokenizer kind"):
        train_tokenizer(kind="wordpiece", texts=["a"])
    with pytest.raises(ScratchLMError, match="no tokenizer.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ScratchLMError, match="not a valid tokenizer"):
        Tokenizer.load(tmp_path)


CHAR_TOK = train_tokenizer(kind="char", texts=TRAIN_TEXT)


@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.one_of(st.characters(blacklist_categories=("Cs",)),
                               st.sampled_from(["T", "o", " ", "我", "<|eos|>", "<|pad|>"])),
                     max_size=100).map("".join))
def test_char_fast_path_equals_the_hf_tokenizer(text):
    """The char tokenizer's table lookup gives exactly HF's ids: seen characters, unseen ones
    (byte fallback) and special-token strings inside the text."""
    assert CHAR_TOK.encode(text) == CHAR_TOK.hf.encode(text, add_special_tokens=False).ids
