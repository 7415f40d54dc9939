import json

import numpy as np
import pytest

from scratchlm.data.pairs import (
    PairData,
    is_pairs_dataset,
    is_pairs_dir,
    load_splits,
    prepare_pairs,
    read_pair_files,
    read_pairs,
)
from scratchlm.data.pretrain import TokenData
from scratchlm.data.seq2seq import collate, encode_sources
from scratchlm.errors import ScratchLMError

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "ran", "far", "away", "big", "dog"]


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Toy 'translation': the target is the source reversed and upper-cased."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        src = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 12))))
        out.append((src, src[::-1].upper()))
    return out


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs") / "data"
    pairs = make_pairs(300)
    prepare_pairs({"train": pairs[:240], "valid": pairs[240:270], "test": pairs[270:]}, out=out,
                  tokenizer="char", show_progress=False)
    return out, pairs


# ----------------------------------------------------------------------------- reading
def test_read_tsv_jsonl_and_two_files(tmp_path):
    (tmp_path / "p.tsv").write_text("hello world\tbonjour le monde\r\nhi\tsalut\n", encoding="utf-8")
    assert read_pairs(tmp_path / "p.tsv").pairs == [("hello world", "bonjour le monde"), ("hi", "salut")]
    lines = [{"src": "a\tb", "tgt": "x\ny"}, {"src": "我喜欢", "tgt": "I like", "id": 3}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    assert read_pairs(tmp_path / "p.jsonl").pairs == [("a b", "x y"), ("我喜欢", "I like")]
    (tmp_path / "a.en").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "a.fr").write_text("un\ndeux", encoding="utf-8")  # no final newline: same count
    assert read_pair_files(tmp_path / "a.en", tmp_path / "a.fr").pairs == [("one", "un"), ("two", "deux")]


@pytest.mark.parametrize("name, content, needle", [
    ("p.tsv", "a\tb\nc\td\te\n", r"p.tsv:2: expected 2 tab-separated columns .* found 3"),
    ("p.tsv", "a\tb\nno tab here\n", r"p.tsv:2: expected 2 .* found 1"),
    ("p.jsonl", '{"src": "a", "tgt": "b"}\n\n{"src": "a", tgt}\n', r"p.jsonl:3: not valid JSON"),
    ("p.jsonl", '{"src": "a", "tgt": "b"}\n{"src": "a"}\n', r'p.jsonl:2: expected an object with string fields "src" and "tgt"'),
    ("p.jsonl", '["a", "b"]\n', r"p.jsonl:1: expected an object"),
    ("p.txt", "a,b\n", r"cannot tell the format of .*p.txt.* name it .tsv"),
    ("p.csv", "a,b\nc,d\n", r"p.csv has no column 'src' \(columns: a, b\); name the right one with --src-field"),
])
def test_malformed_files_name_the_line(tmp_path, name, content, needle):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ScratchLMError, match=needle):
        read_pairs(tmp_path / name)


def test_not_utf8_names_the_line(tmp_path):
    (tmp_path / "p.tsv").write_bytes(b"a\tb\ncaf\xe9\tc\n")
    with pytest.raises(ScratchLMError, match=r"p.tsv:2 is not UTF-8"):
        read_pairs(tmp_path / "p.tsv")


def test_misaligned_files_say_which_is_shorter(tmp_path):
    (tmp_path / "s.txt").write_text("1\n2\n3\n", encoding="utf-8")
    (tmp_path / "t.txt").write_text("1\n2\n3\n4\n5\n", encoding="utf-8")
    with pytest.raises(ScratchLMError, match=r"s.txt has 3 lines but .*t.txt has 5: .*s.txt is shorter, so .*t.txt:4 has no partner"):
        read_pair_files(tmp_path / "s.txt", tmp_path / "t.txt")


def test_empty_sides_skip_with_count_or_refuse(tmp_path, capsys):
    (tmp_path / "p.tsv").write_text("a b\tc d\n\t x\n\ny\t \ne\tf\n", encoding="utf-8")
    got = read_pairs(tmp_path / "p.tsv")
    assert got.pairs == [("a b", "c d"), ("e", "f")] and got.skipped_empty == 3
    assert "skipped 3 pair(s) with an empty side" in capsys.readouterr().err
    assert "p.tsv:2" in got.first_empty
    with pytest.raises(ScratchLMError, match=r"p.tsv:2: the source is empty"):
        read_pairs(tmp_path / "p.tsv", on_empty="refuse")
    (tmp_path / "s").write_text("a\n\nc\n", encoding="utf-8")
    (tmp_path / "t").write_text("x\ny\nz\n", encoding="utf-8")
    with pytest.raises(ScratchLMError, match=r"s:2 / .*t:2: the source is empty"):
        read_pair_files(tmp_path / "s", tmp_path / "t", on_empty="refuse")
    with pytest.raises(ScratchLMError, match="--on-empty must be one of skip, refuse"):
        read_pairs(tmp_path / "p.tsv", on_empty="ignore")


