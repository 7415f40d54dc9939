"""Fine-tuning in the one Trainer: what differs from pretraining is only here.

- the data: SFT rows with labels -100 outside what is learned (scratchlm.data.sft), and a
  loss that passes packed rows' position ids and attention mask to the model (`sft_loss`);
- which parameters train: LoRA adapters only (scratchlm.peft), or everything but frozen
  embeddings / the first N blocks (`freeze`);
- what a checkpoint keeps: for LoRA the adapter in PEFT's format (`adapter_io`), else the
  whole model directory;
- optionally, gradient checkpointing (`enable_gradient_checkpointing`): each block's
  activations are recomputed in the backward pass instead of kept (Chen et al. 2016).

    model, tokenizer = scratchlm.load(base)
    prepare_model(model, cfg)                 # LoRA swap or freezing; checkpointing
    trainer = Trainer(model=model, ..., loss_fn=sft_loss, **adapter_io(base) if lora)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from scratchlm import registry
from scratchlm.config import RunConfig
from scratchlm.errors import ScratchLMError
from scratchlm.peft import (
    apply_lora,
    load_adapter_weights,
    mark_only_lora_trainable,
    write_adapter_files,
)


def sft_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over labels that are not -100; packed rows pass their
    position ids and block-diagonal mask to the model. Logits are computed only where a
    label is (prompts are most of SFT tokens; the LM head is the model's widest layer)."""
    extra = {k: batch[k] for k in ("position_ids", "attn_mask") if k in batch}
    labels = batch["labels"]
    keep = labels != -100  # (B, T)
    logits = model(batch["input_ids"], logits_mask=keep, **extra)  # (N, V)
    return F.cross_entropy(logits.float(), labels[keep])


def blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of Transformer blocks (its family spec says where they are)."""
    found = registry.blocks(model)
    if found is None:
        raise ScratchLMError(f"fine-tuning supports the {', '.join(registry.families_with('blocks'))} "
                             f"families, not {model.config.family}")
    return found


def embeddings(model: nn.Module) -> list[nn.Parameter]:
    """Token (and position) embeddings; the LM head too when it is tied to them."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]


def freeze(model: nn.Module, *, freeze_embeddings: bool = False, freeze_layers: int = 0) -> None:
    """Full fine-tuning with some parts fixed: the embeddings, and/or the first N blocks."""
    layers = blocks(model)
    if freeze_layers > len(layers):
        raise ScratchLMError(f"finetune.freeze_layers is {freeze_layers} but the model has only "
                             f"{len(layers)} blocks")
    if freeze_embeddings:
        for p in embeddings(model):
            p.requires_grad_(False)
    for block in list(layers)[:freeze_layers]:
        block.requires_grad_(False)


def _checkpointed(forward, *args, **kwargs):
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each block in backward: memory for one block's activations instead of all.
    The RNG state is replayed, so dropout masks (and so gradients) are the same as without."""
    for block in blocks(model):
        if "forward" not in block.__dict__:  # not yet wrapped
            block.forward = functools.partial(_checkpointed, block.forward)


def prepare_model(model: nn.Module, cfg: RunConfig) -> list[str]:
    """Make the model what cfg.finetune asks for: LoRA-adapted with only the adapters
    trainable, or fully trainable with the frozen parts fixed; returns the LoRA layer names
    (empty for full fine-tuning). Seed torch first: LoRA's A matrices are random."""
    ft, lora = cfg.finetune, cfg.lora
    blocks(model)  # the family check
    names: list[str] = []
    if ft.method == "lora":
        if ft.freeze_embeddings or ft.freeze_layers:
            raise ScratchLMError("finetune.freeze_embeddings/freeze_layers are for --method full; "
                                 "LoRA trains only its adapters")
        names = apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                           targets=lora.target_list(), rslora=lora.rslora)
        mark_only_lora_trainable(model)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        freeze(model, freeze_embeddings=ft.freeze_embeddings, freeze_layers=ft.freeze_layers)
    if ft.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return names


def adapter_io(base_model: str) -> dict[str, Any]:
    """Trainer keyword arguments for a LoRA run: its checkpoints keep only the adapter (PEFT
    files naming `base_model`, plus the tokenizer), and resume reads the adapter back."""

    def write(directory: Path, model: nn.Module, tokenizer) -> None:
        write_adapter_files(directory, model, tokenizer, base_model=base_model)

    def read(directory: Path, model: nn.Module) -> None:
        load_adapter_weights(model, directory)

    return {"write_model": write, "read_model": read}
