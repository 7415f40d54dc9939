"""Tiny model directories and a `scratchlm serve` subprocess for the serving tests.

The models are randomly initialised (a char tokenizer trained on the test corpus): the tests
check the serving machinery against `scratchlm.generate`, not the quality of the text."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from scratchlm.modeldir import save_model_dir
from scratchlm.tokenizers.tokenizer import SPECIAL_TOKENS, UNK, Tokenizer
from tests.conftest import tiny_model

# One torch thread, here and in the servers: tiny models gain nothing from more, and on a
# busy 2-core machine two spinning threads are many times slower.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
API_KEY = "test-key-0123456789"
# A ChatML-like template over the tokenizer's own characters, as a model's
# tokenizer_config.json would carry it.
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tokenizer(corpus):
    """One token per character of the corpus and no byte tokens, so that even a random model
    writes whole characters (byte tokens would make it write broken UTF-8)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models

    text = "".join(p.read_text(encoding="utf-8") for p in sorted(corpus.iterdir()))
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *sorted(set(text))])}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens(SPECIAL_TOKENS)
    return Tokenizer(hf, kind="char")


@pytest.fixture(scope="session")
def gpt_dir(tokenizer, tmp_path_factory) -> Path:
    """A gpt with a long context (1024), no chat template (as if pretrained from scratch)."""
    model = tiny_model("gpt", vocab_size=tokenizer.vocab_size, block_size=1024, init_std=0.1)
    return save_model_dir(tmp_path_factory.mktemp("models") / "tiny-gpt", model, tokenizer)


@pytest.fixture(scope="session")
def template_dir(gpt_dir, tmp_path_factory) -> Path:
    """The same gpt whose tokenizer_config.json carries a chat template."""
    import shutil

    d = tmp_path_factory.mktemp("models") / "tiny-chat"
    shutil.copytree(gpt_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = TEMPLATE
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="session")
def talker_dir(tokenizer, tmp_path_factory) -> Path:
    """An rnn that never emits <eos> (its output bias for it is -30) and has no context
    limit: its answers run to max tokens, long enough to interrupt mid-stream."""
    model = tiny_model("rnn", vocab_size=tokenizer.vocab_size, init_std=0.1)
    with torch.no_grad():
        model.lm_head.bias[tokenizer.eos_id] = -30.0
    return save_model_dir(tmp_path_factory.mktemp("models") / "talker", model, tokenizer)


@pytest.fixture(scope="session")
def seq2seq_dir(tokenizer, tmp_path_factory) -> Path:
    model = tiny_model("seq2seq_transformer", vocab_size=tokenizer.vocab_size, init_std=0.1)
    return save_model_dir(tmp_path_factory.mktemp("models") / "tiny-mt", model, tokenizer)


class Server:
    """`scratchlm serve MODEL_DIR --port 0 ...` in a subprocess; `url` once it listens."""

    def __init__(self, model_dir: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scratchlm", "serve", str(model_dir), "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + 120
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                raise RuntimeError("the server did not start:\n" + "".join(self.output)) from None
            found = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
            if found:
                self.url = found.group(1)
                break
        self.health()  # answers once the server loop runs

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=30) as r:
            return json.loads(r.read())

    def wait_idle(self, timeout: float = 30) -> dict:
        """/health once no row is decoding and nothing waits."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if h["running_rows"] == 0 and h["waiting"] == 0:
                return h
            if time.monotonic() > deadline:
                raise AssertionError(f"the server is still busy: {h}")
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
