"""Reading user text safely: which files an input names, and streaming their lines.

Bad input (missing, empty, binary, not UTF-8) raises ScratchLMError naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from scratchlm.errors import ScratchLMError


def list_text_files(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand files and directories (recursively, sorted, hidden entries skipped)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not found:
                raise ScratchLMError(f"directory {p} contains no files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise ScratchLMError(f"input {p} does not exist")
    for f in files:
        check_text_file(f)
    if all(f.stat().st_size == 0 for f in files):
        raise ScratchLMError(f"the input is empty ({len(files)} file(s), 0 bytes)")
    return files


def check_text_file(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(8192)
    if b"\x00" in head:
        raise ScratchLMError(f"{path} looks like a binary file (it contains NUL bytes); give text files")


MAX_PIECE = 1 << 16  # characters: a file without newlines is still read in bounded pieces


def iter_lines(path: Path) -> Iterator[str]:
    """Lines of a UTF-8 file with their line endings kept exactly (lines longer than
    MAX_PIECE characters come in several pieces, so memory stays bounded)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            while piece := f.readline(MAX_PIECE):
                yield piece
    except UnicodeDecodeError as e:
        raise ScratchLMError(
            f"{path} is not UTF-8 text (bad byte at offset {e.start}); convert it to UTF-8"
        ) from None
