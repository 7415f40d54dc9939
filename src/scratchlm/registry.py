"""The explicit registry of model families: written out by hand, no import magic.

Each entry names the family's config dataclass, its model class, its size presets, and what
the family can do (its capabilities). Code that depends on a capability reads it from the
family's spec, never from a list of family names of its own: a new family is its file, one
line here, and its test.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from scratchlm.errors import ScratchLMError
from scratchlm.models.config import DecoderConfig
from scratchlm.schema import build_section


@dataclass(frozen=True)
class FamilySpec:
    name: str
    config_cls: type
    model_cls: type
    presets: dict[str, dict[str, Any]]
    encoder_decoder: bool = False  # encodes a source, decodes a target (translate, not generate)
    hf_layout: bool = False  # its model directories are what transformers loads (HF names)
    hf_export: bool = False  # can be written as a plain Hugging Face directory (`convert --to hf`)
    # Dotted path of its list of Transformer blocks: what fine-tuning (LoRA, frozen layers,
    # gradient checkpointing) and FSDP work on; None: the family is not fine-tuned here.
    blocks: str | None = None
    embedding: str | None = None  # the weight a tied lm_head shares
    conv1d: bool = False  # HF stores its linear weights transposed (GPT-2's Conv1D)
    # Its time goes into nn.Linear layers, which --quantize int8 swaps (models/quant.py); the
    # RNN families' time is in their recurrent cells, which it does not touch.
    int8: bool = False


def _families() -> dict[str, FamilySpec]:
    from scratchlm.models import gpt, llama, rnn, seq2seq_rnn, seq2seq_transformer

    return {
        "gpt": FamilySpec("gpt", gpt.GPTConfig, gpt.GPT, gpt.PRESETS, hf_layout=True,
                          hf_export=True, blocks="transformer.h",
                          embedding="transformer.wte.weight", conv1d=True, int8=True),
        "llama": FamilySpec("llama", llama.LlamaConfig, llama.Llama, llama.PRESETS,
                            hf_layout=True, hf_export=True, blocks="model.layers",
                            embedding="model.embed_tokens.weight", int8=True),
        "rnn": FamilySpec("rnn", rnn.RNNConfig, rnn.RNNLM, rnn.PRESETS,
                          embedding="embed_tokens.weight"),
        "seq2seq_rnn": FamilySpec("seq2seq_rnn", seq2seq_rnn.Seq2SeqRNNConfig,
                                  seq2seq_rnn.Seq2SeqRNN, seq2seq_rnn.PRESETS, encoder_decoder=True),
        "seq2seq_transformer": FamilySpec(
            "seq2seq_transformer", seq2seq_transformer.Seq2SeqTransformerConfig,
            seq2seq_transformer.Seq2SeqTransformer, seq2seq_transformer.PRESETS,
            encoder_decoder=True, hf_export=True, int8=True),
    }


def get_family(name: str) -> FamilySpec:
    families = _families()
    if name not in families:
        close = difflib.get_close_matches(str(name), families, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ScratchLMError(
            f"unknown model.family {name!r}{hint} (families: {', '.join(families)})"
        )
    return families[name]


def family_names() -> list[str]:
    return list(_families())


def build_model(config: Any):
    """Instantiate the model class registered for `config.family`."""
    return get_family(config.family).model_cls(config)


def spec_of(model_or_config: Any) -> FamilySpec:
    """The spec of a model's (or a model config's) family."""
    family = getattr(model_or_config, "family", None) or model_or_config.config.family
    return get_family(family)


def is_encoder_decoder(model_or_config: Any) -> bool:
    """True for families that encode a source and decode a target (translate, not generate);
    False for a model of no registered family (a decoder written in a test, say)."""
    family = getattr(model_or_config, "family", None) or getattr(
        getattr(model_or_config, "config", None), "family", None)
    return family is not None and get_family(family).encoder_decoder


def blocks(model: Any) -> Any:
    """The model's list of Transformer blocks (`FamilySpec.blocks`), or None."""
    path = spec_of(model).blocks
    if path is None:
        return None
    for name in path.split("."):
        model = getattr(model, name)
    return model


def families_with(capability: str) -> list[str]:
    """The families whose spec has `capability` (e.g. "blocks", "hf_export"), for messages."""
    return [n for n, s in _families().items() if getattr(s, capability)]


def build_model_config(values: dict[str, Any]) -> Any:
    """Pick the family's dataclass from `family`, fill it from its preset, then `values`."""
    family = values.get("family", DecoderConfig.family)
    spec = get_family(family)
    preset = values.get("preset")
    merged: dict[str, Any] = {}
    if preset is not None:
        if preset not in spec.presets:
            close = difflib.get_close_matches(str(preset), spec.presets, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ScratchLMError(
                f"unknown model.preset {preset!r} for family {family!r}{hint} "
                f"(presets: {', '.join(spec.presets)})"
            )
        merged.update(spec.presets[preset])
    merged.update(values)
    merged["family"] = family
    return build_section(spec.config_cls, merged, "model")
