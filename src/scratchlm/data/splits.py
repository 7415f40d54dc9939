"""Split names. Everything scratchlm writes and every verb that takes a split calls them
train, val and test (nanoGPT's train.bin/val.bin). Inputs may call the held-out split valid
(OpenNMT), validation (Hugging Face) or dev; `split_name` maps them, and is the only place
that does."""

from __future__ import annotations

from scratchlm.errors import ScratchLMError

SPLITS = ("train", "val", "test")
ALIASES = {"train": ("train",), "val": ("val", "valid", "validation", "dev"), "test": ("test",)}


def split_name(name: str) -> str | None:
    """The split an input calls `name` (valid/validation/dev are val), or None if not a split."""
    return next((split for split, names in ALIASES.items() if name in names), None)


def check_split(name: str, have: list[str], where: str) -> str:
    """`name` as one of the splits `have`; one line naming them otherwise."""
    split = split_name(name)
    if split not in have:
        raise ScratchLMError(f"{where} has no {name!r} split (it has {', '.join(have)})")
    return split
