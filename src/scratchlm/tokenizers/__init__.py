"""Tokenizers: character-level and byte-level BPE, both stored as a Hugging Face tokenizer.json.

    tok = train_tokenizer(kind="bpe", texts=iter_lines, vocab_size=8000)
    tok.save("tok/"); tok = Tokenizer.load("tok/")
    ids = tok.encode("我喜欢吃苹果"); assert tok.decode(ids) == "我喜欢吃苹果"
"""

from scratchlm.tokenizers.tokenizer import (
    SPECIAL_TOKENS,
    Tokenizer,
    load_tokenizer,
    train_tokenizer,
)

__all__ = ["SPECIAL_TOKENS", "Tokenizer", "load_tokenizer", "train_tokenizer"]
