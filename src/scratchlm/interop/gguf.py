"""GGUF files (llama.cpp's format) to scratchlm models, with the `gguf` package.

    model, tokenizer = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")

Export lives in `scratchlm.interop.gguf_write` (`save_gguf`); this module holds the reading
side and the tensor-name tables both sides share.

Import reads three of llama.cpp's architectures: "llama" (Llama 2/3, Mistral, SmolLM2,
TinyLlama, ...) and "qwen2" (Qwen2, Qwen2.5: q/k/v biases) into the llama family, and "gpt2"
into the gpt family. Each tensor is dequantised to float32 with `gguf`'s own
`gguf.quants.dequantize`, for the types in `SUPPORTED_TYPES`. llama.cpp stores a "llama" file's
q and k projections with their rows permuted for its interleaved RoPE; import undoes that (and
export redoes it); "qwen2" uses the rotate-half RoPE that scratchlm uses, so nothing is
permuted there. Llama 3.1's RoPE scaling, which GGUF stores as a `rope_freqs` tensor of
per-frequency divisors, is recognised as `rope_type: llama3` when it matches that scheme.

The tokenizer is rebuilt from the metadata into a Hugging Face `tokenizers` tokenizer:
`tokenizer.ggml.model` "gpt2" is byte-level BPE with the file's merges and the pre-tokenizer
that `tokenizer.ggml.pre` names; "llama" is a sentencepiece BPE vocabulary (merges recovered
from the token scores, byte fallback). Control tokens become special tokens; bos/eos/pad/unk
and the chat template (`tokenizer.chat_template`) come from the metadata.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchlm.errors import ScratchLMError

ARCHITECTURES = ("llama", "qwen2", "gpt2")
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")

# token_type values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# GGUF tensor name -> ours, per architecture: (whole-model names, block prefix, per-block names
# as blk.N.<name>). Names as llama.cpp's convert_hf_to_gguf.py writes them (gguf-py's
# TENSOR_NAMES); biases are optional in "llama" (o, mlp) and "qwen2" (q, k, v).
_LLAMA_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LLAMA_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate.bias": "mlp.gate_proj.bias",
    "ffn_up.bias": "mlp.up_proj.bias",
    "ffn_down.bias": "mlp.down_proj.bias",
}
_GPT2_GLOBAL = {
    "token_embd.weight": "transformer.wte.weight",
    "position_embd.weight": "transformer.wpe.weight",
    "output_norm.weight": "transformer.ln_f.weight",
    "output_norm.bias": "transformer.ln_f.bias",
}
_GPT2_BLOCK = {  # our GPT-2 linears are nn.Linear (out, in): GGUF's order, nothing transposed
    f"{g}.{kind}": f"{o}.{kind}"
    for g, o in (("attn_norm", "ln_1"), ("attn_qkv", "attn.c_attn"), ("attn_output", "attn.c_proj"),
                 ("ffn_norm", "ln_2"), ("ffn_up", "mlp.c_fc"), ("ffn_down", "mlp.c_proj"))
    for kind in ("weight", "bias")
}
_TABLES = {
    "llama": (_LLAMA_GLOBAL, "model.layers.{}.", _LLAMA_BLOCK),
    "qwen2": (_LLAMA_GLOBAL, "model.layers.{}.", _LLAMA_BLOCK),
    "gpt2": (_GPT2_GLOBAL, "transformer.h.{}.", _GPT2_BLOCK),
}


def tensor_names(arch: str, n_layer: int) -> dict[str, str]:
    """GGUF tensor name -> our state-dict key, for every tensor an `arch` file may hold."""
    glob, prefix, block = _TABLES[arch]
    names = dict(glob)
    for i in range(n_layer):
        names.update({f"blk.{i}.{g}": prefix.format(i) + o for g, o in block.items()})
    return names


def permuted(arch: str, name: str) -> bool:
    """Whether a GGUF tensor is stored in llama.cpp's interleaved-RoPE row order."""
    return arch == "llama" and name.split(".")[-2] in ("attn_q", "attn_k")


# Pre-tokenizer split patterns for `tokenizer.ggml.pre` (llama.cpp's names); byte-level BPE.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
               "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}
# GPT-2's byte-level regex, with every digit split off first (StarCoder, SmolLM).
_PRE_DIGITS = ("smollm", "starcoder", "refact", "codeshell")
_PRE_GPT2 = ("default", "gpt2", "gpt-2")


def _require_gguf():
    try:
        import gguf
    except ImportError:  # pragma: no cover - a dependency of scratchlm
        raise ScratchLMError("reading GGUF files needs the `gguf` package: pip install gguf") from None
    return gguf


