"""Chinese text for pretraining from the Debian package `fortunes-zh` (2.1 MB of UTF-8).

    scratchlm datasets get fortunes-zh --out data/raw/fortunes-zh

The package's `usr/share/games/fortunes/` holds three fortune files: `chinese` (5,263 sayings,
anecdotes and jokes, with ANSI colour codes around the attributions), `tang300` (the 300 Tang
poems) and `song100` (100 Song poems). Fortunes are separated by lines holding only `%`.
The steps:

1. `apt-get download fortunes-zh` into the cache (shared with the libreoffice datasets'
   `download_deb`), `dpkg-deb -x` it and copy the three files to CACHE/fortunes-zh/. A user
   without apt or network can put the three files there by hand instead.
2. `clean_fortunes`: strip ANSI escape sequences (`\\x1b[32m ... \\x1b[m`, repeatedly: the
   file has a few codes broken by another nested inside), split on `%`,
   strip each entry, drop empty ones.
3. OUT/fortunes-zh.txt: the entries of all three files, separated by a blank line, in a
   fixed order (sha256 of the entry), so that the last 10% of the bytes, which
   `scratchlm prepare` holds out for validation, is a fair sample of sayings and poems alike
   rather than the last file.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from scratchlm.data.libreoffice import download_deb
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_dir, atomic_file

PACKAGE = "fortunes-zh"
FILES = ("chinese", "tang300", "song100")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def clean_fortunes(text: str) -> list[str]:
    """The entries of a fortune file, without ANSI colour codes, stripped, none empty."""
    text = text.replace("\r\n", "\n")
    while ANSI.search(text):  # again: a few codes are broken by one nested inside them
        text = ANSI.sub("", text)
    text = text.replace("\x1b", "")
    entries = re.split(r"^%[ \t]*$", text, flags=re.M)
    return [e.strip("\n").rstrip() for e in entries if e.strip()]


def _hint(files_dir: Path) -> str:
    return (f"install apt-get and dpkg-deb (a Debian/Ubuntu system) with the Debian registry "
            f"reachable, or put the files {', '.join(FILES)} (usr/share/games/fortunes/ of the "
            f"fortunes-zh package) in {files_dir}")


def fetch_files(cache: Path, *, offline: bool = False) -> tuple[Path, str]:
    """CACHE/fortunes-zh/ holding the three fortune files (downloaded if absent) and its source."""
    files_dir = cache / PACKAGE
    if all((files_dir / f).is_file() for f in FILES):
        return files_dir, f"the files in {files_dir}"
    try:
        deb = download_deb(PACKAGE, cache / "debian", offline=offline)
    except ScratchLMError as e:
        raise ScratchLMError(f"could not get the Debian package {PACKAGE} ({e}); "
                             f"{_hint(files_dir)}") from None
    with tempfile.TemporaryDirectory(dir=deb.parent) as tmp:
        try:
            proc = subprocess.run(["dpkg-deb", "-x", str(deb), tmp], capture_output=True, text=True)
        except FileNotFoundError:
            raise ScratchLMError(f"dpkg-deb is not installed; {_hint(files_dir)}") from None
        src = Path(tmp) / "usr/share/games/fortunes"
        missing = [f for f in FILES if not (src / f).is_file()]
        if proc.returncode != 0 or missing:
            why = proc.stderr.strip().splitlines()[-1] if proc.returncode else f"no {', '.join(missing)}"
            raise ScratchLMError(f"{deb} is not a usable {PACKAGE} package ({why}); delete it "
                                 f"and retry, or {_hint(files_dir)}")
        with atomic_dir(files_dir) as out:
            for f in FILES:
                shutil.copyfile(src / f, out / f)
    return files_dir, f"Debian {deb.name}"


def mix(entries: list[str]) -> list[str]:
    """Distinct entries in sha256 order: a fixed order that mixes the three files."""
    return sorted(set(entries), key=lambda e: (hashlib.sha256(e.encode("utf-8")).hexdigest(), e))


def get_fortunes_zh(out: Path, *, cache: Path, offline: bool = False) -> str:
    """Write OUT/fortunes-zh.txt. Returns what was used."""
    files_dir, used = fetch_files(cache, offline=offline)
    counts, entries = {}, []
    for f in FILES:
        try:
            text = (files_dir / f).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ScratchLMError(f"{files_dir / f} is not UTF-8 text; delete it and retry") from None
        found = clean_fortunes(text)
        if not found:
            raise ScratchLMError(f"{files_dir / f} holds no fortunes; delete it and retry")
        counts[f] = len(found)
        entries += found
    mixed = mix(entries)
    with atomic_dir(out) as tmp, atomic_file(tmp / "fortunes-zh.txt") as dst:
        dst.write("\n\n".join(mixed) + "\n")
    return (f"{used}: " + ", ".join(f"{f} {n:,} entries" for f, n in counts.items())
            + f"; {len(mixed):,} distinct, mixed")