def test_held_out_valid_split_is_fixed(tmp_path):
    pairs = make_pairs(200)
    (tmp_path / "p.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    a = load_splits(tmp_path / "p.tsv", valid_fraction=0.2)
    b = load_splits(tmp_path / "p.tsv", valid_fraction=0.2)
    assert a["val"].pairs == b["val"].pairs and a["train"].pairs == b["train"].pairs
    train_src = {s for s, _ in a["train"].pairs}
    assert not train_src & {s for s, _ in a["val"].pairs}  # a source never straddles splits
    assert sorted(a["train"].pairs + a["val"].pairs) == sorted(pairs)
    # the same rule as the datasets' fixed splits: the first sources by sha256
    from scratchlm.data.libreoffice import split_pairs

    n_src = len({s for s, _ in pairs})
    ref = split_pairs(pairs, test_size=0, val_size=round(0.2 * n_src))
    assert sorted(a["val"].pairs) == sorted(ref["val"]) and sorted(a["train"].pairs) == sorted(ref["train"])


def test_prepare_streams_in_chunks_with_the_same_output(tmp_path, monkeypatch):
    """prepare holds one chunk of pairs at a time: chunks of 3 pairs write the same bytes as
    one chunk of all of them (files, held-out split, over-long handling, empty lines)."""
    from scratchlm.data.pairs import prepare

    pairs = make_pairs(50, seed=3)
    lines = [f"{s}\t{t}\n" for s, t in pairs] + ["\t\n", "x\t\n"]
    (tmp_path / "p.tsv").write_text("".join(lines), encoding="utf-8")
    outs = []
    for chunk in (3, 4096):
        monkeypatch.setattr(prepare, "CHUNK_PAIRS", chunk)
        out = tmp_path / f"c{chunk}"
        prepare_pairs(tmp_path / "p.tsv", out=out, tokenizer="char", max_len=12, on_long="skip",
                      valid_fraction=0.2, show_progress=False)
        outs.append({f.name: f.read_bytes() for f in sorted(out.iterdir()) if f.is_file()})
    assert outs[0] == outs[1]
    meta = json.loads(outs[0]["meta.json"])
    assert meta["splits"]["train"]["skipped_empty"] == 2 and meta["splits"]["train"]["skipped_long"] > 0
    assert meta["splits"]["val"]["skipped_empty"] == 0  # counted once, with the train split
    assert sum(c["pairs"] + c["skipped_long"] for c in meta["splits"].values()) == 50


def test_dataset_directory_and_missing_train(tmp_path):
    (tmp_path / "train.tsv").write_text("a\tb\nc\td\n", encoding="utf-8")
    (tmp_path / "dev.jsonl").write_text('{"src": "e", "tgt": "f"}\n', encoding="utf-8")
    s = load_splits(tmp_path)
    assert s["train"].pairs == [("a", "b"), ("c", "d")] and s["val"].pairs == [("e", "f")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScratchLMError, match="holds no train.tsv or train.jsonl"):
        load_splits(tmp_path / "empty")


# ----------------------------------------------------------------------------- prepared dir
def test_round_trip(pair_dir):
    out, pairs = pair_dir
    data = PairData(out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "pairs" and meta["dtype"] == "uint16"
    assert {s: data.num_pairs(s) for s in ("train", "val", "test")} == {"train": 240, "val": 30, "test": 30}
    assert data.num_pairs("valid") == data.num_pairs("validation") == 30  # the input's name for val
    assert (out / "val.src.bin").is_file() and (out / "val.tsv").is_file()
    assert data.num_pairs("val") == 30  # the Trainer's name for the validation split
    assert data.texts("val") == pairs[240:270] and data.texts("test") == pairs[270:]
    assert data.texts("train") == pairs[:240]  # decoded from tokens: nothing was truncated
    tok = data.tokenizer()
    src, tgt = data.ids("test", 4)
    assert tok.decode(src) == pairs[274][0] and tok.decode(tgt) == pairs[274][1]
    assert data.vocab_size == tok.vocab_size
    assert data.max_src_len == max(len(s) for s, _ in pairs) + 1
    assert data.max_tgt_len == max(len(t) for _, t in pairs) + 1
    assert data.max_len("test") == (max(len(s) for s, _ in pairs[270:]) + 1,
                                    max(len(t) for _, t in pairs[270:]) + 1)
    assert meta["src_lang"] is None and meta["tgt_lang"] is None


def test_directories_refuse_the_wrong_kind(pair_dir, char_data, tmp_path):
    with pytest.raises(ScratchLMError, match="parallel-pairs data directory; train a seq2seq family"):
        TokenData(pair_dir[0])
    with pytest.raises(ScratchLMError, match="not parallel pairs"):
        PairData(char_data)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.tsv").write_text("a\tb\n", encoding="utf-8")
    (raw / "meta.json").write_text(json.dumps({"kind": "pairs-dataset", "tgt_lang": "fr"}))
    with pytest.raises(ScratchLMError, match="holds raw text pairs; tokenize them first"):
        PairData(raw)
    with pytest.raises(ScratchLMError, match="parallel-pairs"):
        TokenData(raw)
    assert is_pairs_dir(pair_dir[0]) and is_pairs_dir(raw) and not is_pairs_dir(char_data)
    assert is_pairs_dataset(raw) and not is_pairs_dataset(pair_dir[0])


def test_batch_tensors(pair_dir):
    data = PairData(pair_dir[0])
    tok = data.tokenizer()
    b = data.batch("train", batch_size=8, rng=np.random.default_rng(0))
    B, S = b["src_ids"].shape
    T = b["tgt_in"].shape[1]
    assert B == 8 and b["labels"].shape == (B, T) and b["src_mask"].shape == (B, S)
    src_len, tgt_len = (x.tolist() for x in data.lengths("train"))
    for i in range(B):
        n = int(b["src_mask"][i].sum())  # real source tokens, eos included
        assert b["src_mask"][i, :n].all() and not b["src_mask"][i, n:].any()
        row = b["src_ids"][i].tolist()
        assert row[n - 1] == tok.eos_id and tok.bos_id not in row
        assert all(x == tok.pad_id for x in row[n:])
        m = int((b["labels"][i] != -100).sum())  # target tokens + eos
        tgt_in, labels = b["tgt_in"][i].tolist(), b["labels"][i].tolist()
        assert tgt_in[0] == tok.bos_id and labels[m - 1] == tok.eos_id
        assert tgt_in[1:m] == labels[: m - 1]  # teacher forcing: inputs are labels shifted right
        assert all(x == tok.pad_id for x in tgt_in[m:]) and all(x == -100 for x in labels[m:])
        assert (n - 1, m - 1) in set(zip(src_len, tgt_len, strict=True))
    assert max(int(b["src_mask"][i].sum()) for i in range(B)) == S  # no all-padding column


def test_collate_exact():
    class Tok:
        pad_id, bos_id, eos_id = 0, 1, 2

    b = collate([[5, 6, 7], [8]], [[9], [10, 11]], tokenizer=Tok())
    assert b["src_ids"].tolist() == [[5, 6, 7, 2], [8, 2, 0, 0]]
    assert b["src_mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert b["tgt_in"].tolist() == [[1, 9, 0], [1, 10, 11]]
    assert b["labels"].tolist() == [[9, 2, -100], [10, 11, 2]]
    only_src = collate([[5]], tokenizer=Tok())
    assert set(only_src) == {"src_ids", "src_mask"}


def test_batches_reproducible_from_seed(pair_dir):
    data = PairData(pair_dir[0])

    def draw(seed):
        rng = np.random.default_rng(seed)
        return [data.batch("train", batch_size=4, rng=rng)["src_ids"] for _ in range(3)]

    a, b, c = draw(1), draw(1), draw(2)
    assert all(x.equal(y) for x, y in zip(a, b, strict=True))
    assert not all(x.shape == y.shape and x.equal(y) for x, y in zip(a, c, strict=True))


def test_length_bucketing_groups_similar_lengths(pair_dir):
    data = PairData(pair_dir[0], bucket_batches=2)
    src_len, _ = data.lengths("train")
    rng = np.random.default_rng(0)
    bucketed, uniform = [], []
    for _ in range(50):
        n = data.batch("train", batch_size=8, rng=rng)["src_mask"].sum(1).numpy()
        bucketed.append(np.ptp(n))
        uniform.append(np.ptp(src_len[rng.choice(len(src_len), size=8, replace=False)]))
    assert np.mean(bucketed) < 0.5 * np.mean(uniform)
    buckets = data.buckets("train", 8)
    assert sorted(np.concatenate(buckets).tolist()) == list(range(240))
    assert all(len(b) >= 8 for b in buckets)


def test_iter_batches_cover_split_once(pair_dir):
    data = PairData(pair_dir[0])
    seen = []
    for idx, b in data.iter_batches("test", batch_size=7):
        assert b["src_ids"].shape[0] == len(idx) <= 7
        for row, i in zip(b["src_mask"].sum(1).tolist(), idx, strict=True):
            assert row == len(data.ids("test", int(i))[0]) + 1
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(30))
    order = [i for idx, _ in data.iter_batches("test", batch_size=7, sort_by_length=False) for i in idx]
    assert order == list(range(30))


@pytest.mark.parametrize("on_long", ["truncate", "skip", "refuse"])
def test_max_len_policies(tmp_path, on_long, capsys):
    pairs = {"train": [("short one", "court"), ("a much longer sentence here", "x")] * 3,
             "valid": [("ok", "ok!")]}
    if on_long == "refuse":
        with pytest.raises(ScratchLMError, match=r"pair 2 of the train split .* source has 27 tokens, over --max-len 10"):
            prepare_pairs(pairs, out=tmp_path / "d", max_len=10, on_long=on_long, show_progress=False)
        assert not (tmp_path / "d").exists()
        return
    meta = prepare_pairs(pairs, out=tmp_path / "d", max_len=10, on_long=on_long, show_progress=False)
    assert meta["max_src_len"] <= 10
    data = PairData(tmp_path / "d")
    if on_long == "truncate":
        assert meta["splits"]["train"]["truncated"] == 3 and data.num_pairs("train") == 6
        assert data.texts("train")[1][0] == "a much lo"  # 9 tokens + eos
        assert "truncated 3 train pair(s)" in capsys.readouterr().err
    else:
        assert meta["splits"]["train"]["skipped_long"] == 3 and data.num_pairs("train") == 3


def test_encode_sources_matches_prepared_batches(pair_dir):
    data = PairData(pair_dir[0])
    idx, b = next(data.iter_batches("val", batch_size=5))
    texts = [data.texts("val")[i][0] for i in idx]
    enc = collate(encode_sources(data.tokenizer(), texts), tokenizer=data.tokenizer())
    assert enc["src_ids"].equal(b["src_ids"]) and enc["src_mask"].equal(b["src_mask"])


def test_existing_tokenizer_and_errors(pair_dir, tmp_path):
    out, pairs = pair_dir
    meta = prepare_pairs({"train": pairs[:20], "valid": pairs[20:25]}, out=tmp_path / "d",
                         tokenizer=str(out / "tokenizer"), show_progress=False)
    assert meta["vocab_size"] == PairData(out).vocab_size
    with pytest.raises(ScratchLMError, match="neither 'char', 'bpe', a tokenizer, model or data directory"):
        prepare_pairs({"train": pairs}, out=tmp_path / "e", tokenizer="nope", show_progress=False)
    with pytest.raises(ScratchLMError, match="the val split is empty"):
        prepare_pairs({"train": pairs, "valid": []}, out=tmp_path / "e", show_progress=False)
    assert not (tmp_path / "e").exists()


def test_a_directory_prepared_with_valid_split_names_still_loads(pair_dir, tmp_path):
    """Before one split naming, prepare wrote valid.* files and a "valid" key in meta.json."""
    import shutil

    out, pairs = pair_dir
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for f in old.glob("val.*"):
        f.rename(old / f.name.replace("val.", "valid.", 1))
    meta = json.loads((old / "meta.json").read_text())
    meta["splits"] = {("valid" if k == "val" else k): v for k, v in meta["splits"].items()}
    (old / "meta.json").write_text(json.dumps(meta))
    data = PairData(old)
    assert data.splits == ["train", "val", "test"]
    assert data.texts("val") == pairs[240:270] and data.num_pairs("valid") == 30
    assert data.max_len("val") == PairData(out).max_len("val")
    with pytest.raises(ScratchLMError, match="has no 'dev2' split"):
        data.num_pairs("dev2")
