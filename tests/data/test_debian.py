"""debian-descriptions: Translation-en parsing, filtering, the fixed split, clear errors."""

from __future__ import annotations

import gzip

import pytest

from scratchlm.data import debian
from scratchlm.data.pairs import read_pairs
from scratchlm.data.sources import DATASETS, get_dataset
from scratchlm.errors import ScratchLMError

SAMPLE = """Package: 0ad
Description-md5: d943033bedada21853d2ae54a2578a7b
Description-en: Real-time strategy game of ancient warfare
 0 A.D. is a free, open-source, cross-platform
 real-time strategy game.
 .
 This package contains the game.

Package: short
Description-en: no long description

Package: tool
Description-md5: 0
Description-en:   A tool
 Does things.
"""


def test_parse_translations():
    records = debian.parse_translations(SAMPLE)
    assert records == [
        ("0ad", "0 A.D. is a free, open-source, cross-platform real-time strategy game. "
                "This package contains the game.", "Real-time strategy game of ancient warfare"),
        ("tool", "Does things.", "A tool"),
    ]


def test_make_pairs_keeps_long_distinct_descriptions():
    doc = " ".join(["word"] * 30)
    records = [("b-data", doc, "B data"), ("b", doc, "B"), ("c", "too short", "C"),
               ("d", doc + " more", "D")]
    assert debian.make_pairs(records) == [(doc, "B"), (doc + " more", "D")]


def _translation(n: int) -> str:
    return "\n".join(f"Package: pkg{i}\nDescription-en: synopsis {i}\n "
                     + " ".join(f"w{i}x{j}" for j in range(31)) + "\n" for i in range(n))


def test_builds_fixed_splits_from_files_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(debian, "TEST_SIZE", 5)
    monkeypatch.setattr(debian, "VAL_SIZE", 5)
    lists = tmp_path / "cache" / "debian-descriptions" / "lists"
    lists.mkdir(parents=True)
    (lists / "x_main_i18n_Translation-en.gz").write_bytes(gzip.compress(_translation(40).encode()))
    (lists / "x_contrib_i18n_Translation-en").write_text(_translation(5), encoding="utf-8")  # duplicates
    assert "debian-descriptions" in DATASETS
    used = get_dataset("debian-descriptions", out=tmp_path / "a", cache=tmp_path / "cache", offline=True)
    assert "40 pairs (30 train, 5 val, 5 test)" in used
    get_dataset("debian-descriptions", out=tmp_path / "b", cache=tmp_path / "cache", offline=True)
    splits = {s: read_pairs(tmp_path / "a" / f"{s}.tsv").pairs for s in ("train", "val", "test")}
    assert (tmp_path / "a" / "test.tsv").read_text() == (tmp_path / "b" / "test.tsv").read_text()
    assert not {d for d, _ in splits["test"]} & {d for d, _ in splits["train"]}
    assert all(s.startswith("synopsis ") for p in splits.values() for _, s in p)


def test_no_files_offline_says_where_to_put_them(tmp_path):
    with pytest.raises(ScratchLMError) as e:
        get_dataset("debian-descriptions", out=tmp_path / "out", cache=tmp_path / "cache", offline=True)
    msg = str(e.value)
    assert "\n" not in msg and "install apt-get and lz4" in msg and "Translation-en" in msg
    assert not (tmp_path / "out").exists()


def test_too_few_pairs_is_an_error(tmp_path):
    lists = tmp_path / "cache" / "debian-descriptions" / "lists"
    lists.mkdir(parents=True)
    (lists / "Translation-en").write_text(_translation(10), encoding="utf-8")
    with pytest.raises(ScratchLMError, match="only 10 descriptions"):
        get_dataset("debian-descriptions", out=tmp_path / "out", cache=tmp_path / "cache", offline=True)

