"""Parallel sentences from the LibreOffice help (MPL-2.0), fetched as Debian packages.

    scratchlm datasets get libreoffice-en-fr --out datasets/en-fr

Every help page is shipped in every language under
`usr/share/libreoffice/help/<Lang>/text/**/*.html`, and each paragraph and heading carries
the same element `id` in all of them, so joining on (page path, id) aligns the languages.
The steps, each a function below:

1. `apt-get download libreoffice-help-<lang>` into the cache (once; `apt-get update` first
   only when the package lists are missing), `dpkg-deb -x` it, and parse every page into
   {"page#id": text} (`read_help_tree`), cached as JSON next to the .deb so a rerun is fast.
2. `align`: join the two languages on the key, clean whitespace, drop empty sides, pairs
   whose sides are equal (untranslated text), pairs whose English side (or the source side
   when neither is English) has fewer than 4 words, and exact duplicates.
3. `split_pairs`: a fixed split by a hash of the source text (sha256, no seed), so the test
   set never changes between runs and every copy of a source sentence lands in one split.
4. `train.tsv`, `val.tsv`, `test.tsv` (src<TAB>tgt) and `meta.json` in the output dir.

`--domain MODULE` (`datasets get libreoffice-en-fr --out DIR --domain sbasic`) builds a domain
split instead, for continued training on a new domain (docs/training.md): the pages of one help
module (`text/MODULE/...`: sbasic, scalc, swriter, shared, ...) go to DIR/MODULE, every other
module's to DIR/general, each aligned and split as above (`domain_split`). A source sentence of
the module is dropped from the general set, so no in-domain test sentence is trained on by the
general model. The module's test and val splits are a sixth and a twelfth of its pairs
(at most 1000 each).

Names are `libreoffice-SRC-TGT`; a language is the suffix of a Debian package
`libreoffice-help-<lang>`, with the shorthands en = en-us and zh = zh-cn.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path

from scratchlm.data.seq2seq import clean, write_tsv
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_dir, read_json, write_json

Pair = tuple[str, str]

# Suffixes of the libreoffice-help-* packages in Debian 12 (`apt-cache search`); others are
# still tried, this list only resolves names like en-zh-tw and lists them in messages.
KNOWN_LANGS = ("ca", "cs", "da", "de", "dz", "el", "en-gb", "en-us", "es", "et", "eu", "fi", "fr",
               "gl", "hi", "hu", "id", "it", "ja", "km", "ko", "nl", "om", "pl", "pt", "pt-br",
               "ru", "sk", "sl", "sv", "tr", "vi", "zh-cn", "zh-tw")
ALIASES = {"en": "en-us", "zh": "zh-cn"}
MIN_WORDS = 4
TEST_SIZE = VAL_SIZE = 1000
PAGES_FORMAT = 1  # bump when read_help_tree changes, so cached page JSON is rebuilt


def package_name(lang: str) -> str:
    return f"libreoffice-help-{lang}"


def parse_name(name: str) -> tuple[str, str]:
    """'libreoffice-en-zh-tw' -> ('en-us', 'zh-tw'): the languages, shorthands resolved."""
    usage = (f"dataset names look like libreoffice-SRC-TGT, e.g. libreoffice-en-fr, with SRC and "
             f"TGT among {', '.join(KNOWN_LANGS)} (en = en-us, zh = zh-cn)")
    parts = name.lower().split("-")
    if parts[0] != "libreoffice" or len(parts) < 3:
        raise ScratchLMError(f"cannot read {name!r}: {usage}")
    splits = [("-".join(parts[1:i]), "-".join(parts[i:])) for i in range(2, len(parts))]
    splits = [(ALIASES.get(a, a), ALIASES.get(b, b)) for a, b in splits]
    known = [s for s in splits if s[0] in KNOWN_LANGS and s[1] in KNOWN_LANGS]
    plausible = [s for s in splits if all(_looks_like_lang(x) for x in s)]
    if not (known or plausible):
        raise ScratchLMError(f"cannot read {name!r}: {usage}")
    src, tgt = (known or plausible)[0]
    if src == tgt:
        raise ScratchLMError(f"{name!r} names the same language twice; {usage}")
    return src, tgt


def _looks_like_lang(code: str) -> bool:
    head, _, region = code.partition("-")
    return head.isalpha() and 2 <= len(head) <= 3 and (not region or region.isalnum())


# ----------------------------------------------------------------------------- pages
class _HelpPage(HTMLParser):
    """Text of each element with an id (paragraphs, headings) in the page's DisplayArea.

    Inline markup is flattened to its text. Hidden "switch" spans hold variants of a phrase
    for one OS or application (class MAC, WRITER, ...); only the `default...` one is kept,
    as the help viewer shows on Linux outside a specific application.
    """

    CAPTURE = {"p", "h1", "h2", "h3", "h4", "h5", "h6"}
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "param", "source", "track", "wbr"}
    SKIP = {"script", "style"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.active = False  # inside <div id="DisplayArea">, before <footer>
        self.stack: list[tuple[str, bool]] = []  # open tags: (tag, skips its text)
        self.key: str | None = None  # id of the element being captured
        self.depth = 0  # stack depth where the captured element opened
        self.buf: list[str] = []
        self.texts: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id") == "DisplayArea":
            self.active = True
        if tag == "footer":
            self.active = False
        if tag in self.VOID:
            if tag == "br" and self.key:
                self.buf.append(" ")
            return
        hidden = "hidden" in a and not (a.get("id") or "").startswith("default")
        self.stack.append((tag, tag in self.SKIP or hidden))
        if self.active and tag in self.CAPTURE and a.get("id"):
            self._finish()  # an unclosed <p> ends at the next one, as in HTML
            self.key, self.depth, self.buf = a["id"], len(self.stack), []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br" and self.key:
            self.buf.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if not any(t == tag for t, _ in self.stack):
            return  # a stray end tag
        while self.stack:
            if self.key and len(self.stack) == self.depth:
                self._finish()
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.key and not any(skip for _, skip in self.stack):
            self.buf.append(data)

    def _finish(self) -> None:
        if self.key:
            text = clean("".join(self.buf))
            key, n = self.key, 2
            while key in self.texts:  # an id repeated in one page (embedded sections)
                key, n = f"{self.key}#{n}", n + 1
            if text:
                self.texts[key] = text
        self.key, self.buf = None, []


def read_help_page(html: str) -> dict[str, str]:
    """{element id: text} for one help page."""
    parser = _HelpPage()
    parser.feed(html)
    parser.close()
    parser._finish()
    return parser.texts


def read_help_tree(lang_dir: Path) -> dict[str, str]:
    """{"text/path/page.html#id": text} for every page under `lang_dir` (help/<Lang>)."""
    out: dict[str, str] = {}
    for page in sorted(lang_dir.glob("text/**/*.html")):
        rel = page.relative_to(lang_dir).as_posix()
        for key, text in read_help_page(page.read_text(encoding="utf-8")).items():
            out[f"{rel}#{key}"] = text
    return out


# ----------------------------------------------------------------------------- pairs
def align(src: dict[str, str], tgt: dict[str, str], *, count_words_on: str = "src",
          min_words: int = MIN_WORDS) -> list[Pair]:
    """Join two languages' {key: text} on the key; filter and de-duplicate (first seen kept,
    in key order). `count_words_on` ('src' or 'tgt') is the side that needs `min_words`."""
    seen: set[Pair] = set()
    pairs: list[Pair] = []
    for key in sorted(src.keys() & tgt.keys()):
        s, t = clean(src[key]), clean(tgt[key])
        if not s or not t or s == t:
            continue
        if len((s if count_words_on == "src" else t).split()) < min_words:
            continue
        if (s, t) not in seen:
            seen.add((s, t))
            pairs.append((s, t))
    return pairs


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_pairs(pairs: Iterable[Pair], *, test_size: int = TEST_SIZE,
                val_size: int = VAL_SIZE) -> dict[str, list[Pair]]:
    """A fixed split: distinct source sentences in sha256 order, the first `test_size` to
    test, the next `val_size` to val, the rest to train (each split in that order)."""
    by_src: dict[str, list[Pair]] = {}
    for p in pairs:
        by_src.setdefault(p[0], []).append(p)
    order = sorted(by_src, key=lambda s: (_hash(s), s))
    cuts = {"train": order[test_size + val_size:],
            "val": order[test_size:test_size + val_size], "test": order[:test_size]}
    return {split: [p for s in srcs for p in by_src[s]] for split, srcs in cuts.items()}


# ----------------------------------------------------------------------------- packages
def _run(cmd: list[str], *, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ScratchLMError(
            f"{cmd[0]} is not installed; the libreoffice datasets need a Debian/Ubuntu system "
            f"with apt and dpkg (or copy the .deb files into the cache directory)"
        ) from None
    except subprocess.TimeoutExpired:
        raise ScratchLMError(f"{' '.join(cmd)} took over {timeout:.0f}s; is the Debian mirror reachable?") from None


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [x for x in proc.stderr.strip().splitlines() if not x.startswith("W:")]
    return (lines or proc.stdout.strip().splitlines() or ["no output"])[-1]


def _lists_present() -> bool:
    lists = Path("/var/lib/apt/lists")
    return lists.is_dir() and any("_Packages" in p.name for p in lists.iterdir())


def download_deb(package: str, cache: Path, *, offline: bool = False) -> Path:
    """The cached .deb of `package`, downloading it with `apt-get download` if needed."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    if offline:
        raise ScratchLMError(f"{package} is not in the cache {cache}; run without --offline")
    proc = _run(["apt-get", "download", package], cwd=cache)
    if proc.returncode != 0 and not _lists_present():
        update = _run(["apt-get", "update"])  # once: the package lists were never fetched
        if update.returncode != 0:
            raise ScratchLMError(f"apt-get update failed ({_last_line(update)}); run it as root "
                                 f"with the Debian package registry reachable, then retry")
        proc = _run(["apt-get", "download", package], cwd=cache)
    found = sorted(cache.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not found:
        msg = _last_line(proc)
        if "Unable to locate" in msg or "no installation candidate" in msg:
            raise ScratchLMError(f"there is no Debian package {package} (apt-get: {msg}); "
                                 f"languages look like {', '.join(KNOWN_LANGS)}")
        raise ScratchLMError(f"apt-get download {package} failed ({msg}); the Debian package "
                             f"registry must be reachable, or copy the .deb into {cache}")
    return found[-1]


def deb_version(deb: Path) -> str:
    proc = _run(["dpkg-deb", "-f", str(deb), "Version"])
    if proc.returncode != 0:
        raise ScratchLMError(f"{deb} is not a readable .deb ({_last_line(proc)}); delete it and retry")
    return proc.stdout.strip()


def package_pages(deb: Path) -> dict[str, str]:
    """{page#id: text} of a libreoffice-help .deb, cached as JSON next to it."""
    cached = deb.with_suffix(".pages.json")
    if cached.is_file():
        data = read_json(cached)
        if data.get("format") == PAGES_FORMAT:
            return data["texts"]
    with tempfile.TemporaryDirectory(dir=deb.parent) as tmp:
        proc = _run(["dpkg-deb", "-x", str(deb), tmp])
        if proc.returncode != 0:
            raise ScratchLMError(f"dpkg-deb -x {deb} failed ({_last_line(proc)}); delete it and retry")
        help_root = Path(tmp) / "usr/share/libreoffice/help"
        langs = [d for d in sorted(help_root.glob("*")) if (d / "text").is_dir()]
        if len(langs) != 1:
            raise ScratchLMError(f"{deb} holds no single usr/share/libreoffice/help/<Lang>/text; "
                                 f"is it a libreoffice-help package?")
        texts = read_help_tree(langs[0])
    write_json(cached, {"format": PAGES_FORMAT, "help_dir": langs[0].name, "texts": texts})
    return texts


def module_of(key: str) -> str:
    """The help module of a "page#id" key: 'text/sbasic/shared/01.html#par_id1' -> 'sbasic'."""
    parts = key.split("#", 1)[0].split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "text" else ""


def domain_split(src: dict[str, str], tgt: dict[str, str], domain: str, *,
                 count_words_on: str = "src", min_words: int = MIN_WORDS) -> dict[str, list[Pair]]:
    """{domain: the pairs of the module's pages, "general": those of every other module less
    the sources found in the module}, each aligned by `align`."""
    modules = sorted({module_of(k) for k in src.keys() & tgt.keys()} - {""})
    if domain not in modules or domain == "general":
        raise ScratchLMError(f"no help module {domain!r} (the modules: {', '.join(modules)})")
    inside = {k for k in src if module_of(k) == domain}

    def pick(keep: bool) -> list[Pair]:
        return align({k: v for k, v in src.items() if (k in inside) == keep}, tgt,
                     count_words_on=count_words_on, min_words=min_words)

    in_domain = pick(True)
    sources = {s for s, _ in in_domain}
    return {domain: in_domain, "general": [p for p in pick(False) if p[0] not in sources]}


def get_libreoffice(name: str, out: Path, *, cache: Path, offline: bool = False,
                    domain: str | None = None) -> str:
    """Build the `name` dataset (libreoffice-SRC-TGT) into `out`, or with `domain` its domain
    split into out/DOMAIN and out/general. Returns what was used."""
    src_lang, tgt_lang = parse_name(name)
    debs = {lang: download_deb(package_name(lang), cache / "debian", offline=offline)
            for lang in (src_lang, tgt_lang)}
    pages = {lang: package_pages(deb) for lang, deb in debs.items()}
    side = "tgt" if tgt_lang.startswith("en") and not src_lang.startswith("en") else "src"
    versions = {package_name(lang): deb_version(deb) for lang, deb in debs.items()}
    used = ", ".join(f"{k} {v}" for k, v in versions.items())
    meta = {
        "format": "scratchlm-pairs-dataset/1",
        "kind": "pairs-dataset",
        "name": name,
        "src_lang": src_lang,
        "tgt_lang": tgt_lang,
        "license": "MPL-2.0 (LibreOffice help)",
        "packages": versions,
        "columns": ["src", "tgt"],
    }
    counted = "English" if "en" in (src_lang[:2], tgt_lang[:2]) else "source"
    built = ("paragraphs and headings of usr/share/libreoffice/help/<Lang>/text/**/*.html joined "
             "on (page path, element id); whitespace collapsed; dropped: empty sides, sides equal, "
             f"fewer than {MIN_WORDS} words on the {counted} side, exact duplicates; "
             "split: distinct sources in sha256 order, first {test} test, next {val} val, rest train")
    if domain is None:
        pairs = align(pages[src_lang], pages[tgt_lang], count_words_on=side)
        _check_size(len(pairs), TEST_SIZE + VAL_SIZE, name)
        splits = split_pairs(pairs, test_size=TEST_SIZE, val_size=VAL_SIZE)
        meta |= {"counts": {s: len(p) for s, p in splits.items()},
                 "built": built.format(test=TEST_SIZE, val=VAL_SIZE)}
        return f"{used}: {write_pairs_dataset(out, splits, meta)}"
    sets = domain_split(pages[src_lang], pages[tgt_lang], domain, count_words_on=side)
    words = []
    with atomic_dir(out) as tmp:
        for part, pairs in sets.items():
            test, val = ((TEST_SIZE, VAL_SIZE) if part == "general" else
                         (min(TEST_SIZE, len(pairs) // 6), min(VAL_SIZE, len(pairs) // 12)))
            _check_size(len(pairs), test + val, f"{name} {part}")
            splits = split_pairs(pairs, test_size=test, val_size=val)
            where = (f"pages of text/{domain}/" if part == domain else
                     f"pages outside text/{domain}/, less the sources found there")
            write_splits(tmp / part, splits, meta | {
                "name": f"{name}-{part}", "domain": part,
                "counts": {s: len(p) for s, p in splits.items()},
                "built": f"{where}: " + built.format(test=test, val=val)})
            words.append(f"{out / part}: {_count_words({k: len(v) for k, v in splits.items()})}")
    return f"{used}: " + "; ".join(words)


def _check_size(n: int, held_out: int, name: str) -> None:
    if n < 3 * held_out or n < 12:
        raise ScratchLMError(f"only {n} aligned pairs for {name}; the two help packages "
                             f"do not share enough translated paragraphs")


def write_pairs_dataset(out: Path, splits: dict[str, list[Pair]], meta: dict) -> str:
    """OUT/{train,val,test}.tsv and meta.json, all or nothing; returns the counts in words."""
    with atomic_dir(out) as tmp:
        write_splits(tmp, splits, meta)
    return _count_words(meta["counts"])


def write_splits(out: Path, splits: dict[str, list[Pair]], meta: dict) -> None:
    """OUT/{train,val,test}.tsv and meta.json (each file atomic, the directory not)."""
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        write_tsv(out / f"{split}.tsv", rows)
    write_json(out / "meta.json", meta)


def _count_words(c: dict[str, int]) -> str:
    return (f"{sum(c.values()):,} pairs ({c['train']:,} train, {c['val']:,} val, "
            f"{c['test']:,} test)")
