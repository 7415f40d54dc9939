"""Fixtures of the reliability tests: one small world of inputs (a corpus, a prepared data
directory, a tiny model directory, a LoRA adapter, a GGUF file, an SFT file) and helpers that
run the CLI in-process and snapshot directories, so a test can say "nothing was lost"."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from scratchlm.cli import main
from scratchlm.data.pretrain import prepare
from scratchlm.modeldir import save_model_dir
from scratchlm.peft.lora import apply_lora, save_adapter
from scratchlm.tokenizers import train_tokenizer
from tests.conftest import tiny_model

CHARS = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789?!.,+=<>|_\n"


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """Inputs every reliability test reads (never writes): see the module docstring."""
    d = tmp_path_factory.mktemp("world")
    (d / "corpus").mkdir()
    (d / "corpus" / "a.txt").write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    (d / "corpus" / "b.txt").write_text("pack my box with five dozen liquor jugs!\n" * 40)
    tok = train_tokenizer(kind="bpe", texts=[CHARS * 3], vocab_size=300)
    prepare([d / "corpus"], out=d / "data", tokenizer="char", val_fraction=0.2, show_progress=False)
    model = tiny_model("llama", vocab_size=tok.vocab_size, block_size=64)
    save_model_dir(d / "model", model, tok)
    torch.manual_seed(0)
    apply_lora(model, r=2, alpha=4, targets="q_proj,v_proj")
    for name, p in model.named_parameters():
        if "lora_B" in name:  # non-zero B: merging changes the weights
            torch.nn.init.normal_(p, std=0.02)
    save_adapter(d / "adapter", model, tok, base_model=str(d / "model"))
    from scratchlm.interop.gguf_write import save_gguf

    save_gguf(d / "model.gguf", tiny_model("llama", vocab_size=tok.vocab_size, block_size=64), tok)
    with open(d / "chat.jsonl", "w") as f:
        for i in range(12):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"{i}+1?"},
                                             {"role": "assistant", "content": f"{i + 1}"}]}) + "\n")
    return d


def snapshot(*roots: Path) -> dict[str, tuple[str, int]]:
    """Every file and directory under `roots`: relative path -> (sha256 or "dir", mode)."""
    out = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        items = [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]
        for p in items:
            st = p.lstat()
            what = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest() \
                if p.is_file() else "other"
            out[str(p)] = (what, st.st_mode)
    return out


def run(capsys, *args) -> tuple[int, str, str]:
    """`scratchlm ARGS` in this process: (exit code, stdout, stderr)."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse: usage errors exit 2
        rc = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return rc, out.out, out.err


def leftovers(directory: Path) -> list[str]:
    """Temp names a writer leaves while it runs (none may stay after a command ends)."""
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp") or ".old-" in n)
