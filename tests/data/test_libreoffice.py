"""LibreOffice help alignment on a small synthetic tree of two languages (no download)."""

import json

import pytest

from scratchlm.data import libreoffice as lo
from scratchlm.errors import ScratchLMError

PAGE = """<!DOCTYPE html>
<html lang="{lang}"><head><title>{title}</title><script>var x = "<p id='no'>";</script></head>
<body>
<header id="TopLeftHeader"><p dir="auto">{title}</p></header>
<div id="DisplayArea" itemprop="softwareHelp">
<a name="bm_id1"></a><meta itemprop="keywords" content="k">
<h1 id="hd_id1" dir="auto">
<a name="x"></a>{title}
</h1>
<p id="par_id1" class="paragraph">{p1}</p>
<p id="par_id2" class="paragraph">{p2}</p>
<table><tr><td><p id="par_id3" class="tablecontent">{p3}</p></td></tr></table>
<div class="embedded"><p class="embedded"><a name="emb"></a>{p1}</p></div>
<p id="par_id1" class="paragraph">{p1}</p>
</div>
<footer><div id="DEBUG"><p id="bm_module" dir="auto">{title} debug info here</p></div></footer>
</body></html>
"""

EN = {"title": "Creating a Basic Dialog", "p1": "Choose <span class=\"emph\">Tools -\n  Macros</span>, and then click <span class=\"emph\">New</span>.",
      "p2": "Choose <span class=\"switchinline\"><span hidden=\"true\" id=\"MACtextshared1\" class=\"MAC\">LibreOffice - Preferences</span><span hidden=\"true\" id=\"defaulttextshared1\">Tools - Options</span></span> - Load/Save.",
      "p3": "Too short here"}
FR = {"title": "Création d'une boîte de dialogue Basic", "p1": "Choisissez <span class=\"emph\">Outils -\n Macros</span> et cliquez sur <span class=\"emph\">Nouveau</span>.",
      "p2": "Choisissez <span class=\"switchinline\"><span hidden=\"true\" id=\"MACtextshared1\" class=\"MAC\">LibreOffice - Préférences</span><span hidden=\"true\" id=\"defaulttextshared1\">Outils - Options</span></span> - Chargement/enregistrement.",
      "p3": "Trop court ici"}


def write_tree(root, lang, texts, pages=("text/shared/guide/a.html", "text/swriter/b.html")):
    for rel in pages:
        path = root / lang / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PAGE.format(lang=lang, **texts), encoding="utf-8")
    return root / lang


def test_read_help_page_keeps_display_text_only():
    texts = lo.read_help_page(PAGE.format(lang="en-US", **EN))
    assert texts == {
        "hd_id1": "Creating a Basic Dialog",
        "par_id1": "Choose Tools - Macros, and then click New.",
        "par_id2": "Choose Tools - Options - Load/Save.",  # the Linux default, not the Mac variant
        "par_id3": "Too short here",
        "par_id1#2": "Choose Tools - Macros, and then click New.",  # repeated id in one page
    }


def test_align_filters_and_dedups(tmp_path):
    en = lo.read_help_tree(write_tree(tmp_path, "en-US", EN))
    fr = lo.read_help_tree(write_tree(tmp_path, "fr", FR, pages=("text/shared/guide/a.html",)))
    assert "text/swriter/b.html#par_id1" in en and "text/swriter/b.html#par_id1" not in fr
    pairs = lo.align(en, fr)
    assert pairs == [
        ("Creating a Basic Dialog", "Création d'une boîte de dialogue Basic"),
        ("Choose Tools - Macros, and then click New.", "Choisissez Outils - Macros et cliquez sur Nouveau."),
        ("Choose Tools - Options - Load/Save.", "Choisissez Outils - Options - Chargement/enregistrement."),
    ]  # par_id3 has 3 words; the repeated par_id1 is a duplicate
    same = {"k": "Click OK to go on", "j": "Click OK to go on"}
    assert lo.align(same, {"k": "Click OK to go on", "j": "Cliquez sur OK"}) == [("Click OK to go on", "Cliquez sur OK")]
    # with English as the target, the word count is on the target side
    assert lo.align({"k": "Cliquez sur OK"}, {"k": "Click OK to go on"}, count_words_on="tgt") == \
        [("Cliquez sur OK", "Click OK to go on")]