def is_gguf_file(path: str | os.PathLike) -> bool:
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"


# ----------------------------------------------------------------------------- reading
def read_metadata(reader) -> dict[str, Any]:
    """Every key/value of the file as Python values (strings, numbers, lists)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            out[key] = field.contents()
        except Exception:  # an unusual value type: skip it, it is not one we read
            continue
    return out


def dequantize(tensor) -> np.ndarray:
    """One tensor of a `GGUFReader` as float32, in PyTorch's (out, in) order.

    Uses gguf's own dequantisation, so values are exactly what `gguf` (and transformers'
    GGUF loader, which calls it) produces."""
    gguf = _require_gguf()
    qtype = tensor.tensor_type
    if qtype.name not in SUPPORTED_TYPES:
        raise ScratchLMError(
            f"tensor {tensor.name} is quantised as {qtype.name}, which is not supported "
            f"(supported: {', '.join(SUPPORTED_TYPES)})"
        )
    values = gguf.quants.dequantize(np.asarray(tensor.data), qtype)
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions innermost first
    return np.array(values, dtype=np.float32).reshape(shape)  # a copy: the file is memory-mapped


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF -> llama.cpp row order of a q/k projection (interleaved RoPE pairs per head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp -> HF row order of a q/k projection (inverse of `_permute`)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_from_freqs(factors: np.ndarray, head_dim: int, theta: float) -> dict[str, Any]:
    """Recognise a `rope_freqs` tensor (the divisor of each RoPE frequency) as Llama 3.1's
    scheme and return its config values. The file does not say which context length and
    band factors produced it: the usual ones are tried, solving for `factor` from a
    frequency in the low (divided by factor) or the smoothed band, and the result must
    reproduce every divisor."""
    from scratchlm.models.layers import rope_inv_freq

    factors = np.asarray(factors, dtype=np.float64).reshape(-1)
    if np.allclose(factors, 1.0):
        return {}
    base = rope_inv_freq(head_dim, theta=theta).double().numpy()
    wavelen = 2 * np.pi / base
    for original in (8192, 4096, 2048, 16384, 32768, 65536, 131072):
        for low, high in ((1.0, 4.0), (1.0, 2.0), (2.0, 4.0)):
            low_band = wavelen > original / low
            mid_band = ~(wavelen < original / high) & ~low_band
            if low_band.any():
                factor = float(factors[low_band][0])
            elif mid_band.any():
                j = int(np.flatnonzero(mid_band)[0])
                smooth = (original / wavelen[j] - low) / (high - low)
                denom = 1.0 / factors[j] - smooth
                if denom <= 0:
                    continue
                factor = float((1 - smooth) / denom)
            else:
                continue
            if not factor > 0:
                continue
            inv = rope_inv_freq(head_dim, theta=theta, rope_type="llama3", factor=factor,
                                low_freq_factor=low, high_freq_factor=high,
                                original_max_len=original).double().numpy()
            if np.allclose(base / inv, factors, rtol=1e-4, atol=1e-6):
                factor = round(factor, 4)
                return {"rope_type": "llama3", "rope_factor": factor, "rope_low_freq_factor": low,
                        "rope_high_freq_factor": high, "rope_original_max_len": original}
    raise ScratchLMError("this GGUF's rope_freqs tensor (per-frequency RoPE scaling) does not match "
                         "Llama 3.1's scheme, the only one supported")


def _gpt2_values(get, tensors: dict[str, Any]) -> dict[str, Any]:
    if "output.weight" in tensors:
        raise ScratchLMError("GPT-2 GGUFs with an output matrix apart from the token embeddings "
                             "are not supported (scratchlm's GPT ties them)")
    return {
        "family": "gpt", "vocab_size": int(tensors["token_embd.weight"].shape[1]),
        "n_layer": int(get("block_count")), "n_head": int(get("attention.head_count")),
        "d_model": int(get("embedding_length")), "d_ff": int(get("feed_forward_length")),
        "block_size": int(get("context_length")),
        "norm_eps": float(get("attention.layer_norm_epsilon", 1e-5)),
    }


def _config_values(meta: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ScratchLMError(
            f"GGUF architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)}: "
            "Llama 2/3, Mistral, SmolLM2, TinyLlama and others llama.cpp writes as 'llama'; "
            "Qwen2/2.5; GPT-2)"
        )

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    if arch == "gpt2":
        return {"arch": arch, **_gpt2_values(get, tensors)}
    n_head = int(get("attention.head_count"))
    d_model = int(get("embedding_length"))
    head_dim = int(get("attention.key_length", 0) or d_model // n_head)
    if int(get("attention.value_length", head_dim)) != head_dim:
        raise ScratchLMError("GGUF models whose key and value heads differ in size are not supported")
    if int(get("rope.dimension_count", head_dim)) != head_dim:
        raise ScratchLMError("partial rotary embeddings (rope.dimension_count < head size) are not supported")
    if get("expert_count"):
        raise ScratchLMError("mixture-of-experts GGUF models are not supported")
    n_kv = get("attention.head_count_kv", n_head)
    if isinstance(n_kv, list):
        raise ScratchLMError("GGUF models with a different number of kv heads per layer are not supported")
    vocab = int(get("vocab_size", 0) or len(meta.get("tokenizer.ggml.tokens") or []))
    if not vocab:
        vocab = int(tensors["token_embd.weight"].shape[1])
    theta = float(get("rope.freq_base", 10000.0))
    values: dict[str, Any] = {
        "arch": arch, "family": "llama", "vocab_size": vocab, "n_layer": int(get("block_count")),
        "n_head": n_head, "n_kv_head": int(n_kv), "d_model": d_model,
        "d_ff": int(get("feed_forward_length")), "block_size": int(get("context_length", 2048)),
        "norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)), "rope_theta": theta,
        "tie_embeddings": "output.weight" not in tensors,
        "attn_head_dim": head_dim if head_dim * n_head != d_model else None,
        # Optional biases (Qwen2's q/k/v; o and MLP biases of some Llama exports).
        "qkv_bias": "blk.0.attn_q.bias" in tensors, "o_bias": "blk.0.attn_output.bias" in tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in tensors,
    }
    scaling = get("rope.scaling.type")
    if scaling not in (None, "none", "linear"):
        raise ScratchLMError(f"RoPE scaling {scaling!r} in this GGUF is not supported (linear and "
                             "Llama 3.1's rope_freqs are)")
    if scaling == "linear":
        values.update(rope_type="linear", rope_factor=float(get("rope.scaling.factor", 1.0)))
    if "rope_freqs.weight" in tensors:
        factors = dequantize(tensors["rope_freqs.weight"])
        values.update(_llama3_rope_from_freqs(factors, head_dim, theta))
    return values


def _state_dict(tensors: dict[str, Any], values: dict[str, Any]) -> dict[str, torch.Tensor]:
    arch = values["arch"]
    names = tensor_names(arch, values["n_layer"])
    state = {}
    unknown = []
    for name, t in tensors.items():
        if name == "rope_freqs.weight":
            continue
        if name not in names:
            unknown.append(name)
            continue
        w = torch.from_numpy(dequantize(t))
        if permuted(arch, name):
            w = _unpermute(w, values["n_head"] if ".attn_q." in name else values["n_kv_head"])
        state[names[name]] = w
    if unknown:
        raise ScratchLMError(f"this GGUF has tensors a {arch} model does not: {', '.join(unknown[:5])}")
    if values["family"] == "gpt" or values["tie_embeddings"]:
        embedding = "transformer.wte.weight" if values["family"] == "gpt" else "model.embed_tokens.weight"
        state["lm_head.weight"] = state[embedding]
    return state


# ----------------------------------------------------------------------------- tokenizer
def _spm_merges(tokens: list[str], scores: list[float], skip: set[str]) -> list[tuple[str, str]]:
    """The BPE merges a sentencepiece vocabulary implies: every split of a token into two
    tokens, ordered by the merged token's score (as transformers' `generate_merges`)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for token, score in zip(tokens, scores, strict=True):
        if token in skip:
            continue
        local = [(token[:i], token[i:], score) for i in range(1, len(token))
                 if token[:i] in vocab and token[i:] in vocab
                 and token[:i] not in skip and token[i:] not in skip]
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _byte_level_pre(pre: str | None):
    from tokenizers import Regex, pre_tokenizers

    if pre in _PRE_SPLITS:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_PRE_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _PRE_DIGITS:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre is not None and pre not in _PRE_GPT2:
        print(f"warning: GGUF pre-tokenizer {pre!r} is not known to scratchlm; using GPT-2's "
              "split (tokenization of unusual text may differ from llama.cpp)", file=sys.stderr)
    return byte_level


