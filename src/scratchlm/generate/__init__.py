"""Decoding: pure logit filters (sampling.py) and the one token generator (decode.py)."""

from scratchlm.generate.decode import GenerationConfig, generate, generate_tokens

__all__ = ["GenerationConfig", "generate", "generate_tokens"]
