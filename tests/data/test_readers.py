"""Reading corpora in the formats they ship in: every format gives the documents the plain
text gives, bad rows are named FILE:LINE (refused or skipped), corrupt files stop in one line
with nothing written, and pieces are cut where the tokens do not change."""

import csv
import gzip
import json
import lzma

import numpy as np
import pytest

from scratchlm.data import readers
from scratchlm.data.pairs import load_splits, read_pairs
from scratchlm.data.pretrain import prepare
from scratchlm.data.sft import iter_records
from scratchlm.errors import ScratchLMError
from scratchlm.tokenizers import Tokenizer, train_tokenizer

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")

DOCS = [f"Document {i}: " + "to be, or not to be, 我喜欢吃苹果。\n" * (i % 4 + 1) + f"The end {i}.\n"
        for i in range(40)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(kind="bpe", texts=DOCS, vocab_size=300)


def stream(out) -> list[int]:
    return np.concatenate([np.fromfile(out / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")]).tolist()


def expected(tok: Tokenizer, docs: list[str]) -> list[int]:
    return [t for d in docs for t in [*tok.encode(d), tok.eos_id]]


def by_split(docs: list[str], f: float = 0.1) -> list[str]:
    """Records' documents as train.bin + val.bin hold them: every 1/f-th is validation."""
    val = [int((i + 1) * f) > int(i * f) for i in range(len(docs))]
    return [d for d, v in zip(docs, val, strict=True) if not v] + [d for d, v in zip(docs, val, strict=True) if v]


def write_records(path, docs, field="text"):
    """`docs` as records in the format `path`'s extensions name."""
    rows = [{field: d, "id": i} for i, d in enumerate(docs)]
    name = path.name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)
        return
    if ".csv" in name or ".tsv" in name:
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=[field, "id"], delimiter="\t" if ".tsv" in name else ",")
        w.writeheader()
        w.writerows(rows)
        data = buf.getvalue().encode()
    elif ".json" in name and ".jsonl" not in name:
        data = json.dumps(rows, ensure_ascii=False).encode()
    else:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if name.endswith(".gz"):
        data = gzip.compress(data)
    elif name.endswith(".xz"):
        data = lzma.compress(data)
    elif name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.parquet", "d.csv", "d.tsv", "d.jsonl.gz",
                                  "d.jsonl.xz", "d.jsonl.zst", "d.csv.gz"])
def test_every_record_format_gives_the_documents(tmp_path, tok, name):
    write_records(tmp_path / name, DOCS, field="body")
    meta = prepare([tmp_path / name], out=tmp_path / "out", tokenizer=tok, field="body",
                   val_fraction=0.1, show_progress=False)
    # Validation: every tenth document, whole (records are never cut).
    val = [DOCS[i] for i in (9, 19, 29, 39)]
    assert stream(tmp_path / "out") == expected(tok, by_split(DOCS))
    assert meta["splits"]["val"]["tokens"] == len(expected(tok, val))


