"""`scratchlm convert` between a Hugging Face directory, a scratchlm directory and a GGUF file,
and `scratchlm download` failing fast, in one clean line, where no hub is reachable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

import scratchlm
from tests.cli.test_cli import assert_clean_error, cli, cli_in_process

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(["To be, or not to be: that is the question."] * 20, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                                bos_token="<|endoftext|>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   initializer_range=0.2, tie_word_embeddings=True)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    d = tmp_path_factory.mktemp("convert") / "hf"
    ref.save_pretrained(d)
    fast.save_pretrained(d)
    return d, ref


def _max_diff(model, ref, vocab):
    x = torch.arange(24).remainder(vocab)[None]
    with torch.no_grad():
        return (model(x) - ref(x).logits).abs().max().item()


def ok(capfd, *args):
    """A command in this process through the CLI's `main` (each test runs its first one as a
    real subprocess)."""
    proc = cli_in_process(capfd, *args)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_convert_round_trip(hf_dir, tmp_path, capfd):
    src, ref = hf_dir
    ours = tmp_path / "ours"
    out = cli("convert", src, ours)
    assert "Hugging Face directory (llama)" in out.stdout and "transformers loads it" in out.stdout
    model, tok = scratchlm.load(ours)
    assert _max_diff(model, ref, tok.vocab_size) < 1e-4
    assert "scratchlm" in json.loads((ours / "config.json").read_text())

    gguf_file = tmp_path / "m.gguf"
    ok(capfd, "convert", ours, gguf_file, "--outtype", "f16")
    gen = ok(capfd, "generate", gguf_file, "--prompt", "To be", "--greedy", "--max-new-tokens", "5")
    assert gen.stdout.startswith("To be")

    plain = tmp_path / "plain"
    ok(capfd, "convert", gguf_file, plain, "--to", "hf")
    assert "scratchlm" not in json.loads((plain / "config.json").read_text())
    back = transformers.AutoModelForCausalLM.from_pretrained(plain).eval()
    x = torch.arange(24).remainder(tok.vocab_size)[None]
    with torch.no_grad():
        f16_diff = (back(x).logits - ref(x).logits).abs().max().item()
    assert f16_diff < 0.05  # the GGUF held the matrices in f16
    assert transformers.AutoTokenizer.from_pretrained(plain).chat_template == tok.chat_template


def test_convert_errors_are_one_clean_line(hf_dir, tmp_path, capfd):
    src, _ = hf_dir
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "notes.txt").write_text("mine")
    assert_clean_error(cli("convert", src, tmp_path / "exists", check=False), "pass --overwrite")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    proc = cli_in_process(capfd, "convert", bert, tmp_path / "o")  # in this process, same main
    assert_clean_error(proc, "supported architectures: gpt2")
    assert "qwen2" in proc.stderr and "marian" in proc.stderr
    assert_clean_error(cli_in_process(capfd, "convert", tmp_path / "nope", tmp_path / "o"),
                       "does not exist")


@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:9"])
def test_download_fails_fast_without_a_hub(endpoint, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if endpoint:  # not offline by setting, but nothing answers there
        env.update(HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "scratchlm", "download", "HuggingFaceTB/SmolLM2-135M-Instruct",
         "--out", str(tmp_path / "m"), "--timeout", "3"],
        capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.monotonic() - t0
    assert_clean_error(proc, "cannot reach the Hugging Face Hub")
    assert "local directory" in proc.stderr and "scratchlm convert" in proc.stderr
    assert elapsed < 30 and not (tmp_path / "m").exists()
