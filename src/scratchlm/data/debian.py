"""Summarization pairs from Debian's package descriptions: long description -> synopsis.

    scratchlm datasets get debian-descriptions --out data/raw/debian-descriptions

Every Debian package has a one-line synopsis and a long description, published in the
archive's `Translation-en` index. The steps, each a function below:

1. `fetch_translations`: `apt-get update -o Acquire::Languages=en` into a private lists
   directory under the cache (`-o Dir::State::Lists=CACHE/debian-descriptions/lists`), so
   the system's apt lists are never touched and no restoring `apt-get update` is needed; the
   `*_i18n_Translation-en*` files it writes (lz4, read with `lz4 -dc`) are kept in the cache.
   Without apt, put Translation-en files (plain, .lz4, .gz or .xz, e.g. from a Debian mirror's
   dists/bookworm/main/i18n/) in that directory by hand.
2. `parse_translations`: records `Package:`, `Description-en: SYNOPSIS` and the long
   description on the continuation lines (" ." separates paragraphs); whitespace collapsed.
3. `make_pairs`: keep long descriptions of 30+ words (`MIN_WORDS`); one pair per distinct
   long description (the first package in name order: `foo` and `foo-data` often share one).
4. A fixed split by sha256 of the description (`libreoffice.split_pairs`): first 1,000 test,
   next 1,000 val, the rest train; train/val/test.tsv (document<TAB>synopsis) and
   meta.json, the format `scratchlm prepare` and `scratchlm evaluate` read as pairs.
"""

from __future__ import annotations

import gzip
import lzma
import subprocess
from pathlib import Path

from scratchlm.data.libreoffice import clean, split_pairs, write_pairs_dataset
from scratchlm.errors import ScratchLMError

NAME = "debian-descriptions"
MIN_WORDS = 30
TEST_SIZE = VAL_SIZE = 1000


def _hint(lists: Path) -> str:
    return (f"install apt-get and lz4 (a Debian/Ubuntu system, as root) with the Debian registry "
            f"reachable, or put Translation-en files (e.g. dists/bookworm/main/i18n/Translation-en.xz "
            f"from a Debian mirror) in {lists}")


def _run(cmd: list[str], lists: Path, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=600, **kw)
    except FileNotFoundError:
        raise ScratchLMError(f"{cmd[0]} is not installed; {_hint(lists)}") from None
    except subprocess.TimeoutExpired:
        raise ScratchLMError(f"{' '.join(cmd[:2])} took over 10 minutes; {_hint(lists)}") from None


def translation_files(lists: Path) -> list[Path]:
    return sorted(p for p in lists.glob("*Translation-en*") if p.is_file() and not p.name.endswith(".tmp"))


def fetch_translations(cache: Path, *, offline: bool = False) -> list[Path]:
    """The Translation-en files in CACHE/debian-descriptions/lists (fetched with apt if none)."""
    lists = (cache / NAME / "lists").absolute()
    found = translation_files(lists)
    if found:
        return found
    if offline:
        raise ScratchLMError(f"no Translation-en files in {lists} and --offline; {_hint(lists)}")
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    proc = _run(["apt-get", "update", "-o", "Acquire::Languages=en", "-o", f"Dir::State::Lists={lists}"],
                lists, text=True)
    found = translation_files(lists)
    if proc.returncode != 0 or not found:
        lines = [x for x in (proc.stderr + proc.stdout).splitlines() if x.strip() and not x.startswith("W:")]
        raise ScratchLMError(f"apt-get update gave no Translation-en files ({lines[-1] if lines else 'no output'}); "
                             f"{_hint(lists)}")
    return found


def read_translation(path: Path) -> str:
    """The text of a Translation-en file, plain or compressed (.lz4 with the lz4 tool)."""
    if path.name.endswith(".lz4"):
        proc = _run(["lz4", "-dc", str(path)], path.parent)
        if proc.returncode != 0:
            raise ScratchLMError(f"lz4 -dc {path} failed; delete it and retry")
        data = proc.stdout
    elif path.name.endswith(".gz"):
        data = gzip.decompress(path.read_bytes())
    elif path.name.endswith(".xz"):
        data = lzma.decompress(path.read_bytes())
    else:
        data = path.read_bytes()
    return data.decode("utf-8", errors="replace")


def parse_translations(text: str) -> list[tuple[str, str, str]]:
    """(package, long description, synopsis) for each record that has a long description."""
    out = []
    for record in text.split("\n\n"):
        package, synopsis, body, in_desc = "", "", [], False
        for line in record.splitlines():
            if line.startswith("Package:"):
                package, in_desc = line.partition(":")[2].strip(), False
            elif line.startswith("Description-en:"):
                synopsis, in_desc = line.partition(":")[2].strip(), True
            elif line.startswith((" ", "\t")) and in_desc:
                body.append("" if line.strip() == "." else line.strip())
            else:
                in_desc = False
        doc = clean(" ".join(body))
        if package and synopsis and doc:
            out.append((package, doc, clean(synopsis)))
    return out


def make_pairs(records: list[tuple[str, str, str]], *, min_words: int = MIN_WORDS) -> list[tuple[str, str]]:
    """(description, synopsis) pairs: 30+ word descriptions, one pair per distinct description."""
    seen: set[str] = set()
    pairs = []
    for _, doc, synopsis in sorted(records):
        if len(doc.split()) >= min_words and doc not in seen:
            seen.add(doc)
            pairs.append((doc, synopsis))
    return pairs


def get_debian_descriptions(out: Path, *, cache: Path, offline: bool = False) -> str:
    """Write OUT/{train,val,test}.tsv and meta.json. Returns what was used."""
    files = fetch_translations(cache, offline=offline)
    records = [r for f in files for r in parse_translations(read_translation(f))]
    pairs = make_pairs(records)
    if len(pairs) < 3 * (TEST_SIZE + VAL_SIZE):
        raise ScratchLMError(f"only {len(pairs)} descriptions of {MIN_WORDS}+ words in {', '.join(map(str, files))}; "
                             f"are these Debian Translation-en files?")
    splits = split_pairs(pairs, test_size=TEST_SIZE, val_size=VAL_SIZE)
    meta = {
        "format": "scratchlm-pairs-dataset/1",
        "kind": "pairs-dataset",
        "name": NAME,
        "src_lang": "en",
        "tgt_lang": "en",
        "license": "the packages' own (Debian archive metadata)",
        "sources": [f.name for f in files],
        "counts": {s: len(p) for s, p in splits.items()},
        "columns": ["src", "tgt"],
        "built": (f"Translation-en records: long description (paragraphs joined, whitespace "
                  f"collapsed) -> synopsis; kept: {MIN_WORDS}+ words, one pair per distinct "
                  f"description (first package by name); split: distinct descriptions in "
                  f"sha256 order, first {TEST_SIZE} test, next {VAL_SIZE} val, rest train"),
    }
    return f"{len(files)} Translation-en files, {len(records):,} descriptions: {write_pairs_dataset(out, splits, meta)}"
