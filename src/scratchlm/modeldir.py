"""The model directory: the unit every step after training takes.

    RUN_DIR/final/
      config.json              Hugging Face config (+ a "scratchlm" block with our config)
      model.safetensors        weights under Hugging Face names
      tokenizer.json, tokenizer_config.json
      generation_config.json

`transformers.AutoModelForCausalLM.from_pretrained(dir)` loads gpt and llama directories.
`model, tokenizer = scratchlm.load(dir)` loads ours, and plain Hugging Face directories of the
architectures in `scratchlm.interop.hf.SUPPORTED` (weights in model.safetensors, sharded
safetensors with model.safetensors.index.json, or pytorch_model.bin).
"""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_dir, current_umask, inside_dir, read_json, write_json
from scratchlm.interop import hf
from scratchlm.models.quant import place
from scratchlm.registry import build_model, build_model_config
from scratchlm.tokenizers import Tokenizer

FORMAT = "scratchlm-model/1"


def write_model_files(
    directory: Path, model: torch.nn.Module, tokenizer: Tokenizer,
    *, generation: dict[str, Any] | None = None, plain_hf: bool = False,
) -> None:
    """Write a model directory's files into an existing (temporary) directory.

    plain_hf: a plain Hugging Face directory instead (no "scratchlm" block in config.json;
    an encoder-decoder is written as Marian, under Marian's weight names)."""
    cfg = model.config
    ours = dataclasses.asdict(cfg)
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    if plain_hf and not hf.can_export(cfg.family):
        raise ScratchLMError(f"the {cfg.family} family has no Hugging Face architecture to export to")
    if hf.has_hf_layout(cfg.family) or plain_hf:
        config = hf.to_hf_config(cfg, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                                 pad_id=tokenizer.pad_id)
    else:  # a family transformers has no class for: our config only
        config = {"model_type": f"scratchlm-{cfg.family}", "bos_token_id": tokenizer.bos_id,
                  "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    if plain_hf and cfg.family == "seq2seq_transformer":
        from scratchlm.interop import marian

        weights = marian.to_marian_state_dict(cfg, state)
    else:
        weights = hf.to_hf_state_dict(cfg, state)
    if not plain_hf:
        config["scratchlm"] = {"format": FORMAT, "model": ours}
    write_json(directory / "config.json", config)
    try:
        save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    except SafetensorError as e:  # the Rust writer's I/O errors, ENOSPC among them
        if "os error 28" in str(e) or "No space left" in str(e):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                          str(directory / "model.safetensors")) from None
        raise
    os.chmod(directory / "model.safetensors", 0o666 & ~current_umask())  # like the JSON files
    tokenizer.save(directory, model_max_length=cfg.block_size)
    gen = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
           "pad_token_id": tokenizer.pad_id, **(generation or {})}
    write_json(directory / "generation_config.json", gen)


def save_model_dir(
    path: str | os.PathLike, model: torch.nn.Module, tokenizer: Tokenizer,
    *, generation: dict[str, Any] | None = None, plain_hf: bool = False,
) -> Path:
    """Write a complete model directory atomically (replacing an old one at `path`)."""
    with atomic_dir(path) as tmp:
        write_model_files(tmp, model, tokenizer, generation=generation, plain_hf=plain_hf)
    return Path(path)


def read_model_config(path: str | os.PathLike):
    d = Path(path)
    if not d.is_dir():
        raise ScratchLMError(f"model directory {d} does not exist")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise ScratchLMError(f"{d} is not a model directory (no config.json)")
    try:
        raw = read_json(cfg_path)
    except (ValueError, UnicodeDecodeError) as e:
        raise ScratchLMError(f"{cfg_path} is not valid JSON ({e})") from None
    except OSError as e:
        raise ScratchLMError(f"cannot read {cfg_path} ({e.strerror or e})") from None
    if not isinstance(raw, dict):
        raise ScratchLMError(f"{cfg_path} must hold a JSON object, not {type(raw).__name__}")
    ours = raw.get("scratchlm")
    if ours is not None and not (isinstance(ours, dict) and isinstance(ours.get("model"), dict)):
        raise ScratchLMError(f"{cfg_path}: its \"scratchlm\" block has no \"model\" object; "
                             "the directory is damaged (convert or train it again)")
    try:
        values = ours["model"] if ours is not None else hf.from_hf_config(raw)
        return build_model_config(values)
    except ScratchLMError as e:
        raise ScratchLMError(f"{cfg_path}: {e}") from None


def load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ScratchLMError(f"{path.parent} has no {path.name}; was the run finished?")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ScratchLMError(f"{path} is corrupt or not a safetensors file ({e})") from None


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle and zip errors of many kinds (torch's run many lines)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ScratchLMError(f"{path} is corrupt or not a PyTorch weights file ({first[:160]})") from None


def load_weights(d: Path) -> dict[str, torch.Tensor]:
    """The weights of a model directory: model.safetensors, or the shards a
    model.safetensors.index.json lists, or pytorch_model.bin (and its index)."""
    for index_name, loader in (("model.safetensors.index.json", load_state),
                               ("pytorch_model.bin.index.json", _load_bin)):
        if (d / "model.safetensors").is_file() or not (d / index_name).is_file():
            continue
        try:
            weight_map = read_json(d / index_name)["weight_map"]
            shards = sorted(set(weight_map.values()), key=str)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ScratchLMError(f"{d / index_name} is not a valid shard index ({e!r})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            p = inside_dir(d, shard, source=str(d / index_name))
            if not os.path.lexists(p):
                raise ScratchLMError(f"{d / index_name} lists {shard}, which is missing")
            if not p.is_file():
                raise ScratchLMError(f"{d / index_name} lists {shard}, which is not a regular file")
            state.update(loader(p))
        return state
    if not (d / "model.safetensors").is_file() and (d / "pytorch_model.bin").is_file():
        return _load_bin(d / "pytorch_model.bin")
    return load_state(d / "model.safetensors")


def load(
    path: str | os.PathLike, *, device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None, quantize: str = "none",
) -> tuple[torch.nn.Module, Tokenizer]:
    """Load a model directory (ours or a Hugging Face one) or a GGUF file: returns (model in
    eval mode, tokenizer). `dtype` "auto"/"float32"/"bfloat16" and `quantize` "int8" choose the
    inference precision for this machine (scratchlm.models.quant)."""
    d = Path(path)
    if d.is_file():
        from scratchlm.interop.gguf import load_gguf

        model, tokenizer = load_gguf(d)
        return place(model, device=device, dtype=dtype, quantize=quantize), tokenizer
    config = read_model_config(d)
    if not (d / "tokenizer.json").is_file() and (d / "source.spm").is_file():
        from scratchlm.interop.marian import tokenizer_from_marian_dir

        tokenizer = tokenizer_from_marian_dir(d)  # a Hugging Face Marian directory
    else:
        tokenizer = Tokenizer.load(d)
    if tokenizer.vocab_size > config.vocab_size:
        raise ScratchLMError(
            f"{d}: tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}"
        )
    model = build_model(config)
    state = hf.from_hf_state_dict(config, load_weights(d))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ScratchLMError(
            f"{d}: the weights do not match config.json (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise ScratchLMError(
                f"{d}: weight {k} has shape {tuple(state[k].shape)}, config says {tuple(v.shape)}"
            )
    model.load_state_dict(state)
    return place(model, device=device, dtype=dtype, quantize=quantize), tokenizer

