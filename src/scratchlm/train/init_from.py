"""Continue training a model that exists: `train.init_from MODEL_DIR | FILE.gguf`.

    scratchlm prepare more-text/ --out data/more --tokenizer models/smollm2
    scratchlm train --data data/more --out runs/more --train.init_from models/smollm2

The run starts from the source's weights and tokenizer with a fresh optimizer and schedule
(LitGPT's `pretrain --initial_checkpoint_dir`, OpenNMT's `train_from` with `reset_optim`).
The model config is the source's: a config or override may repeat a source value or change
one of MUTABLE (regularisation and context length, where the weights allow it); anything
that would change a weight's shape is refused, since those weights could not be loaded.
The data must have been prepared with the source's tokenizer (`prepare --tokenizer SOURCE`),
or token ids would mean different things to the model than to the data.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import torch

from scratchlm.errors import ScratchLMError
from scratchlm.tokenizers import Tokenizer

# Keys a continued run may set to another value than the source's. block_size only shrinks a
# learned position table (it is sliced); with rotary positions it may also grow.
MUTABLE = ("dropout", "block_size")
POSITION_TABLES = ("wpe.weight", "src_pos.weight", "tgt_pos.weight")  # (block_size, d) learned tables


@functools.lru_cache(maxsize=2)
def load_source(source: str) -> tuple[torch.nn.Module, Tokenizer]:
    """The source model (fp32, on the CPU) and its tokenizer, read once per process."""
    from scratchlm.modeldir import load

    path = Path(source)
    if not path.exists():
        raise ScratchLMError(f"train.init_from {source}: no such model directory or GGUF file")
    model, tokenizer = load(path)
    return model.float(), tokenizer


def model_config(source: str, requested: dict[str, Any]) -> Any:
    """The run's model config: the source's, with the keys of `requested` (the config file's
    and the command line's model section) checked against it."""
    from scratchlm.registry import build_model_config

    src = load_source(source)[0].config
    values = {k: v for k, v in dataclasses.asdict(src).items() if v is not None}
    if "preset" in requested:
        raise ScratchLMError(f"model.preset cannot be combined with train.init_from {source} "
                             "(the model's shape is the source's); drop it")
    cfg = build_model_config({**values, **requested})
    changed = [k for k in requested if getattr(cfg, k, None) != getattr(src, k, None)]
    fixed = [k for k in changed if k not in MUTABLE]
    if fixed:
        shown = ", ".join(f"model.{k} {getattr(cfg, k)!r} (the source has {getattr(src, k)!r})"
                          for k in fixed)
        raise ScratchLMError(f"train.init_from {source}: {shown} would change the model's shape; "
                             f"drop it (only {', '.join('model.' + k for k in MUTABLE)} may change)")
    return cfg


def check_tokenizer(data_tok: Tokenizer, *, data_dir: str, source: str) -> None:
    """Refuse data whose token ids are not the source tokenizer's."""
    src_tok = load_source(source)[1]
    same = (data_tok.hf.get_vocab(with_added_tokens=True) == src_tok.hf.get_vocab(with_added_tokens=True)
            and (data_tok.bos_id, data_tok.eos_id, data_tok.pad_id)
            == (src_tok.bos_id, src_tok.eos_id, src_tok.pad_id))
    if not same:
        raise ScratchLMError(
            f"{data_dir} was not prepared with the tokenizer of {source} ({data_tok.vocab_size} vs "
            f"{src_tok.vocab_size} tokens); prepare it again with `scratchlm prepare ... --tokenizer {source}`")


def load_into(model: torch.nn.Module, source: str) -> None:
    """Copy the source's weights into `model` (built from `model_config`). A learned position
    table longer than the new context is cut to it; every other shape must be equal."""
    state = load_source(source)[0].state_dict()
    for k, v in model.state_dict().items():
        w = state[k]
        if w.shape == v.shape:
            continue
        if k.endswith(POSITION_TABLES) and w.shape[1:] == v.shape[1:] and w.shape[0] > v.shape[0]:
            state[k] = w[: v.shape[0]]  # (block_size, d): the first positions
        else:
            raise ScratchLMError(
                f"train.init_from {source}: weight {k} has shape {tuple(w.shape)} but the run's model "
                f"needs {tuple(v.shape)} (a learned position table cannot grow: keep model.block_size "
                f"<= {w.shape[0]})")
    model.load_state_dict(state)
