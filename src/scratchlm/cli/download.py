"""Fetch a model from the Hugging Face Hub: `scratchlm download REPO_ID [--out DIR --revision R
--timeout S]`.

Uses `huggingface_hub` and downloads only what scratchlm reads (config, weights, tokenizer,
chat template). Where no hub can be reached it fails within `--timeout` seconds, saying how to
use a local directory instead: scratchlm loads a Hugging Face model directory or a .gguf file
directly (`scratchlm generate DIR`, `scratchlm convert DIR OUT`).
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from scratchlm.cli.options import add_overwrite
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_dir, claim_out_dir

HELP = "download a model from the Hugging Face Hub (where one is reachable)"

PATTERNS = ["*.json", "*.safetensors", "*.model", "*.spm", "*.jinja", "*.txt", "*.tiktoken"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo_id", metavar="REPO_ID", help="e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--out", help="directory to write (default: models/<name>)")
    add_overwrite(p)
    p.add_argument("--revision", default=None, help="branch, tag or commit")
    p.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="also download files matching this pattern (e.g. '*Q4_K_M.gguf')")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for the hub before giving up (default 5)")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _unreachable(endpoint: str, why: str) -> ScratchLMError:
    return ScratchLMError(
        f"cannot reach the Hugging Face Hub at {endpoint} ({why}); download the model on a "
        "machine that can and point scratchlm at the local directory or .gguf file instead, "
        "e.g. `scratchlm convert /path/to/model_dir OUT_DIR` or `scratchlm generate /path/to/model_dir`"
    )


def check_hub(endpoint: str, timeout: float) -> None:
    """Raise ScratchLMError unless a TCP connection to the hub opens within `timeout` s."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise _unreachable(endpoint, "HF_HUB_OFFLINE is set")
    url = urlparse(endpoint)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[BaseException | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(e)

    t = threading.Thread(target=probe, daemon=True)  # name resolution ignores socket timeouts
    t.start()
    t.join(timeout)
    if not result:
        raise _unreachable(endpoint, f"no answer within {timeout:g} s")
    if result[0] is not None:
        e = result[0]
        raise _unreachable(endpoint, getattr(e, "strerror", None) or str(e) or type(e).__name__)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    endpoint = hub_endpoint()
    if args.repo_id.count("/") > 1 or not args.repo_id.strip("/"):
        raise ScratchLMError(f"{args.repo_id!r} is not a repository id (OWNER/NAME)")
    out = Path(args.out or Path("models") / args.repo_id.split("/")[-1])
    claim_out_dir(out, overwrite=args.overwrite, kind="model directory")
    check_hub(endpoint, args.timeout)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ScratchLMError("downloading needs huggingface_hub: pip install huggingface_hub") from None
    try:
        with atomic_dir(out) as tmp:  # out appears only once every file is in
            snapshot_download(args.repo_id, revision=args.revision, local_dir=tmp,
                              allow_patterns=PATTERNS + args.include, etag_timeout=args.timeout)
    except Exception as e:  # hub errors: not found, gated, network
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ScratchLMError(f"downloading {args.repo_id} failed: {first}") from None
    path = out
    print(f"wrote {path}; load it with `scratchlm generate {path}` or convert it with "
          f"`scratchlm convert {path} OUT_DIR`")
    return 0