def test_split_is_fixed_and_keeps_sources_together():
    pairs = [(f"source sentence number {i}", f"cible {i}") for i in range(50)]
    pairs += [("source sentence number 7", "autre cible 7")]
    a = lo.split_pairs(pairs, test_size=5, val_size=5)
    b = lo.split_pairs(list(reversed(pairs)), test_size=5, val_size=5)
    assert {k: sorted(v) for k, v in a.items()} == {k: sorted(v) for k, v in b.items()}
    assert sum(map(len, a.values())) == 51
    assert len({s for s, _ in a["test"]}) == 5 and len({s for s, _ in a["val"]}) == 5
    where = {k for k, v in a.items() for s, _ in v if s == "source sentence number 7"}
    assert len(where) == 1


@pytest.mark.parametrize("name, expected", [
    ("libreoffice-en-fr", ("en-us", "fr")),
    ("libreoffice-en-zh", ("en-us", "zh-cn")),
    ("libreoffice-en-zh-tw", ("en-us", "zh-tw")),
    ("libreoffice-pt-br-en", ("pt-br", "en-us")),
    ("libreoffice-DE-en-gb", ("de", "en-gb")),
])
def test_parse_name(name, expected):
    assert lo.parse_name(name) == expected


@pytest.mark.parametrize("name", ["libreoffice-en", "libreoffice-english-french", "libreoffice-fr-fr"])
def test_parse_name_errors_show_the_shape(name):
    with pytest.raises(ScratchLMError, match="libreoffice-SRC-TGT"):
        lo.parse_name(name)


def test_get_libreoffice_end_to_end(tmp_path, monkeypatch):
    """The whole build with the package steps replaced by the synthetic tree."""
    trees = {"en-us": write_tree(tmp_path / "help", "en-US", EN), "fr": write_tree(tmp_path / "help", "fr", FR)}
    many_en = {f"p{i}": f"Click button number {i} to go on" for i in range(40)}
    many_fr = {f"p{i}": f"Cliquez sur le bouton {i}" for i in range(40)}
    monkeypatch.setattr(lo, "download_deb", lambda pkg, cache, offline=False: pkg.removeprefix("libreoffice-help-"))
    monkeypatch.setattr(lo, "package_pages", lambda lang: {**lo.read_help_tree(trees[lang]),
                                                            **(many_en if lang == "en-us" else many_fr)})
    monkeypatch.setattr(lo, "deb_version", lambda deb: "1:7.4-test")
    monkeypatch.setattr(lo, "TEST_SIZE", 5)
    monkeypatch.setattr(lo, "VAL_SIZE", 4)
    used = lo.get_libreoffice("libreoffice-en-fr", tmp_path / "out", cache=tmp_path / "cache")
    assert "43 pairs" in used
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["counts"] == {"train": 34, "val": 4, "test": 5}
    assert meta["packages"] == {"libreoffice-help-en-us": "1:7.4-test", "libreoffice-help-fr": "1:7.4-test"}
    rows = [line.split("\t") for line in (tmp_path / "out" / "train.tsv").read_text().splitlines()]
    assert all(len(r) == 2 for r in rows) and len(rows) == 34
    first = (tmp_path / "out" / "test.tsv").read_text()
    lo.get_libreoffice("libreoffice-en-fr", tmp_path / "out", cache=tmp_path / "cache")
    assert (tmp_path / "out" / "test.tsv").read_text() == first  # the split never moves


def test_offline_without_cache(tmp_path):
    with pytest.raises(ScratchLMError, match="not in the cache .* run without --offline"):
        lo.download_deb("libreoffice-help-fr", tmp_path, offline=True)
    (tmp_path / "libreoffice-help-fr_1.0_all.deb").write_bytes(b"")
    assert lo.download_deb("libreoffice-help-fr", tmp_path, offline=True).name == "libreoffice-help-fr_1.0_all.deb"


