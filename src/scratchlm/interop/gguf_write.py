"""Export scratchlm decoders as GGUF files that llama.cpp (and so ollama) load.

    save_gguf("model.Q8_0.gguf", model, tokenizer, outtype="q8_0")

The GGUF architecture follows the model, with tensor names and metadata keys as llama.cpp's
convert_hf_to_gguf.py writes them:
- gpt family -> "gpt2" (learned positions, LayerNorm with biases, fused q/k/v);
- llama family with q/k/v biases only -> "qwen2" (llama.cpp's rotate-half RoPE: rows as ours);
- any other llama-family model -> "llama" (q/k rows permuted for llama.cpp's interleaved RoPE;
  o and MLP biases are optional tensors there).

Types (`OUTTYPES`): norms, biases, position embeddings and RoPE factors stay float32, as
llama.cpp's own converter keeps them; matrices are f32, f16 or bf16, or one of llama.cpp's
quantised file types, each tensor given the type llama.cpp's llama-quantize gives it for that
file type (`quant_type`, after `llama_tensor_get_type` in src/llama-quant.cpp):
- q8_0: every matrix Q8_0;
- q4_0 / q4_1: every matrix Q4_0 / Q4_1, but the output matrix (the token embeddings when tied)
  Q6_K, or Q8_0 where its rows are not a multiple of 256 values;
- q4_k_m: Q4_K, with attn_v (gpt2's fused attn_qkv) and ffn_down at Q6_K in the layers
  llama.cpp's `use_more_bits` picks (the first and last eighth, every third between) and the
  output matrix as above; a matrix whose rows are not a multiple of 256 falls back as
  llama-quantize's does (Q4_K -> Q5_0, Q6_K -> Q8_0).
A matrix whose rows are not a multiple of the 32-value block is written f16. Q8_0/Q4_0/Q4_1/Q5_0
are quantised by the `gguf` package, Q4_K/Q6_K by `interop.kquants` (ports of ggml's reference
quantisers): byte for byte what llama-quantize writes from the same f16 weights.

Other k-quants (Q5_K_M, Q3_K_S, ...) are llama.cpp's own: `llama-quantize model.f16.gguf out.gguf
Q5_K_M` makes them from our f16 export. Asking for one here is refused with that command.

The tokenizer goes in so that llama.cpp tokenizes as we do: byte-level BPE as llama.cpp's "gpt2"
model (merges, and the `tokenizer.ggml.pre` name whose split regex equals ours); a char
tokenizer as its sentencepiece model "llama" (see `_char_metadata`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.interop.gguf import (
    _PRE_SPLITS,
    BYTE,
    CONTROL,
    NORMAL,
    UNUSED,
    USER_DEFINED,
    _permute,
    _require_gguf,
    permuted,
    tensor_names,
)
from scratchlm.interop.kquants import QK_K, quantize_q4_k, quantize_q6_k

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k_m")
BLOCK = 32  # values per q8_0 / q4_0 / q4_1 / q5_0 block (k-quants: kquants.QK_K)
# The types llama-quantize makes (QUANT_OPTIONS in tools/quantize/quantize.cpp, llama.cpp as
# vendored in llama-cpp-python 0.3.36); some of the IQ types need an importance matrix.
LLAMA_QUANTIZE_TYPES = frozenset({
    "Q1_0", "Q2_0", "Q4_0", "Q4_1", "MXFP4_MOE", "Q5_0", "Q5_1", "IQ2_XXS", "IQ2_XS", "IQ2_S",
    "IQ2_M", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0", "Q2_K", "Q2_K_S", "IQ3_XXS", "IQ3_S", "IQ3_M",
    "Q3_K", "IQ3_XS", "Q3_K_S", "Q3_K_M", "Q3_K_L", "IQ4_NL", "IQ4_XS", "Q4_K", "Q4_K_S", "Q4_K_M",
    "Q5_K", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "F16", "BF16", "F32"})


def check_outtype(outtype: str) -> str:
    """The outtype, lower case, or one line saying why it cannot be written and what to do."""
    t = outtype.lower()
    if t in OUTTYPES:
        return t
    up = t.upper()
    if up in LLAMA_QUANTIZE_TYPES:
        raise ScratchLMError(
            f"GGUF type {up} is not one scratchlm writes ({', '.join(OUTTYPES)}); make it with "
            f"llama.cpp from an f16 export: llama-quantize MODEL.f16.gguf MODEL.{up}.gguf {up}")
    raise ScratchLMError(f"GGUF type {outtype!r} is unknown to llama.cpp; scratchlm writes "
                         f"{', '.join(OUTTYPES)}")


def gguf_architecture(cfg: Any, arch: str | None = None) -> str:
    """llama.cpp's architecture for a model config (see the module docstring), or one line.

    `arch` "llama" may be asked for any llama-family model (llama.cpp's llama takes q/k/v
    biases too); "qwen2" only where it fits."""
    if cfg.family == "gpt" and arch in (None, "gpt2"):
        return "gpt2"
    if cfg.family not in ("gpt", "llama"):
        raise ScratchLMError(f"GGUF export supports the gpt and llama families (llama.cpp's gpt2, "
                             f"llama and qwen2), not {cfg.family!r}")
    qwen2 = cfg.family == "llama" and cfg.qkv_bias and not (cfg.o_bias or cfg.mlp_bias) \
        and cfg.rope_type != "llama3"
    if arch is None:
        return "qwen2" if qwen2 else "llama"
    if arch == "llama" and cfg.family == "llama" or arch == "qwen2" and qwen2:
        return arch
    raise ScratchLMError(f"a {cfg.family} model cannot be written as GGUF architecture {arch!r}")


# ----------------------------------------------------------------------------- tokenizer
def _pre_name(tokenizer) -> str:
    """llama.cpp's name (llama-vocab.cpp) for the tokenizer's pre-tokenizer."""
    pre = json.loads(tokenizer.hf.to_str()).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"]:
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        pattern = steps[0].get("pattern", {}).get("Regex")
        for name in ("llama-bpe", "qwen2"):
            if pattern == _PRE_SPLITS[name]:
                return name
    raise ScratchLMError("GGUF export: the tokenizer's pre-tokenizer has no llama.cpp name "
                         f"({' + '.join(str(k) for k in kinds)})")


def _token_list(tokenizer, vocab_size: int, kind_of) -> tuple[list[str], list[int]]:
    """Every id's token and llama.cpp token type; ids the tokenizer lacks (a model vocabulary
    padded beyond it) become unused [PADn] tokens. `kind_of(token)`: the type of a normal one."""
    id_to_token = {i: t for t, i in tokenizer.hf.get_vocab(with_added_tokens=True).items()}
    added = tokenizer.hf.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in id_to_token:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(id_to_token[i])
            types.append(CONTROL if added[i].special else USER_DEFINED)
        else:
            tokens.append(id_to_token[i])
            types.append(kind_of(id_to_token[i]))
    return tokens, types


def _special_ids(writer, tokenizer) -> None:
    for role, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id)):
        i = getattr(tokenizer, f"{role}_id")
        if i is not None:
            add(i)
    if tokenizer.special_tokens.get("pad") is not None:
        writer.add_pad_token_id(tokenizer.pad_id)
    writer.add_add_bos_token(False)  # scratchlm does not prepend BOS to a prompt
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _char_metadata(writer, tokenizer, vocab_size: int) -> None:
    """A char tokenizer as llama.cpp's sentencepiece model ("llama"): one token per character,
    the space as "▁" (llama.cpp's SPM tokenizer writes spaces so), the <0xXX> tokens typed BYTE
    for the fallback on unseen characters, no prefix space. No token spans two characters, so
    no merge ever applies and the scores (0) do not matter: llama.cpp splits text as we do."""
    if "\u2581" in tokenizer.hf.get_vocab():
        raise ScratchLMError("GGUF export: this char tokenizer has '\u2581' as a character, which "
                             "llama.cpp's sentencepiece tokenizer reserves for the space")

    def kind_of(t: str) -> int:
        return BYTE if re.fullmatch(r"<0x[0-9A-F]{2}>", t) else NORMAL

    tokens, types = _token_list(tokenizer, vocab_size, kind_of)
    tokens = [t.replace(" ", "\u2581") if ty == NORMAL else t for t, ty in zip(tokens, types, strict=True)]
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types(types)
    writer.add_add_space_prefix(False)
    _special_ids(writer, tokenizer)


def _tokenizer_metadata(writer, tokenizer, vocab_size: int) -> None:
    if tokenizer.kind == "char":
        return _char_metadata(writer, tokenizer, vocab_size)
    if tokenizer.kind != "bpe":
        raise ScratchLMError("GGUF export needs a byte-level BPE or a char tokenizer (the kinds "
                             f"scratchlm trains); this one is {tokenizer.kind!r}")
    spec = json.loads(tokenizer.hf.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ScratchLMError("GGUF export needs a BPE tokenizer")
    pre = _pre_name(tokenizer)
    tokens, types = _token_list(tokenizer, vocab_size, lambda t: NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    _special_ids(writer, tokenizer)


# ----------------------------------------------------------------------------- hyperparameters
def _hyperparameters(writer, cfg: Any, arch: str) -> None:
    gguf = _require_gguf()
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.ffn_dim)
    writer.add_head_count(cfg.n_head)
    writer.add_vocab_size(cfg.vocab_size)
    if arch == "gpt2":
        writer.add_layer_norm_eps(cfg.norm_eps)
        return
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_dimension_count(cfg.head_dim)
    if cfg.head_dim * cfg.n_head != cfg.d_model:
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    if cfg.rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(cfg.rope_factor)


def _use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama-quant.cpp's use_more_bits: the layers Q4_K_M gives 6 bits in attn_v and ffn_down."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def quant_type(name: str, shape: tuple[int, ...], outtype: str, tied: bool, n_layer: int):
    """The GGML type llama-quantize gives tensor `name` (numpy `shape`, rows last) in a file of
    `outtype` (see the module docstring); `tied`: no output.weight, token_embd serves for it."""
    Q = _require_gguf().GGMLQuantizationType
    if len(shape) == 1 or name in ("position_embd.weight", "rope_freqs.weight") or outtype == "f32":
        return Q.F32
    if outtype in ("f16", "bf16"):
        return Q.F16 if outtype == "f16" else Q.BF16
    ncols = shape[-1]
    t = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1, "q4_k_m": Q.Q4_K}[outtype]
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        if t != Q.Q8_0:
            t = Q.Q6_K if ncols % QK_K == 0 else Q.Q8_0
    elif (outtype == "q4_k_m" and re.search(r"\.(attn_v|attn_qkv|ffn_down)\.weight$", name)
          and _use_more_bits(int(name.split(".")[1]), n_layer)):
        t = Q.Q6_K
    fallback = {Q.Q4_K: Q.Q5_0, Q.Q6_K: Q.Q8_0}  # rows not a multiple of 256 (tensor_type_fallback)
    if t in fallback and ncols % QK_K:
        t = fallback[t]
    return Q.F16 if ncols % BLOCK else t


def _add_tensor(writer, name: str, arr: np.ndarray, qtype) -> None:
    gguf = _require_gguf()
    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        writer.add_tensor(name, arr)
    elif qtype == Q.F16:
        writer.add_tensor(name, arr.astype(np.float16))
    elif qtype in (Q.Q4_K, Q.Q6_K):  # k-quants: gguf reads them but cannot write them
        data = (quantize_q4_k if qtype == Q.Q4_K else quantize_q6_k)(arr)
        writer.add_tensor(name, data, raw_dtype=qtype)
    else:  # bf16 and the 32-value block formats: gguf's reference encoders, raw bytes
        writer.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)


# ----------------------------------------------------------------------------- export
def save_gguf(path: str | os.PathLike, model: torch.nn.Module, tokenizer, *, outtype: str = "f32",
              name: str | None = None, arch: str | None = None) -> Path:
    """Write a gpt- or llama-family model as a GGUF file llama.cpp loads (see the module
    docstring for the architecture and types; `arch` as `gguf_architecture`). Nothing is left
    at `path` if anything fails."""
    from scratchlm.fileio import current_umask, temp_path

    gguf = _require_gguf()
    outtype = check_outtype(outtype)
    cfg = model.config
    arch = gguf_architecture(cfg, arch)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
                 "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}[outtype]
    p = Path(path)
    tmp = temp_path(p)
    try:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_name(name or p.stem)
        writer.add_file_type(file_type)
        _hyperparameters(writer, cfg, arch)
        _tokenizer_metadata(writer, tokenizer, cfg.vocab_size)
        tied = arch == "gpt2" or cfg.tie_embeddings
        ours_to_gguf = {v: k for k, v in tensor_names(arch, cfg.n_layer).items()}
        if arch == "llama" and cfg.rope_type == "llama3":
            from scratchlm.models.layers import rope_inv_freq

            base = rope_inv_freq(cfg.head_dim, theta=cfg.rope_theta)
            factors = (base / cfg.rope_inv_freq()).numpy().astype(np.float32)
            writer.add_tensor("rope_freqs.weight", factors)
        for k, v in model.state_dict().items():
            if k == "lm_head.weight" and tied:
                continue
            gname = ours_to_gguf[k]
            w = v.detach().to("cpu", torch.float32)
            if permuted(arch, gname):
                w = _permute(w, cfg.n_head if ".attn_q." in gname else cfg.kv_heads)
            arr = w.contiguous().numpy()
            _add_tensor(writer, gname, arr, quant_type(gname, arr.shape, outtype, tied, cfg.n_layer))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp made it owner-only
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return p
