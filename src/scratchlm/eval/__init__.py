"""Evaluation: perplexity and bits per byte; loss-curve plots."""
