"""The explicit registry of model families: written out by hand, no import magic.

Each entry names the family's config dataclass, its model class, and its size presets.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from scratchlm.errors import ScratchLMError


@dataclass(frozen=True)
class FamilySpec:
    name: str
    config_cls: type
    model_cls: type
    presets: dict[str, dict[str, Any]]


def _families() -> dict[str, FamilySpec]:
    from scratchlm.models import gpt, llama, rnn, seq2seq_rnn, seq2seq_transformer

    return {
        "gpt": FamilySpec("gpt", gpt.GPTConfig, gpt.GPT, gpt.PRESETS),
        "llama": FamilySpec("llama", llama.LlamaConfig, llama.Llama, llama.PRESETS),
        "rnn": FamilySpec("rnn", rnn.RNNConfig, rnn.RNNLM, rnn.PRESETS),
        "seq2seq_rnn": FamilySpec("seq2seq_rnn", seq2seq_rnn.Seq2SeqRNNConfig,
                                  seq2seq_rnn.Seq2SeqRNN, seq2seq_rnn.PRESETS),
        "seq2seq_transformer": FamilySpec(
            "seq2seq_transformer", seq2seq_transformer.Seq2SeqTransformerConfig,
            seq2seq_transformer.Seq2SeqTransformer, seq2seq_transformer.PRESETS),
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


def is_encoder_decoder(model_or_config: Any) -> bool:
    """True for families that encode a source and decode a target (translate, not generate)."""
    family = getattr(model_or_config, "family", None) or model_or_config.config.family
    return family in ("seq2seq_rnn", "seq2seq_transformer")
