"""Which inputs a list of paths names, for the verbs that take text (`tokenizer train`).

Kept for its callers; the formats and the reading live in data/readers.py. Bad input
(missing, empty, binary, not UTF-8) raises ScratchLMError naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from scratchlm.data.readers import list_sources


def list_text_files(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files, directories (recursive, sorted, hidden entries skipped), globs and datasets
    directories, expanded to the paths of the sources they hold (see readers.list_sources)."""
    return [s.path for s in list_sources(inputs)]
