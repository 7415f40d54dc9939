"""The datasets registry: the ChatterBot corpora per language, with one clear line offline."""

from __future__ import annotations

import pytest

from scratchlm.data.sources import DATASETS, get_dataset
from scratchlm.errors import ScratchLMError


def test_chatterbot_is_registered_per_language():
    for name in ("chatterbot-en", "chatterbot-zh"):
        assert DATASETS[name][1].keywords["lang"] == name[-2:]


def test_chatterbot_offline_without_the_archive_says_where_to_put_it(tmp_path):
    with pytest.raises(ScratchLMError) as e:
        get_dataset("chatterbot-zh", out=tmp_path / "out", cache=tmp_path / "cache", offline=True)
    assert "\n" not in str(e.value) and "put chatterbot_corpus-1.3.3.tar.gz" in str(e.value)
    assert str(tmp_path / "cache") in str(e.value)
