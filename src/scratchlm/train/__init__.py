"""Training: the one Trainer loop, its optimizer and schedule, and checkpoints."""

from scratchlm.train.trainer import Trainer, lm_loss

__all__ = ["Trainer", "lm_loss"]