def tokenizer_from_metadata(meta: dict[str, Any]):
    """Our Tokenizer from a GGUF's `tokenizer.*` metadata."""
    from tokenizers import AddedToken, decoders, models, normalizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    from scratchlm.tokenizers import Tokenizer

    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ScratchLMError("this GGUF has no tokenizer (no tokenizer.ggml.tokens)")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    if len(vocab) != len(tokens):
        raise ScratchLMError("this GGUF's vocabulary has duplicate tokens")

    def role(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    roles = {"bos": role("bos"), "eos": role("eos"), "pad": role("padding"), "unk": role("unknown")}
    if kind == "gpt2":
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
        hf.pre_tokenizer = _byte_level_pre(meta.get("tokenizer.ggml.pre"))
        hf.decoder = decoders.ByteLevel()
        tok_kind = "bpe"
        special_types = (CONTROL,)
    elif kind == "llama":
        scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        skip = {t for t, ty in zip(tokens, types, strict=True) if ty in (CONTROL, UNKNOWN, BYTE, UNUSED)}
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=_spm_merges(tokens, scores, skip),
                                    unk_token=roles["unk"], fuse_unk=True, byte_fallback=True))
        # As sentencepiece (and Llama's tokenizer.json): spaces become ▁ and one ▁ is always
        # prepended, so leading spaces tokenize exactly as the original model does.
        prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        steps = [normalizers.Prepend("\u2581")] if prefix else []
        hf.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
        steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        if prefix:
            steps.append(decoders.Strip(content=" ", left=1, right=0))
        hf.decoder = decoders.Sequence(steps)
        tok_kind = "sentencepiece"
        special_types = (CONTROL, UNKNOWN)
    else:
        raise ScratchLMError(f"GGUF tokenizer model {kind!r} is not supported (gpt2 and llama are)")
    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types, strict=True) if ty in special_types]
    special += [AddedToken(t, special=True, normalized=False) for t in roles.values()
                if t is not None and t not in {a.content for a in special}]
    hf.add_special_tokens(special)
    user = [AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types, strict=True) if ty == USER_DEFINED]
    if user:
        hf.add_tokens(user)
    if meta.get("tokenizer.ggml.add_bos_token", kind == "llama") and roles["bos"] is not None:
        # So that transformers, loading the exported tokenizer.json, adds BOS as llama.cpp does.
        bos = roles["bos"]
        hf.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    return Tokenizer(hf, kind=tok_kind, special_tokens=roles,
                     chat_template=meta.get("tokenizer.chat_template"))


