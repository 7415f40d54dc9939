"""fortunes-zh: ANSI stripping, the mixed order, files put in the cache by hand, clear errors."""

from __future__ import annotations

import pytest

from scratchlm.data.fortunes import FILES, clean_fortunes, get_fortunes_zh, mix
from scratchlm.data.sources import get_dataset
from scratchlm.errors import ScratchLMError


def test_clean_fortunes_strips_ansi_including_nested_broken_codes():
    text = ("\x1b[32m《静夜思》\x1b[m\n\x1b[33m作者：李白\x1b[m\n床前明月光\n%\n"
            "改\x1b[35;1m“~/.vimrc”\x1b[;\x1b[34;1mm来定制\x1b[m。\n%\n\n%\n")
    entries = clean_fortunes(text)
    assert entries == ["《静夜思》\n作者：李白\n床前明月光", "改“~/.vimrc”来定制。"]
    assert not any("\x1b" in e for e in entries)


def test_mix_is_a_fixed_order_of_distinct_entries():
    entries = ["甲", "乙", "丙", "甲"]
    assert mix(entries) == mix(list(reversed(entries)))
    assert sorted(mix(entries)) == sorted({"甲", "乙", "丙"})


def _put_files(cache):
    d = cache / "fortunes-zh"
    d.mkdir(parents=True)
    for i, f in enumerate(FILES):
        (d / f).write_text(f"\x1b[32m第{i}首\x1b[m\n一二三\n%\n第{i}条\n", encoding="utf-8")
    return d


def test_files_put_in_the_cache_are_used_without_apt(tmp_path):
    _put_files(tmp_path / "cache")
    used = get_dataset("fortunes-zh", out=tmp_path / "out", cache=tmp_path / "cache", offline=True)
    text = (tmp_path / "out" / "fortunes-zh.txt").read_text(encoding="utf-8")
    assert "6 distinct" in used and "chinese 2 entries" in used
    assert text.count("\n\n") == 5 and "\x1b" not in text and "第0首\n一二三" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".scratchlm", "fortunes-zh.txt"]


def test_missing_package_says_what_to_install_or_where_to_put_the_files(tmp_path):
    with pytest.raises(ScratchLMError) as e:
        get_fortunes_zh(tmp_path / "out", cache=tmp_path / "cache", offline=True)
    msg = str(e.value)
    assert "\n" not in msg and "install apt-get and dpkg-deb" in msg
    assert str(tmp_path / "cache" / "fortunes-zh") in msg and not (tmp_path / "out").exists()


def test_non_utf8_file_is_refused(tmp_path):
    d = _put_files(tmp_path / "cache")
    (d / "tang300").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ScratchLMError, match="not UTF-8"):
        get_fortunes_zh(tmp_path / "out", cache=tmp_path / "cache")