def test_module_of():
    assert lo.module_of("text/sbasic/shared/03080101.html#par_id1") == "sbasic"
    assert lo.module_of("text/shared/guide/a.html#hd_id1") == "shared"
    assert lo.module_of("p1") == "" and lo.module_of("text/a.html#x") == ""


def _domain_pages():
    """sbasic pages, scalc/shared pages, and one sentence found in both sbasic and shared."""
    en, fr = {}, {}
    for module, n in (("sbasic", 30), ("scalc", 25), ("shared", 20)):
        for i in range(n):
            key = f"text/{module}/guide/page{i % 3}.html#par_id{i}"
            en[key] = f"The {module} help says number {i} here"
            fr[key] = f"L'aide {module} dit le numéro {i} ici"
    for key in ("text/sbasic/shared/x.html#p", "text/shared/guide/x.html#p"):
        en[key], fr[key] = "Click OK to close the dialog", "Cliquez sur OK pour fermer"
    return en, fr


def test_domain_split_keeps_one_module_and_disjoint_sources():
    en, fr = _domain_pages()
    sets = lo.domain_split(en, fr, "sbasic")
    assert list(sets) == ["sbasic", "general"]
    assert len(sets["sbasic"]) == 31 and all("sbasic" in s or s.startswith("Click") for s, _ in sets["sbasic"])
    assert len(sets["general"]) == 45  # 25 scalc + 20 shared; the shared copy of "Click OK" dropped
    assert not {s for s, _ in sets["sbasic"]} & {s for s, _ in sets["general"]}
    assert all("sbasic" not in s for s, _ in sets["general"])
    with pytest.raises(ScratchLMError, match=r"no help module 'basic' \(the modules: sbasic, scalc, shared\)"):
        lo.domain_split(en, fr, "basic")


def test_get_libreoffice_domain_writes_two_datasets(tmp_path, monkeypatch):
    en, fr = _domain_pages()
    monkeypatch.setattr(lo, "download_deb", lambda pkg, cache, offline=False: pkg.removeprefix("libreoffice-help-"))
    monkeypatch.setattr(lo, "package_pages", lambda lang: en if lang == "en-us" else fr)
    monkeypatch.setattr(lo, "deb_version", lambda deb: "1:7.4-test")
    monkeypatch.setattr(lo, "TEST_SIZE", 5)
    monkeypatch.setattr(lo, "VAL_SIZE", 4)
    out = tmp_path / "out"
    used = lo.get_libreoffice("libreoffice-en-fr", out, cache=tmp_path / "cache", domain="sbasic")
    assert f"{out / 'sbasic'}: 31 pairs (24 train, 2 val, 5 test)" in used  # 31 // 6 test, 31 // 12 val
    assert f"{out / 'general'}: 45 pairs (36 train, 4 val, 5 test)" in used
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["general", "sbasic"]
    meta = json.loads((out / "sbasic" / "meta.json").read_text())
    assert meta["domain"] == "sbasic" and meta["name"] == "libreoffice-en-fr-sbasic"
    assert meta["counts"] == {"train": 24, "val": 2, "test": 5}
    assert "first 5 test, next 2 val" in meta["built"]
    srcs = {part: {line.split("\t")[0] for split in ("train", "val", "test")
                   for line in (out / part / f"{split}.tsv").read_text().splitlines()}
            for part in ("sbasic", "general")}
    assert len(srcs["sbasic"]) == 31 and len(srcs["general"]) == 45 and not srcs["sbasic"] & srcs["general"]
    # the same split as split_pairs on the module's pairs alone: reusing it, not a second rule
    alone = lo.split_pairs(lo.domain_split(en, fr, "sbasic")["sbasic"], test_size=5, val_size=2)
    assert (out / "sbasic" / "test.tsv").read_text().splitlines() == [f"{s}\t{t}" for s, t in alone["test"]]


def test_domain_is_for_libreoffice_only(tmp_path):
    from scratchlm.data.sources import get_dataset
    with pytest.raises(ScratchLMError, match="--domain splits the libreoffice-\\* datasets only"):
        get_dataset("shakespeare", out=tmp_path / "out", domain="sbasic", offline=True)