# ----------------------------------------------------------------------------- import
def load_gguf(path: str | os.PathLike) -> tuple[torch.nn.Module, Any]:
    """Import a GGUF file: returns (model in eval mode: llama family for "llama" and "qwen2"
    files, gpt for "gpt2"; tokenizer)."""
    gguf = _require_gguf()
    from scratchlm.registry import build_model, build_model_config

    p = Path(path)
    if not is_gguf_file(p):
        raise ScratchLMError(f"{p} is not a GGUF file")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as e:  # the reader raises ValueError/struct errors on damaged files
        raise ScratchLMError(f"{p} could not be read as GGUF ({e})") from None
    meta = read_metadata(reader)
    tensors = {t.name: t for t in reader.tensors}
    unsupported = sorted({t.tensor_type.name for t in reader.tensors} - set(SUPPORTED_TYPES))
    if unsupported:
        raise ScratchLMError(
            f"{p.name} uses the quantisation {', '.join(unsupported)}, which is not supported "
            f"(supported: {', '.join(SUPPORTED_TYPES)})"
        )
    values = _config_values(meta, tensors)
    arch = values.pop("arch")
    tokenizer = tokenizer_from_metadata(meta)
    if tokenizer.vocab_size > values["vocab_size"]:
        raise ScratchLMError(f"{p.name}: the tokenizer has {tokenizer.vocab_size} tokens but the "
                             f"model only {values['vocab_size']}")
    config = build_model_config(values)
    state = _state_dict(tensors, {**values, "arch": arch})
    model = build_model(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise ScratchLMError(f"{p.name} lacks tensors for {', '.join(missing[:3])}")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise ScratchLMError(f"{p.name}: {k} has shape {tuple(state[k].shape)}, the metadata "
                                 f"says {tuple(v.shape)}")
    model.load_state_dict(state)
    return model.eval(), tokenizer


def load_tokenizer(spec: str | os.PathLike):
    """--tokenizer given as a path: a GGUF file (the tokenizer in its metadata), else what
    `scratchlm.tokenizers.load_tokenizer` takes (a directory or a tokenizer.json file)."""
    from scratchlm.tokenizers import load_tokenizer as load_plain

    p = Path(spec)
    if not (p.suffix.lower() == ".gguf" and p.is_file()):
        return load_plain(p)
    gguf = _require_gguf()
    try:
        meta = read_metadata(gguf.GGUFReader(str(p)))
    except Exception as e:  # the reader raises ValueError/struct errors on damaged files
        raise ScratchLMError(f"{p} could not be read as GGUF ({e})") from None
    return tokenizer_from_metadata(meta)
