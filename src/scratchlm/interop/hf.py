"""Hugging Face `transformers` layout: config.json and weight names, for every family that
transformers has a class for.

Our decoder weight names already are Hugging Face's, so conversion is a table of rules:
- llama: identical names; `lm_head.weight` is omitted when tied to the embeddings. The
  llama family also holds Mistral, Qwen2 (q/k/v biases) and SmolLM2 checkpoints, and Llama 3
  with its RoPE scaling; export writes `LlamaForCausalLM`, or `Qwen2ForCausalLM` for a model
  with q/k/v biases and no output bias.
- gpt: identical names, but GPT-2 stores its projections as Conv1D, (in, out): those four
  weights are transposed. `lm_head.weight` is always tied, so omitted.
- seq2seq_transformer: Marian (`MarianMTModel`, the opus-mt models), by a renaming table in
  `scratchlm.interop.marian`.

Any other architecture is refused with the list of supported ones (`SUPPORTED`).
"""

from __future__ import annotations

from typing import Any

import torch

from scratchlm.errors import ScratchLMError
from scratchlm.models.config import DecoderConfig
from scratchlm.registry import get_family

GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some GPT-2 checkpoints carry that are not weights.
GPT2_IGNORED = (".attn.bias", ".attn.masked_bias")
# Buffers some Llama checkpoints carry that are not weights.
LLAMA_IGNORED = (".rotary_emb.inv_freq",)

# Hugging Face model_type -> (its class, our family, what it covers).
SUPPORTED: dict[str, tuple[str, str, str]] = {
    "gpt2": ("GPT2LMHeadModel", "gpt", "GPT-2"),
    "llama": ("LlamaForCausalLM", "llama", "Llama 2, Llama 3 (rope scaling), SmolLM2, TinyLlama"),
    "mistral": ("MistralForCausalLM", "llama", "Mistral"),
    "qwen2": ("Qwen2ForCausalLM", "llama", "Qwen2, Qwen2.5"),
    "marian": ("MarianMTModel", "seq2seq_transformer", "Marian / opus-mt"),
}


def supported_text() -> str:
    return "; ".join(f"{mt} ({cls}: {what})" for mt, (cls, _, what) in SUPPORTED.items())


def unsupported(what: str) -> ScratchLMError:
    return ScratchLMError(f"{what} is not supported; supported architectures: {supported_text()}")


def _tied(config: DecoderConfig) -> bool:
    # GPT-2's lm_head is always its token embedding (conv1d marks GPT-2's layout).
    return get_family(config.family).conv1d or bool(getattr(config, "tie_embeddings", False))


def has_hf_layout(family: str) -> bool:
    """Families whose model directories transformers loads (our names are its names)."""
    return get_family(family).hf_layout


def can_export(family: str) -> bool:
    """Families that can be written as a plain Hugging Face directory (`to_hf`)."""
    return get_family(family).hf_export


def _aliases(config: Any) -> dict[str, str]:
    """Parameters that are another parameter (tied): alias -> source. Saved once."""
    if hasattr(config, "tied_weights"):
        return config.tied_weights()
    return {"lm_head.weight": get_family(config.family).embedding} if _tied(config) else {}


def to_hf_state_dict(config: DecoderConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the weights a model directory stores (tied copies left out)."""
    out = {}
    aliases = _aliases(config)
    for k, v in state.items():
        if k in aliases:
            continue
        if get_family(config.family).conv1d and k.endswith(GPT2_CONV1D):
            v = v.t()
        out[k] = v.contiguous()
    return out


def from_hf_state_dict(config: DecoderConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stored weights (ours, or a Hugging Face checkpoint's) -> our state dict."""
    if config.family == "seq2seq_transformer" and any(k.startswith("model.") for k in state):
        from scratchlm.interop import marian

        return marian.from_marian_state_dict(config, state)
    out = {}
    for k, v in state.items():
        if config.family == "gpt":
            if k.endswith(GPT2_IGNORED):
                continue
            if not k.startswith(("transformer.", "lm_head.")):
                k = "transformer." + k  # GPT2Model checkpoints lack the prefix
            if k.endswith(GPT2_CONV1D):
                v = v.t()
        elif config.family == "llama" and k.endswith(LLAMA_IGNORED):
            continue
        out[k] = v
    for alias, source in _aliases(config).items():
        if source in out:
            out.setdefault(alias, out[source])
    return out


def _rope_parameters(config: Any) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_type": config.rope_type, "rope_theta": config.rope_theta}
    if config.rope_type in ("linear", "llama3"):
        rope["factor"] = config.rope_factor
    if config.rope_type == "llama3":
        rope.update(low_freq_factor=config.rope_low_freq_factor,
                    high_freq_factor=config.rope_high_freq_factor,
                    original_max_position_embeddings=config.rope_original_max_len)
    return rope


def to_hf_config(config: DecoderConfig, *, bos_id: int | None, eos_id: int | None,
                 pad_id: int | None) -> dict[str, Any]:
    """config.json for transformers (our config goes beside it under "scratchlm")."""
    common = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id,
              "vocab_size": config.vocab_size, "initializer_range": config.init_std,
              "use_cache": True, "dtype": "float32"}
    if config.family == "gpt":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_positions": config.block_size,
            "n_embd": config.d_model,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "n_inner": config.d_ff,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps,
            "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout,
            "scale_attn_weights": True,
            "tie_word_embeddings": True,
            **common,
        }
    if config.family == "llama":
        qwen2 = config.qkv_bias and not config.o_bias and not config.mlp_bias
        if not qwen2 and config.qkv_bias != config.o_bias:
            raise ScratchLMError("a llama model with an output-projection bias but none on q/k/v "
                                 "has no Hugging Face class")
        rope = _rope_parameters(config)
        out = {
            "architectures": ["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"],
            "model_type": "qwen2" if qwen2 else "llama",
            "hidden_size": config.d_model,
            "intermediate_size": config.ffn_dim,
            "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head,
            "num_key_value_heads": config.kv_heads,
            "head_dim": config.head_dim,
            "max_position_embeddings": config.block_size,
            "rms_norm_eps": config.norm_eps,
            "rope_theta": config.rope_theta,  # transformers 4.x reads these two
            "rope_scaling": None if config.rope_type == "default" else dict(rope),
            "rope_parameters": rope,  # transformers 5
            "hidden_act": "silu",
            "attention_dropout": config.dropout,
            "tie_word_embeddings": bool(config.tie_embeddings),
            **common,
        }
        if qwen2:
            out.update(use_sliding_window=False, sliding_window=None,
                       max_window_layers=config.n_layer)
        else:
            out.update(attention_bias=bool(config.qkv_bias), mlp_bias=bool(config.mlp_bias))
        return out
    if config.family == "seq2seq_transformer":
        from scratchlm.interop import marian

        return marian.to_marian_config(config, eos_id=eos_id, pad_id=pad_id, start_id=bos_id)
    raise ScratchLMError(f"family {config.family!r} has no Hugging Face layout")


