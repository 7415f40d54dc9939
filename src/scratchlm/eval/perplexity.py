"""Loss, perplexity and bits per byte of a language model on a prepared split.

Every token of the split is predicted exactly once, in consecutive windows of the model's
context. Bits per byte divides the summed loss (in bits) by the UTF-8 bytes of the predicted
tokens, so models with different tokenizers are comparable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from scratchlm.data.pretrain import TokenData
from scratchlm.errors import ScratchLMError
from scratchlm.tokenizers import Tokenizer


@torch.inference_mode()
def evaluate_lm(
    model: torch.nn.Module, tokenizer: Tokenizer, data: TokenData, *, split: str = "val",
    max_tokens: int | None = None, show_progress: bool = False,
) -> dict[str, float]:
    if data.vocab_size != tokenizer.vocab_size:
        raise ScratchLMError(
            f"the data was prepared with a {data.vocab_size}-token vocabulary but the model's "
            f"tokenizer has {tokenizer.vocab_size}; prepare the data with the model's tokenizer "
            "(--tokenizer MODEL_DIR)"
        )
    nbytes_of = torch.from_numpy(tokenizer.token_byte_lengths())
    device = next(model.parameters()).device
    block = model.config.block_size
    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    n_tokens = len(data.splits[split]) - 1
    bar = tqdm(total=n_tokens if max_tokens is None else min(n_tokens, max_tokens),
               unit="tok", unit_scale=True, desc="evaluate", disable=not show_progress)
    for x, y in data.windows(split, block_size=block):
        logits = model(x.to(device))  # (B, T, V)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten().to(device), reduction="sum")
        total_nats += float(nll)
        total_tokens += y.numel()
        total_bytes += int(nbytes_of[y.flatten()].sum())
        bar.update(y.numel())
        if max_tokens is not None and total_tokens >= max_tokens:
            break
    bar.close()
    loss = total_nats / total_tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": total_nats / math.log(2) / max(total_bytes, 1),
        "tokens": total_tokens,
        "bytes": total_bytes,
    }
