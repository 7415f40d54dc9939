"""The training step of encoder-decoders: the loss the one Trainer calls for seq2seq data.

    loss = Seq2SeqLoss(train_config)        # label smoothing + scheduled sampling
    Trainer(model, config, tokenizer, batches, out_dir, loss_fn=loss)

Batches (scratchlm.data.pairs.PairData.batch) hold src_ids/src_mask (B, S) and tgt_in/labels
(B, T): tgt_in = <|bos|> y_1 .. y_n, labels = y_1 .. y_n <|eos|>, -100 at padding.

Teacher forcing feeds the gold previous token at every position. Scheduled sampling (Bengio
et al. 2015) instead feeds, with probability 1 - ratio, the model's own prediction, with the
ratio decaying over training. It lives here, not in `forward`: a first pass without
gradients predicts every position from the gold prefix, the inputs are mixed, and the second
pass is the one trained (the two-pass form of Mihaylova & Liu 2019, which runs the whole
target in parallel for every family; for RNNs it approximates Bengio et al.'s step-by-step
sampling, where a sampled token also changes the later predictions of the same pass).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from scratchlm.config import TrainConfig


def teacher_forcing_ratio(step: int, cfg: TrainConfig) -> float:
    """Probability of feeding the gold token at `step`, from train.teacher_forcing (start)
    to train.teacher_forcing_end (at max_steps)."""
    start, end = cfg.teacher_forcing, cfg.teacher_forcing_end
    progress = min(step / max(cfg.max_steps, 1), 1.0)
    if cfg.teacher_forcing_schedule == "inverse_sigmoid":  # slow start, fast middle, slow end
        progress = 1.0 / (1.0 + math.exp(-10.0 * (progress - 0.5)))
    return start + (end - start) * progress


class Seq2SeqLoss:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.ratio = teacher_forcing_ratio(0, cfg)

    def on_step(self, step: int) -> None:
        """Called by the Trainer before each optimizer step."""
        self.ratio = teacher_forcing_ratio(step, self.cfg)

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        memory = model.encode(batch["src_ids"], batch["src_mask"])
        tgt_in = batch["tgt_in"]
        if model.training and self.ratio < 1.0:
            tgt_in = self.mix_predictions(model, memory, tgt_in, batch["labels"])
        logits = model(tgt_in, memory=memory)  # (B, T, V)
        # Smoothing is a training device: validation reports the true loss (and perplexity).
        return F.cross_entropy(
            logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100,
            label_smoothing=self.cfg.label_smoothing if model.training else 0.0,
        )

    def mix_predictions(self, model, memory, tgt_in: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """tgt_in (B, T) with each position t >= 1 replaced, with probability 1 - ratio, by
        the model's greedy prediction of it from the gold prefix. Padding stays padding."""
        with torch.no_grad():
            pred = model(tgt_in, memory=memory).argmax(-1)  # (B, T): prediction of y_{t+1}
        sampled = torch.rand(tgt_in.shape, device=tgt_in.device) >= self.ratio
        sampled[:, 0] = False  # <|bos|> is always given
        real = labels != -100  # positions whose input is a real token (bos or y_t)
        shifted = torch.cat([tgt_in[:, :1], pred[:, :-1]], dim=1)  # prediction of position t
        return torch.where(sampled & real, shifted, tgt_in)
