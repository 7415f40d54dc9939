import json

import numpy as np
import pytest

from scratchlm.data.pretrain import TokenData, prepare
from scratchlm.errors import ScratchLMError
from scratchlm.tokenizers import Tokenizer


def test_prepare_writes_splits_and_meta(char_data, corpus):
    meta = json.loads((char_data / "meta.json").read_text())
    assert meta["dtype"] == "uint16"
    data = TokenData(char_data)
    tok = Tokenizer.load(char_data / "tokenizer")
    n_train, n_val = len(data.splits["train"]), len(data.splits["val"])
    assert 0.05 < n_val / (n_train + n_val) < 0.15
    # The token stream decodes back to the input text, with <|eos|> between documents.
    ids = np.concatenate([data.splits["train"], data.splits["val"]]).tolist()
    assert ids.count(tok.eos_id) == 2
    text = tok.decode(ids)  # eos is skipped
    expected = "".join(p.read_text(encoding="utf-8") for p in sorted(corpus.iterdir()))
    assert text == expected
    assert sum(s["bytes"] for s in meta["splits"].values()) == len(expected.encode())


def test_batches_are_reproducible(char_data):
    data = TokenData(char_data)
    a = data.batch("train", batch_size=3, block_size=16, rng=np.random.default_rng([1, 2]))
    b = data.batch("train", batch_size=3, block_size=16, rng=np.random.default_rng([1, 2]))
    c = data.batch("train", batch_size=3, block_size=16, rng=np.random.default_rng([1, 3]))
    assert (a["input_ids"] == b["input_ids"]).all() and not (a["input_ids"] == c["input_ids"]).all()
    assert (a["input_ids"][:, 1:] == a["labels"][:, :-1]).all()


