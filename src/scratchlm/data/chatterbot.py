"""Dialogue data for SFT from the ChatterBot corpus (PyPI `chatterbot-corpus==1.3.3`, BSD):
YAML conversations -> chat JSONL ({"messages": [...]}) with fixed train/val/test splits.

    get_chatterbot(Path("data/chatterbot-en"), cache=Path("~/.cache/scratchlm"), lang="english")

Each YAML conversation is a list of lines spoken in turn, starting with the user; a trailing
unanswered line is dropped. The split of a conversation is fixed by a hash of its first
(user) line, so every answer to the same question lands in the same split and a model is
never validated on a question it was trained on: about 5% valid and 5% test.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import yaml

from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_dir, write_json

SPEC = "chatterbot-corpus==1.3.3"
LANGS = {"en": "english", "zh": "chinese"}
SPLITS = ("train", "val", "test")


def conversations_to_chats(conversations: list[Any]) -> list[dict[str, Any]]:
    """ChatterBot conversations (lists of lines) -> chat records; unusable ones skipped."""
    out = []
    for conv in conversations or []:
        if not isinstance(conv, list):
            continue
        lines = [str(x).strip() for x in conv if x is not None]
        if len(lines) % 2:
            lines = lines[:-1]  # an unanswered last line: nothing to learn from it
        if len(lines) < 2 or any(not x for x in lines):
            continue
        roles = ["user", "assistant"] * (len(lines) // 2)
        out.append({"messages": [{"role": r, "content": c} for r, c in zip(roles, lines, strict=True)]})
    return out


def split_of(chat: dict[str, Any]) -> str:
    """val for ~5%, test for ~5%, train for the rest, by the first user line."""
    first = chat["messages"][0]["content"].strip().lower()
    bucket = int(hashlib.sha256(first.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "val" if bucket < 5 else "test" if bucket < 10 else "train"


def build(corpus_files: dict[str, str], out: Path) -> dict[str, int]:
    """{file name: YAML text} -> out/{train,val,test}.jsonl + meta.json; returns counts."""
    chats: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for name in sorted(corpus_files):
        try:
            doc = yaml.safe_load(corpus_files[name]) or {}
        except yaml.YAMLError as e:
            raise ScratchLMError(f"{name} is not valid YAML: {e}".splitlines()[0]) from None
        for chat in conversations_to_chats(doc.get("conversations")):
            chat["category"] = Path(name).stem
            chats[split_of(chat)].append(chat)
    if not chats["train"]:
        raise ScratchLMError("the ChatterBot corpus gave no conversations")
    with atomic_dir(out) as tmp:
        for split, rows in chats.items():
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        counts = {s: len(rows) for s, rows in chats.items()}
        write_json(tmp / "meta.json", {"source": f"PyPI {SPEC}", "license": "BSD-3-Clause",
                                        "format": "chat", "counts": counts})
    return counts


def get_chatterbot(out: Path, *, cache: Path, offline: bool = False, lang: str = "en") -> str:
    """Fetch the corpus source package (cached) and write `lang`'s chat JSONL splits."""
    from scratchlm.data.pip import pip_download

    if lang not in LANGS:
        raise ScratchLMError(f"unknown ChatterBot language {lang!r} (known: {', '.join(LANGS)})")
    cached = sorted(cache.glob("chatterbot_corpus-1.3.3.tar.gz")) if cache.is_dir() else []
    if not cached and offline:
        raise ScratchLMError(f"{SPEC} is not in the cache {cache} and we are offline")
    archive = cached[0] if cached else pip_download(SPEC, cache)
    folder = f"/chatterbot_corpus/data/{LANGS[lang]}/"
    files = {}
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if m.isfile() and folder in m.name and m.name.endswith(".yml"):
                src = tar.extractfile(m)
                assert src is not None
                files[Path(m.name).name] = src.read().decode("utf-8")
    if not files:
        raise ScratchLMError(f"{archive} has no {folder}*.yml; is it the right package?")
    counts = build(files, out)
    return (f"{sum(counts.values()):,} {LANGS[lang]} conversations from PyPI {SPEC} "
            f"(train {counts['train']:,}, val {counts['val']:,}, test {counts['test']:,})")