def _llama_values(hf: dict[str, Any], mt: str) -> dict[str, Any]:
    if hf.get("hidden_act", "silu") != "silu":
        raise ScratchLMError(f"{mt} activation {hf['hidden_act']!r} is not supported (silu is)")
    qkv_bias = o_bias = bool(hf.get("attention_bias", False))
    if mt == "qwen2":
        qkv_bias, o_bias = True, False
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if isinstance(rope, dict) and "full_attention" in rope:  # per-layer-type parameters
        rope = rope["full_attention"]
    rope_type = rope.get("rope_type", rope.get("type")) or "default"
    if rope_type not in ("default", "linear", "llama3"):
        raise ScratchLMError(
            f"RoPE scaling {rope_type!r} is not supported (default, linear and llama3 are)"
        )
    if float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise ScratchLMError("partial rotary embeddings are not supported")
    n_head = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_head
    block = hf.get("max_position_embeddings", 2048)
    # Sliding-window attention equals full attention over sequences no longer than the
    # window: the context is limited to it, so results stay exact.
    window = hf.get("sliding_window")
    if mt == "qwen2" and not hf.get("use_sliding_window", False):
        window = None
    if window:
        block = min(block, int(window))
    values = {
        "family": "llama", "vocab_size": hf["vocab_size"], "n_layer": hf["num_hidden_layers"],
        "n_head": n_head, "n_kv_head": hf.get("num_key_value_heads") or n_head,
        "d_model": hf["hidden_size"], "d_ff": hf["intermediate_size"],
        "block_size": block,
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta") or 10000.0)),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "rope_type": rope_type,
        "attn_head_dim": head_dim if head_dim * n_head != hf["hidden_size"] else None,
        "qkv_bias": qkv_bias, "o_bias": o_bias, "mlp_bias": bool(hf.get("mlp_bias", False)),
    }
    if rope_type in ("linear", "llama3"):
        values["rope_factor"] = float(rope["factor"])
    if rope_type == "llama3":
        values.update(
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_max_len=int(rope.get("original_max_position_embeddings")
                                      or hf.get("max_position_embeddings", 8192)),
        )
    return values


def from_hf_config(hf: dict[str, Any]) -> dict[str, Any]:
    """Model-section values for a Hugging Face config.json of a supported architecture."""
    mt = hf.get("model_type")
    if mt == "gpt2":
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ScratchLMError(f"GPT-2 activation {hf['activation_function']!r} is not supported")
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise ScratchLMError("GPT-2 scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn "
                                 "are not supported")
        if hf.get("scale_attn_weights") is False:
            raise ScratchLMError("GPT-2 without scale_attn_weights is not supported")
        return {
            "family": "gpt", "vocab_size": hf["vocab_size"], "n_layer": hf["n_layer"],
            "n_head": hf["n_head"], "d_model": hf["n_embd"], "d_ff": hf.get("n_inner"),
            "block_size": hf.get("n_positions", 1024),
            "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
        }
    if mt in ("llama", "mistral", "qwen2"):
        return _llama_values(hf, mt)
    if mt == "marian":
        from scratchlm.interop import marian

        return marian.from_marian_config(hf)
    arch = ", ".join(hf.get("architectures") or []) or "no architectures listed"
    raise unsupported(f"model_type {mt!r} ({arch})")
