"""scratchlm: build language models from scratch and fine-tune them.

    import scratchlm
    model, tokenizer = scratchlm.load("runs/demo/final")
    logits = model(input_ids)                       # (B, T, vocab)
    texts = scratchlm.generate(model, tokenizer, "ROMEO:",
                               scratchlm.GenerationConfig(max_new_tokens=100, temperature=0.8))
"""

from scratchlm.errors import ScratchLMError
from scratchlm.eval.score import score
from scratchlm.generate import GenerationConfig, generate, generate_tokens
from scratchlm.modeldir import load, save_model_dir
from scratchlm.tokenizers import Tokenizer

__version__ = "0.1.0"

__all__ = [
    "GenerationConfig",
    "ScratchLMError",
    "Tokenizer",
    "generate",
    "generate_tokens",
    "load",
    "save_model_dir",
    "score",
]