def test_uint32_for_large_vocab(tmp_path):
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70_000)}
    hf = HF(models.WordLevel(vocab, unk_token="w3"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.add_special_tokens(["<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"])
    (tmp_path / "t.txt").write_text("w1 w2 w69999\n" * 100)
    prepare([tmp_path / "t.txt"], out=tmp_path / "d", tokenizer=Tokenizer(hf, kind="bpe"),
            show_progress=False)
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["dtype"] == "uint32"
    data = TokenData(tmp_path / "d")
    assert data.splits["train"].dtype == np.uint32 and int(data.splits["train"][2]) == 69999


@pytest.mark.parametrize(
    "content, needle",
    [(b"", "empty"), (b"\x00\x01binary\x00", "binary"), (b"caf\xe9 latin-1 text\n" * 3, "not UTF-8")],
)
def test_bad_corpus_errors_leave_nothing(tmp_path, content, needle):
    f = tmp_path / "in.txt"
    f.write_bytes(content)
    with pytest.raises(ScratchLMError, match=needle):
        prepare([f], out=tmp_path / "out", tokenizer="char", show_progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.txt"]  # no temp dirs left behind


def test_missing_input(tmp_path):
    with pytest.raises(ScratchLMError, match="does not exist"):
        prepare([tmp_path / "nope.txt"], out=tmp_path / "out", show_progress=False)


def test_block_size_larger_than_split(char_data):
    with pytest.raises(ScratchLMError, match="block_size"):
        TokenData(char_data).check_block_size(10**7)


def test_windows_cover_every_token_once(char_data):
    data = TokenData(char_data)
    xs, ys = [], []
    for x, y in data.windows("val", block_size=37, batch_size=5):
        assert x.shape == y.shape
        xs.append(x.flatten())
        ys.append(y.flatten())
    arr = np.asarray(data.splits["val"], dtype=np.int64)
    assert np.array_equal(np.concatenate(xs), arr[:-1])
    assert np.array_equal(np.concatenate(ys), arr[1:])


@pytest.mark.parametrize("kind", ["bpe", "bpe-no-tiktoken", "bpe-probe-differs", "char"])
def test_parallel_output_is_byte_identical_to_one_piece_at_a_time(tmp_path, corpus, monkeypatch, kind):
    """Batches encoded in parallel (byte-level BPE: by tiktoken where it gives the same ids,
    else by the tokenizers library's thread pool) write exactly the bytes that encoding one
    piece at a time with the tokenizers library writes, and each document's tokens are those
    of encoding it whole (pieces are cut where the pre-tokenizer splits anyway)."""
    import scratchlm.data.pretrain as P
    from scratchlm.data import readers

    monkeypatch.setattr(readers, "PIECE_CHARS", 500)  # many pieces, several batches
    monkeypatch.setattr(P, "BATCH_CHARS", 4000)
    tok = P.resolve_tokenizer(kind.split("-")[0], files=[corpus], vocab_size=400, show_progress=False)
    if kind == "bpe-no-tiktoken":
        tok._tiktoken = (None, "not installed")
    if kind == "bpe-probe-differs":  # tiktoken disagrees on the corpus' first piece
        monkeypatch.setattr(P, "same_ids", lambda hf, enc, texts: False)
    used = []
    real = P.fast_encoder
    monkeypatch.setattr(P, "fast_encoder", lambda *a, **k: used.append(real(*a, **k)) or used[-1])
    outs = {}
    for parallel in (True, False):
        outs[parallel] = tmp_path / f"p{parallel}"
        prepare([corpus], out=outs[parallel], tokenizer=tok, val_fraction=0.1, parallel=parallel,
                show_progress=False)
    assert [e is not None for e in used] == ([True] if kind == "bpe" else [False] if "bpe" in kind else [])
    for split in ("train", "val"):
        a, b = ((outs[p] / f"{split}.bin").read_bytes() for p in (True, False))
        assert a == b and len(a) > 1000
    # The split point falls in a.txt: train holds its head, val its tail, <|eos|>, then b.txt.
    a_bytes, b_text = (corpus / "a.txt").read_bytes(), (corpus / "b.txt").read_text(encoding="utf-8")
    head = a_bytes[: int(0.9 * (len(a_bytes) + len(b_text.encode())))].decode()
    train, val = (np.fromfile(outs[True] / f"{s}.bin", dtype=np.uint16).tolist() for s in ("train", "val"))
    assert train == tok.encode(head)
    assert val[val.index(tok.eos_id) + 1:] == [*tok.encode(b_text), tok.eos_id]


def test_tokenizer_json_file(tmp_path, corpus, char_data):
    """--tokenizer takes a tokenizer.json file: ours beside its config, or a bare one of
    another library whose end-of-text token is found by its name."""
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers

    meta = prepare([corpus], out=tmp_path / "a", tokenizer=str(char_data / "tokenizer" / "tokenizer.json"),
                   show_progress=False)
    assert meta["vocab_size"] == TokenData(char_data).vocab_size
    assert (tmp_path / "a" / "train.bin").read_bytes() == (char_data / "train.bin").read_bytes()
    hf = HF(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["<|endoftext|>"])
    hf.save(str(tmp_path / "gpt-like.json"))
    (tmp_path / "t.txt").write_text("hello world\n" * 50)
    prepare([tmp_path / "t.txt"], out=tmp_path / "b", tokenizer=str(tmp_path / "gpt-like.json"),
            show_progress=False)
    tok = Tokenizer.load(tmp_path / "b" / "tokenizer")
    assert tok.eos_id == 3 and np.fromfile(tmp_path / "b" / "val.bin", dtype=np.uint16)[-1] == 3
    # a prepared data directory gives the tokenizer its meta.json names (data prepared alike)
    meta = prepare([corpus], out=tmp_path / "d", tokenizer=str(char_data), show_progress=False)
    assert (tmp_path / "d" / "train.bin").read_bytes() == (char_data / "train.bin").read_bytes()
    with pytest.raises(ScratchLMError, match="neither 'char', 'bpe', a tokenizer, model or data directory"):
        prepare([tmp_path / "t.txt"], out=tmp_path / "c", tokenizer=str(tmp_path / "t.txt"),
                show_progress=False)
