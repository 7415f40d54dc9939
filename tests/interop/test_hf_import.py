"""Parity with Hugging Face checkpoints of every supported decoder architecture: a randomly
initialised `transformers` model saved with `save_pretrained` (with its tokenizer and chat
template) imports into scratchlm with the same logits and greedy tokens, and exports back to
a directory transformers loads with the same logits."""

from __future__ import annotations

import json

import pytest
import torch

import scratchlm
from scratchlm.errors import ScratchLMError
from scratchlm.modeldir import save_model_dir

transformers = pytest.importorskip("transformers")

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PROMPT_LEN, STEPS = 8, 32


@pytest.fixture(scope="module")
def hf_tokenizer():
    """A byte-level BPE tokenizer the way transformers saves one, with ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["The quick brown fox jumps over the lazy dog. 我喜欢吃苹果"] * 20,
                            trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>")
    fast.chat_template = TEMPLATE
    return fast


def _llama(**kw):
    base = dict(hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                rope_theta=500.0, initializer_range=0.2)
    return {**base, **kw}


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

# name -> (config class, kwargs, model_type expected on export)
CASES = {
    "gpt2": ("GPT2Config", dict(n_layer=2, n_head=4, n_embd=32, n_positions=64,
                                initializer_range=0.2), "gpt2"),
    "llama-gqa-tied": ("LlamaConfig", _llama(tie_word_embeddings=True), "llama"),
    "llama3-rope-scaling": ("LlamaConfig", _llama(rope_scaling=LLAMA3_ROPE), "llama"),
    "llama-linear-rope-bias-headdim": (
        "LlamaConfig", _llama(rope_scaling={"rope_type": "linear", "factor": 2.0},
                              attention_bias=True, mlp_bias=True, head_dim=16), "llama"),
    "mistral": ("MistralConfig", _llama(sliding_window=4096), "llama"),
    "qwen2": ("Qwen2Config", _llama(), "qwen2"),
}


def _perturb(model):
    """Non-trivial norm weights and biases (HF initialises them to 1 and 0)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or "ln_" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)


def _greedy_hf(model, prompt):
    out = model.generate(prompt, max_new_tokens=STEPS, do_sample=False, eos_token_id=None,
                         pad_token_id=0, min_new_tokens=STEPS)
    return out[0, prompt.shape[1]:].tolist()


def _greedy_ours(model, prompt):
    cfg = scratchlm.GenerationConfig(max_new_tokens=STEPS, temperature=0)
    return [int(t) for t in scratchlm.generate_tokens(model, prompt, config=cfg)]


@pytest.mark.parametrize("case", list(CASES))
def test_import_and_export_parity(case, hf_tokenizer, tmp_path):
    cls_name, kwargs, exported_type = CASES[case]
    V = len(hf_tokenizer)
    torch.manual_seed(0)
    hf_cfg = getattr(transformers, cls_name)(vocab_size=V, **kwargs)
    ref = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    _perturb(ref)
    src = tmp_path / "hf"
    # Sharded for one case, so the index is exercised.
    ref.save_pretrained(src, max_shard_size="20KB" if case == "llama3-rope-scaling" else "1GB")
    hf_tokenizer.save_pretrained(src)
    if case == "llama3-rope-scaling":
        assert (src / "model.safetensors.index.json").is_file()

    model, tok = scratchlm.load(src)
    x = torch.randint(0, V, (2, 40))
    with torch.no_grad():
        expected = ref(x).logits
        diff = (model(x) - expected).abs().max().item()
    assert diff < 1e-4, f"{case}: import logits differ by {diff}"
    print(f"{case}: import max |logit diff| {diff:.2e}")
    prompt = x[:1, :PROMPT_LEN]
    want = _greedy_hf(ref, prompt)
    assert _greedy_ours(model, prompt) == want

    # The tokenizer: same ids, its own special tokens, the chat template kept.
    text = "The lazy fox, 我喜欢 <|im_end|>"
    assert tok.encode(text) == hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (
        hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id, hf_tokenizer.pad_token_id)
    assert tok.chat_template == TEMPLATE

    # Export: our model directory is a Hugging Face directory transformers loads.
    dst = tmp_path / "ours"
    save_model_dir(dst, model, tok)
    assert json.loads((dst / "config.json").read_text())["model_type"] == exported_type
    back = transformers.AutoModelForCausalLM.from_pretrained(dst).eval()
    with torch.no_grad():
        diff = (back(x).logits - expected).abs().max().item()
    assert diff < 1e-4, f"{case}: exported logits differ by {diff}"
    print(f"{case}: export max |logit diff| {diff:.2e}")
    assert _greedy_hf(back, prompt) == want
    back_tok = transformers.AutoTokenizer.from_pretrained(dst)
    assert back_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert back_tok.eos_token == "<|im_end|>" and back_tok.chat_template == TEMPLATE
    again, tok2 = scratchlm.load(dst)  # and it loads here again, with the same roles
    assert (tok2.bos_id, tok2.eos_id, tok2.pad_id, tok2.unk_id) == (
        tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id)


