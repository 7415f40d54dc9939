"""Decoding: pure logit filters (sampling.py), the one token generator (decode.py) and the
one beam search (beam.py), all over the decoder protocol."""

from scratchlm.generate.beam import BeamConfig, Hypothesis, beam_search
from scratchlm.generate.decode import GenerationConfig, generate, generate_batch, generate_tokens

__all__ = ["BeamConfig", "GenerationConfig", "Hypothesis", "beam_search", "generate", "generate_batch",
           "generate_tokens"]
