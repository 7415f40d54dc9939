"""`scratchlm prepare` of translation pairs and `datasets get libreoffice-*` errors, end to end."""

import json

from scratchlm.data.pairs import PairData
from tests.cli.test_cli import assert_clean_error, cli, cli_in_process

PAIRS = [(f"the cat number {i} sat on the mat", f"le chat numéro {i} était assis sur le tapis")
         for i in range(60)]


def write_dataset(d):
    d.mkdir()
    for name, rows in [("train", PAIRS[:40]), ("valid", PAIRS[40:50]), ("test", PAIRS[50:])]:
        (d / f"{name}.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in rows), encoding="utf-8")
    (d / "meta.json").write_text(json.dumps({"kind": "pairs-dataset", "src_lang": "en-us",
                                             "tgt_lang": "fr"}))
    return d


def test_prepare_dataset_dir_and_two_files(tmp_path, capfd):
    ds = write_dataset(tmp_path / "ds")
    out = cli("prepare", ds, "--out", tmp_path / "data", "--tokenizer", "bpe", "--vocab-size", "300")
    assert "40 train, 10 val, 10 test pairs" in out.stdout
    data = PairData(tmp_path / "data")
    assert data.texts("test") == PAIRS[50:]
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["tokenizer_kind"] == "bpe" and (meta["src_lang"], meta["tgt_lang"]) == ("en-us", "fr")

    (tmp_path / "a.en").write_text("".join(s + "\n" for s, _ in PAIRS), encoding="utf-8")
    (tmp_path / "a.fr").write_text("".join(t + "\n" for _, t in PAIRS), encoding="utf-8")
    out = cli_in_process(  # the same `main` in this process (the real command ran above)
        capfd, "prepare", "--src-file", tmp_path / "a.en", "--tgt-file", tmp_path / "a.fr",
        "--out", tmp_path / "d2", "--tokenizer", tmp_path / "data" / "tokenizer",
        "--valid-fraction", "0.2", "--max-len", "8", "--on-long", "truncate", "--tgt-lang", "fr")
    assert out.returncode == 0, out.stderr
    assert "48 train, 12 val pairs" in out.stdout and "truncated 48 train pair(s)" in out.stderr
    assert PairData(tmp_path / "d2").max_src_len == 8
    assert PairData(tmp_path / "d2").meta["tgt_lang"] == "fr"


def test_prepare_jsonl_with_format_pairs(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"src": s, "tgt": t}) + "\n" for s, t in PAIRS), encoding="utf-8")
    out = cli("prepare", f, "--format", "pairs", "--out", tmp_path / "data")
    assert "54 train, 6 val pairs" in out.stdout and "char tokenizer" in out.stdout


def test_pair_errors_are_one_clean_line(tmp_path, capfd):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n", encoding="utf-8")
    (tmp_path / "a.fr").write_text("un\ndeux\n", encoding="utf-8")
    assert_clean_error(cli("prepare", "--src-file", tmp_path / "a.en", "--tgt-file", tmp_path / "a.fr",
                           "--out", tmp_path / "d", check=False), "a.en:3 has no partner")
    (tmp_path / "p.tsv").write_text("a\tb\n\tc\n", encoding="utf-8")
    # The others in this process, through the same `main` as the real command above.
    assert_clean_error(cli_in_process(capfd, "prepare", tmp_path / "p.tsv", "--format", "pairs",
                                      "--on-empty", "refuse", "--out", tmp_path / "d"),
                       "p.tsv:2: the source is empty")
    assert not (tmp_path / "d").exists()
    assert_clean_error(cli_in_process(capfd, "datasets", "get", "libreoffice-english", "--out",
                                      tmp_path / "x"), "libreoffice-SRC-TGT")
