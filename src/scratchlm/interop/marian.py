"""Marian (`MarianMTModel`, the opus-mt translation models) <-> the seq2seq_transformer family.

Marian is a post-norm Transformer encoder-decoder with swish activations, embeddings scaled
by sqrt(d_model), fixed sinusoidal positions laid out [sin | cos] (not interleaved),
embeddings shared by encoder, decoder and output layer, and a `final_logits_bias` added to
the logits. All of these are options of `Seq2SeqTransformerConfig`; this module renames the
weights and maps the config.

Its tokenizer is two sentencepiece models (source.spm, target.spm) over one vocab.json. It
becomes one `tokenizers` Unigram tokenizer: the source model's pieces and scores, with the
ids of vocab.json, so sources tokenize as Marian does and every target id decodes. The
decoder starts from Marian's decoder_start_token_id (its pad token), which is scratchlm's
"bos" role for an encoder-decoder (the token a target starts from).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from scratchlm.errors import ScratchLMError

ACTIVATIONS = {"swish": "swish", "silu": "swish", "gelu": "gelu", "relu": "relu"}

# Per-layer names: ours -> Marian's (under model.encoder.layers.N / model.decoder.layers.N).
_ENC = {"self_attn": "self_attn", "sub_attn.norm": "self_attn_layer_norm",
        "ffn.fc1": "fc1", "ffn.fc2": "fc2", "sub_ffn.norm": "final_layer_norm"}
_DEC = {"self_attn": "self_attn", "cross_attn": "encoder_attn",
        "sub_self.norm": "self_attn_layer_norm", "sub_cross.norm": "encoder_attn_layer_norm",
        "ffn.fc1": "fc1", "ffn.fc2": "fc2", "sub_ffn.norm": "final_layer_norm"}


def from_marian_config(hf: dict[str, Any]) -> dict[str, Any]:
    """Model-section values for a Marian config.json."""
    if hf.get("encoder_attention_heads") != hf.get("decoder_attention_heads", hf.get("encoder_attention_heads")):
        raise ScratchLMError("Marian models with different encoder and decoder head counts are not supported")
    if hf.get("encoder_ffn_dim") != hf.get("decoder_ffn_dim", hf.get("encoder_ffn_dim")):
        raise ScratchLMError("Marian models with different encoder and decoder FFN sizes are not supported")
    vocab = hf["vocab_size"]
    if hf.get("decoder_vocab_size") not in (None, vocab):
        raise ScratchLMError("Marian models with separate source and target vocabularies are not supported")
    act = hf.get("activation_function", "gelu")
    if act not in ACTIVATIONS:
        raise ScratchLMError(f"Marian activation {act!r} is not supported ({', '.join(ACTIVATIONS)} are)")
    if hf.get("normalize_before") or hf.get("normalize_embedding") or hf.get("add_final_layer_norm"):
        raise ScratchLMError("pre-norm or embedding-norm Marian variants are not supported")
    return {
        "family": "seq2seq_transformer", "vocab_size": vocab,
        "n_layer": hf["decoder_layers"], "n_enc_layer": hf["encoder_layers"],
        "n_head": hf["encoder_attention_heads"], "d_model": hf["d_model"],
        "d_ff": hf["encoder_ffn_dim"], "block_size": hf.get("max_position_embeddings", 512),
        "positions": "sinusoidal", "sinusoid_layout": "split", "pre_norm": False,
        "activation": ACTIVATIONS[act], "dropout": float(hf.get("dropout", 0.1)),
        "share_embeddings": bool(hf.get("share_encoder_decoder_embeddings", True)),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", True)),
        "scale_embedding": bool(hf.get("scale_embedding", False)),
        "final_logits_bias": True, "norm_eps": 1e-5,
        "init_std": float(hf.get("init_std", 0.02)),
    }


def to_marian_config(config, *, eos_id: int | None, pad_id: int | None,
                     start_id: int | None) -> dict[str, Any]:
    c = config
    if c.pre_norm or c.positions != "sinusoidal" or c.sinusoid_layout != "split" or c.norm_eps != 1e-5:
        raise ScratchLMError(
            "only Marian-shaped seq2seq_transformer models export to Hugging Face (post-norm, "
            "sinusoid_layout split, norm_eps 1e-5); this one is "
            f"pre_norm={c.pre_norm}, positions={c.positions}, sinusoid_layout={c.sinusoid_layout}"
        )
    act = {"swish": "swish", "gelu": "gelu", "relu": "relu"}[c.activation]
    ffn = c.d_ff or 4 * c.d_model
    return {
        "architectures": ["MarianMTModel"], "model_type": "marian",
        "vocab_size": c.vocab_size, "decoder_vocab_size": c.vocab_size, "d_model": c.d_model,
        "encoder_layers": c.enc_layers, "decoder_layers": c.n_layer,
        "encoder_attention_heads": c.n_head, "decoder_attention_heads": c.n_head,
        "encoder_ffn_dim": ffn, "decoder_ffn_dim": ffn, "activation_function": act,
        "max_position_embeddings": c.block_size, "scale_embedding": c.scale_embedding,
        "share_encoder_decoder_embeddings": c.share_embeddings,
        "tie_word_embeddings": c.tie_embeddings,
        "dropout": c.dropout, "attention_dropout": 0.0, "activation_dropout": 0.0,
        "init_std": c.init_std, "is_encoder_decoder": True, "use_cache": True,
        "pad_token_id": pad_id, "eos_token_id": eos_id, "forced_eos_token_id": eos_id,
        "decoder_start_token_id": start_id if start_id is not None else pad_id,
        "bos_token_id": None, "dtype": "float32",
    }


def _layer_maps(config) -> list[tuple[str, str]]:
    """(our prefix, Marian prefix) for every sub-module of every layer."""
    pairs = []
    for i in range(config.enc_layers):
        pairs += [(f"encoder.{i}.{o}.", f"model.encoder.layers.{i}.{m}.") for o, m in _ENC.items()]
    for i in range(config.n_layer):
        pairs += [(f"decoder.{i}.{o}.", f"model.decoder.layers.{i}.{m}.") for o, m in _DEC.items()]
    return pairs


def from_marian_state_dict(config, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    embed = state.get("model.shared.weight", state.get("model.encoder.embed_tokens.weight"))
    if embed is None:
        raise ScratchLMError("this Marian checkpoint has no embeddings (model.shared.weight)")
    out["src_embed.weight"] = embed
    out["tgt_embed.weight"] = (embed if config.share_embeddings
                               else state.get("model.decoder.embed_tokens.weight", embed))
    out["lm_head.weight"] = (out["tgt_embed.weight"] if config.tie_embeddings
                             else state["lm_head.weight"])
    if config.final_logits_bias:
        out["final_logits_bias"] = state.get("final_logits_bias",
                                             torch.zeros(1, config.vocab_size))
    theirs_to_ours = {m: o for o, m in _layer_maps(config)}
    for k, v in state.items():
        if not k.startswith(("model.encoder.layers.", "model.decoder.layers.")):
            continue
        parts = k.split(".")  # model.encoder.layers.N.<module>[.<sub>].<leaf>
        for cut in (5, 6):
            prefix = ".".join(parts[:cut]) + "."
            if prefix in theirs_to_ours:
                out[theirs_to_ours[prefix] + ".".join(parts[cut:])] = v
                break
        else:
            raise ScratchLMError(f"unexpected Marian weight {k}")
    return out


def to_marian_state_dict(config, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"model.shared.weight": state["src_embed.weight"].contiguous()}
    if not config.share_embeddings:
        out["model.decoder.embed_tokens.weight"] = state["tgt_embed.weight"].contiguous()
    if not config.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"].contiguous()
    out["final_logits_bias"] = state.get("final_logits_bias", torch.zeros(1, config.vocab_size))
    for ours, theirs in _layer_maps(config):
        for k, v in state.items():
            if k.startswith(ours):
                out[theirs + k[len(ours):]] = v.contiguous()
    return out


# ----------------------------------------------------------------------------- tokenizer
def _spm_proto(path: Path):
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise ScratchLMError("importing a Marian tokenizer (source.spm) needs sentencepiece and "
                             "protobuf: pip install sentencepiece protobuf") from None
    m = sentencepiece_model_pb2.ModelProto()
    try:
        m.ParseFromString(path.read_bytes())
    except Exception as e:
        raise ScratchLMError(f"{path} is not a sentencepiece model ({e})") from None
    return m


def tokenizer_from_marian_dir(d: str | Path):
    """Our Tokenizer from a Marian directory's source.spm + vocab.json (+ tokenizer_config)."""
    from tokenizers import (
        AddedToken,
        Regex,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers import Tokenizer as HFTokenizer

    from scratchlm.tokenizers import Tokenizer

    d = Path(d)
    for name in ("source.spm", "vocab.json"):
        if not (d / name).is_file():
            raise ScratchLMError(f"{d} has no tokenizer.json and no Marian {name}")
    proto = _spm_proto(d / "source.spm")
    if proto.trainer_spec.model_type != 1:  # 1: UNIGRAM
        raise ScratchLMError(f"{d / 'source.spm'} is not a unigram sentencepiece model")
    vocab: dict[str, int] = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    cfg = {}
    if (d / "tokenizer_config.json").is_file():
        cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))

    def named(key: str, default: str) -> str:
        v = cfg.get(key, default)
        return v.get("content", default) if isinstance(v, dict) else (v or default)

    eos, unk, pad = named("eos_token", "</s>"), named("unk_token", "<unk>"), named("pad_token", "<pad>")
    id_to_token = {i: t for t, i in vocab.items()}
    if sorted(id_to_token) != list(range(len(id_to_token))):
        raise ScratchLMError(f"{d / 'vocab.json'} ids are not 0..{len(vocab) - 1}")
    scores = {p.piece: p.score for p in proto.pieces if p.type in (1, 4)}  # NORMAL, USER_DEFINED
    unreachable = -1e6  # target-only pieces: never chosen for a source, still decodable
    pieces = [(id_to_token[i], scores.get(id_to_token[i], unreachable)) for i in range(len(vocab))]
    if unk not in vocab:
        raise ScratchLMError(f"{d / 'vocab.json'} lacks the unknown token {unk!r}")
    hf = HFTokenizer(models.Unigram(pieces, unk_id=vocab[unk], byte_fallback=False))
    steps = []
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    if proto.normalizer_spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if steps:
        hf.normalizer = normalizers.Sequence(steps)
    scheme = "always" if proto.normalizer_spec.add_dummy_prefix else "never"
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme)
    hf.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme=scheme)
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t in (eos, unk, pad) if t in vocab])
    lang = [AddedToken(t, special=False, normalized=False) for t in vocab if re.fullmatch(r">>.+<<", t)]
    if lang:
        hf.add_tokens(lang)
    if eos in vocab:  # like MarianTokenizer, transformers' fast tokenizer then appends </s>
        hf.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A $B {eos}", special_tokens=[(eos, vocab[eos])])
    roles = {"bos": pad, "eos": eos, "pad": pad, "unk": unk}
    return Tokenizer(hf, kind="sentencepiece", special_tokens=roles)
