"""Hugging Face `transformers` layout for the decoder families: config.json and weight names.

Our weight names already are Hugging Face's, so conversion is a table of rules:
- llama: identical names; `lm_head.weight` is omitted when tied to the embeddings.
- gpt: identical names, but GPT-2 stores its projections as Conv1D, (in, out): those four
  weights are transposed. `lm_head.weight` is always tied, so omitted.
"""

from __future__ import annotations

from typing import Any

import torch

from scratchlm.config import DecoderConfig
from scratchlm.errors import ScratchLMError

GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some GPT-2 checkpoints carry that are not weights.
GPT2_IGNORED = (".attn.bias", ".attn.masked_bias")


# Where each family keeps the embedding that lm_head shares when tied.
EMBEDDING = {"gpt": "transformer.wte.weight", "llama": "model.embed_tokens.weight",
             "rnn": "embed_tokens.weight"}


def _tied(config: DecoderConfig) -> bool:
    return config.family == "gpt" or bool(getattr(config, "tie_embeddings", False))


def has_hf_layout(family: str) -> bool:
    return family in ("gpt", "llama")


def _aliases(config: Any) -> dict[str, str]:
    """Parameters that are another parameter (tied): alias -> source. Saved once."""
    if hasattr(config, "tied_weights"):
        return config.tied_weights()
    return {"lm_head.weight": EMBEDDING[config.family]} if _tied(config) else {}


def to_hf_state_dict(config: DecoderConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    aliases = _aliases(config)
    for k, v in state.items():
        if k in aliases:
            continue
        if config.family == "gpt" and k.endswith(GPT2_CONV1D):
            v = v.t()
        out[k] = v.contiguous()
    return out


def from_hf_state_dict(config: DecoderConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if config.family == "gpt":
            if k.endswith(GPT2_IGNORED):
                continue
            if not k.startswith(("transformer.", "lm_head.")):
                k = "transformer." + k  # GPT2Model checkpoints lack the prefix
            if k.endswith(GPT2_CONV1D):
                v = v.t()
        out[k] = v
    for alias, source in _aliases(config).items():
        if source in out:
            out.setdefault(alias, out[source])
    return out


def to_hf_config(config: DecoderConfig, *, bos_id: int, eos_id: int, pad_id: int) -> dict[str, Any]:
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
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": config.d_model,
            "intermediate_size": config.ffn_dim,
            "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head,
            "num_key_value_heads": config.kv_heads,
            "head_dim": config.head_dim,
            "max_position_embeddings": config.block_size,
            "rms_norm_eps": config.norm_eps,
            "rope_theta": config.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "attention_dropout": config.dropout,
            "tie_word_embeddings": bool(config.tie_embeddings),
            **common,
        }
    raise ScratchLMError(f"family {config.family!r} has no Hugging Face layout")


def from_hf_config(hf: dict[str, Any]) -> dict[str, Any]:
    """Model-section values for a Hugging Face config.json of a GPT-2 or Llama model."""
    mt = hf.get("model_type")
    if mt == "gpt2":
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ScratchLMError(f"GPT-2 activation {hf['activation_function']!r} is not supported")
        return {
            "family": "gpt", "vocab_size": hf["vocab_size"], "n_layer": hf["n_layer"],
            "n_head": hf["n_head"], "d_model": hf["n_embd"], "d_ff": hf.get("n_inner"),
            "block_size": hf.get("n_positions", 1024),
            "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
        }
    if mt == "llama":
        if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ScratchLMError("this Llama variant (activation or biases) is not supported")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ScratchLMError(f"RoPE scaling {rope.get('rope_type')!r} is not supported")
        n_head = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // n_head
        if head_dim * n_head != hf["hidden_size"]:
            raise ScratchLMError("Llama models whose head_dim * n_head != hidden_size are not supported")
        return {
            "family": "llama", "vocab_size": hf["vocab_size"], "n_layer": hf["num_hidden_layers"],
            "n_head": n_head, "n_kv_head": hf.get("num_key_value_heads", n_head),
            "d_model": hf["hidden_size"], "d_ff": hf["intermediate_size"],
            "block_size": hf.get("max_position_embeddings", 2048),
            "norm_eps": hf.get("rms_norm_eps", 1e-6),
            "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        }
    raise ScratchLMError(f"model_type {mt!r} is not supported (gpt2 and llama are)")