def test_compressed_text_directories_and_globs(tmp_path, tok):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt.gz").write_bytes(gzip.compress(DOCS[0].encode()))
    (d / "b.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(DOCS[1].encode()))
    (d / "c.txt").write_text(DOCS[2], encoding="utf-8")  # the split point falls in here
    (d / ".hidden.txt").write_text("never read", encoding="utf-8")
    prepare([d], out=tmp_path / "o1", tokenizer=tok, val_fraction=0.3, show_progress=False)
    ids = stream(tmp_path / "o1")  # c.txt is cut at the split point, its tokens there differ
    assert tok.decode(ids) == "".join(DOCS[:3]) and ids.count(tok.eos_id) == 3
    prepare([str(d / "*.txt*")], out=tmp_path / "o2", tokenizer=tok, val_fraction=0.3,
            show_progress=False)
    assert stream(tmp_path / "o2") == stream(tmp_path / "o1")
    with pytest.raises(ScratchLMError, match="no file matches"):
        prepare([str(d / "*.parquet")], out=tmp_path / "o3", tokenizer=tok, show_progress=False)


def test_directory_of_records_skips_other_files(tmp_path, tok, capsys):
    write_records(tmp_path / "train-0.parquet", DOCS[:20])
    write_records(tmp_path / "train-1.parquet", DOCS[20:])
    (tmp_path / "README.md").write_text("# a dataset card\n", encoding="utf-8")
    prepare([tmp_path], out=tmp_path / "out", tokenizer=tok, show_progress=False)
    assert stream(tmp_path / "out") == expected(tok, by_split(DOCS))
    assert "skipping 1 other file(s) such as README.md" in capsys.readouterr().err


def test_hf_datasets_directory(tmp_path, tok):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": DOCS, "n": list(range(len(DOCS)))})
    ds.save_to_disk(str(tmp_path / "single"), max_shard_size="2KB")  # several arrow files
    assert len(list((tmp_path / "single").glob("data-*.arrow"))) > 1
    prepare([tmp_path / "single"], out=tmp_path / "o1", tokenizer=tok, show_progress=False)
    assert stream(tmp_path / "o1") == expected(tok, by_split(DOCS))
    dd = datasets.DatasetDict({"train": ds.select(range(30)), "test": ds.select(range(30, 40))})
    dd.save_to_disk(str(tmp_path / "dict"))
    prepare([tmp_path / "dict"], out=tmp_path / "o2", tokenizer=tok, show_progress=False)
    assert stream(tmp_path / "o2") == expected(tok, by_split(DOCS[:30]))  # the train split only
    # Pairs: a DatasetDict's train/validation are the splits.
    pairs = datasets.Dataset.from_dict({"en": ["one", "two", "three"], "fr": ["un", "deux", "trois"]})
    datasets.DatasetDict({"train": pairs, "validation": pairs.select([0])}).save_to_disk(str(tmp_path / "p"))
    splits = load_splits(tmp_path / "p", src_field="en", tgt_field="fr")
    assert splits["train"].pairs == [("one", "un"), ("two", "deux"), ("three", "trois")]
    assert splits["val"].pairs == [("one", "un")]


@pytest.mark.parametrize("content, needle", [
    ('{"text": "a"}\n{"text": "b"\n{"text": "c"}\n', r"d.jsonl:2: not valid JSON"),
    ('{"text": "a"}\n{"body": "b"}\n', r"d.jsonl:2: no 'text' field \(fields: body\); name the right one with --text-field"),
    ('{"text": "a"}\n{"text": 3}\n', r"d.jsonl:2: 'text' is int, not a string"),
    ('{"text": "a"}\n[1, 2]\n', r"d.jsonl:2: expected an object"),
])
def test_bad_rows_are_named_refused_or_skipped(tmp_path, tok, content, needle):
    f = tmp_path / "d.jsonl"
    f.write_text(content * 20, encoding="utf-8")
    with pytest.raises(ScratchLMError, match=needle + r".*--on-bad skip"):
        prepare([f], out=tmp_path / "out", tokenizer=tok, show_progress=False)
    assert not (tmp_path / "out").exists()
    meta = prepare([f], out=tmp_path / "out", tokenizer=tok, on_bad="skip", show_progress=False)
    assert meta["skipped_bad"] == 20 and stream(tmp_path / "out").count(tok.eos_id) >= 20


def test_unknown_column_is_one_line(tmp_path, tok):
    write_records(tmp_path / "d.jsonl", DOCS, field="body")
    with pytest.raises(ScratchLMError, match=r"d.jsonl:1: no 'text' field \(fields: body, id\); name the right one with --text-field$"):
        prepare([tmp_path / "d.jsonl"], out=tmp_path / "out", tokenizer=tok, on_bad="skip",
                show_progress=False)  # a wrong name, not a bad row: refused even with skip
    write_records(tmp_path / "d.parquet", DOCS)
    with pytest.raises(ScratchLMError, match=r"d.parquet has no column 'content' \(columns: text, id\); name the right one with --text-field"):
        prepare([tmp_path / "d.parquet"], out=tmp_path / "out", tokenizer=tok, field="content",
                show_progress=False)


@pytest.mark.parametrize("name", ["d.jsonl.gz", "d.jsonl.xz", "d.jsonl.zst", "d.parquet", "d.txt.gz"])
def test_corrupt_or_truncated_files_stop_with_nothing_written(tmp_path, tok, name):
    f = tmp_path / name
    write_records(f, DOCS * 20) if not name.startswith("d.txt") else f.write_bytes(
        gzip.compress("".join(DOCS * 20).encode()))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] + bytes(64) + data[len(data) // 2 + 64:] if name.endswith(".gz")
                  else data[: len(data) // 2])
    with pytest.raises(ScratchLMError, match=r"corrupt|truncated|not a readable") as e:
        prepare([f], out=tmp_path / "out", tokenizer=tok, show_progress=False)
    assert "\n" not in str(e.value) and str(f) in str(e.value)
    assert not (tmp_path / "out").exists()


def test_not_utf8_text_names_the_line(tmp_path, tok):
    (tmp_path / "t.txt").write_bytes(b"fine\nstill fine\ncaf\xe9\n")
    with pytest.raises(ScratchLMError, match=r"t.txt:3: not UTF-8"):
        prepare([tmp_path / "t.txt"], out=tmp_path / "out", tokenizer=tok, show_progress=False)


TRICKY = ["a\n\nb", "a \n b", "x\r\ny\r\n\r\nz", "  \n\tz", "end.\nNext", "\u3000\n\u3000x",
          "a\xa0\nb", "我\n喜欢\n\n吃", "'s\n're", "1234\n5678", "tab\t\nnext", "<|eos|>\n<|eos|>x",
          "trailing   \nspace", "a\n", "\n\nb\n", "word\n   indented\nline"]


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_pieces_encode_like_the_whole_text(monkeypatch, kind):
    """Cut at every place cut_point allows, the tokens equal encoding the text whole."""
    text = "".join(TRICKY) * 3
    tok = train_tokenizer(kind=kind, texts=[text, *DOCS], vocab_size=320)
    monkeypatch.setattr(readers, "PIECE_CHARS", 1)
    pieces = list(readers.split_pieces(text))
    assert "".join(pieces) == text and len(pieces) > 20
    got = [t for p in pieces for t in tok.encode(p)]
    assert got == tok.encode(text)


def test_long_line_without_newlines_is_cut_bounded(monkeypatch):
    monkeypatch.setattr(readers, "PIECE_CHARS", 10)
    monkeypatch.setattr(readers, "MAX_PIECE_CHARS", 40)
    text = "word " * 100 + "x" * 100
    pieces = list(readers.split_pieces(text))
    assert "".join(pieces) == text and max(map(len, pieces)) <= 40
    assert all(p.endswith("word") or p.startswith(" ") or "x" in p for p in pieces[1:-1])


def test_pairs_from_fields_and_header_tsv(tmp_path):
    rows = [{"en": "hello", "fr": "bonjour"}, {"en": "yes", "fr": "oui"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    assert read_pairs(tmp_path / "p.parquet", src_field="en", tgt_field="fr").pairs == [
        ("hello", "bonjour"), ("yes", "oui")]
    (tmp_path / "p.tsv").write_text("id\tfr\ten\n1\tbonjour\thello\n2\toui\tyes\n", encoding="utf-8")
    assert read_pairs(tmp_path / "p.tsv", src_field="en", tgt_field="fr").pairs == [
        ("hello", "bonjour"), ("yes", "oui")]
    (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress(
        b'{"en": "hello", "fr": "bonjour"}\n{"en": "yes"}\n{"en": "no", "fr": "non"}\n'))
    with pytest.raises(ScratchLMError, match=r"p.jsonl.gz:2: expected an object with string fields \"en\" and \"fr\""):
        read_pairs(tmp_path / "p.jsonl.gz", src_field="en", tgt_field="fr")
    got = read_pairs(tmp_path / "p.jsonl.gz", src_field="en", tgt_field="fr", on_bad="skip")
    assert got.pairs == [("hello", "bonjour"), ("no", "non")]


def test_sft_records_from_parquet_and_compressed_jsonl(tmp_path):
    records = [{"messages": [{"role": "user", "content": f"q{i}"},
                             {"role": "assistant", "content": f"a{i}"}]} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "chat.parquet")
    (tmp_path / "chat.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps(r) + "\n" for r in records).encode()))
    for name in ("chat.parquet", "chat.jsonl.zst"):
        got = list(iter_records(tmp_path / name))
        assert [r for _, r, _ in got] == records and [n for n, _, _ in got] == [1, 2, 3, 4, 5]


def test_cli_formats_and_one_line_errors(tmp_path, capfd):
    import os
    import subprocess
    import sys

    from tests.cli.test_cli import cli_in_process

    def cli(*args):  # the real command: the corrupt gzip file below
        return subprocess.run([sys.executable, "-m", "scratchlm", "prepare", *map(str, args)],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})

    def in_process(*args):  # the others: the same `main`, in this process
        return cli_in_process(capfd, "prepare", *args)

    write_records(tmp_path / "d.parquet", DOCS, field="content")
    ok = in_process(tmp_path / "d.parquet", "--text-field", "content", "--out", tmp_path / "o", "--tokenizer", "char")
    assert ok.returncode == 0, ok.stderr
    assert "MB/s" in ok.stdout and (tmp_path / "o" / "train.bin").is_file()
    gz = tmp_path / "bad.jsonl.gz"
    write_records(gz, DOCS * 10)
    gz.write_bytes(gz.read_bytes()[:-100])
    for run, args, needle in [
            (cli, (gz,), "corrupt or truncated gzip file"),
            (in_process, (tmp_path / "d.parquet",), "has no column 'text' (columns: content, id)")]:
        proc = run(*args, "--out", tmp_path / "x", "--tokenizer", "char")
        assert proc.returncode == 1 and needle in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
        assert not (tmp_path / "x").exists()