def _write_config(d, **values):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(values))


def test_unsupported_architecture_lists_supported(tmp_path):
    _write_config(tmp_path, model_type="bert", architectures=["BertForMaskedLM"])
    with pytest.raises(ScratchLMError, match=r"'bert'.*not supported.*llama.*mistral.*qwen2.*marian"):
        scratchlm.load(tmp_path)


def test_unsupported_rope_scaling_is_named(tmp_path):
    cfg = transformers.LlamaConfig(**_llama(rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
                                   vocab_size=50).to_dict()
    _write_config(tmp_path, **cfg)
    with pytest.raises(ScratchLMError, match="RoPE scaling 'dynamic' is not supported"):
        scratchlm.load(tmp_path)


def test_missing_shard_is_reported(hf_tokenizer, tmp_path):
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=len(hf_tokenizer), **_llama()))
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    hf_tokenizer.save_pretrained(tmp_path)
    shard = sorted(tmp_path.glob("model-0000*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ScratchLMError, match=f"lists {shard.name}, which is missing"):
        scratchlm.load(tmp_path)


def test_config_mapping_details():
    from scratchlm.interop.hf import from_hf_config

    base = transformers.MistralConfig(**_llama(sliding_window=32), vocab_size=50).to_dict()
    # Sliding-window attention is exact over sequences no longer than the window.
    assert from_hf_config(base)["block_size"] == 32
    qwen = transformers.Qwen2Config(**_llama(), vocab_size=50).to_dict()
    values = from_hf_config({**qwen, "sliding_window": 16, "use_sliding_window": False})
    assert values["block_size"] == 64 and values["qkv_bias"] and not values["o_bias"]
    legacy = {**transformers.LlamaConfig(**_llama(), vocab_size=50).to_dict(),
              "rope_parameters": None, "rope_theta": 123.0,
              "rope_scaling": {"type": "linear", "factor": 4.0}}  # a transformers 4.x config.json
    values = from_hf_config(legacy)
    assert (values["rope_type"], values["rope_factor"], values["rope_theta"]) == ("linear", 4.0, 123.0)


def test_imported_tokenizer_roles(tmp_path):
    """Tokenizers without some special tokens: pad falls back to eos, no bos to add."""
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers

    from scratchlm.tokenizers import Tokenizer

    hf = HF(models.WordLevel({"a": 0, "b": 1, "</s>": 2, "<unk>": 3}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.add_special_tokens(["</s>"])
    tok = Tokenizer(hf, kind="other", special_tokens={"eos": "</s>", "unk": "<unk>"})
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (None, 2, 2, 3)
    assert tok.special_ids == {2, 3}
    with pytest.raises(ScratchLMError, match="no bos token"):
        tok.encode("a b", add_bos=True)
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert (again.bos_id, again.eos_id, again.pad_id) == (None, 2, 2)
    assert again.encode("a b <unk>") == [0, 1, 3]
    with pytest.raises(ScratchLMError, match="lacks the special tokens"):
        Tokenizer(hf, kind="other", special_tokens={"eos": "<|eos|>"})
