"""Generate text from a model directory, streaming to the terminal:
`scratchlm generate MODEL_DIR --prompt TEXT [--max-new-tokens N --temperature T --top-k K
--top-p P --min-p P --repetition-penalty R --stop STR --seed S --num-samples N --greedy]
[--chat [--system TEXT]]`.

With --chat the prompt is a user message: the model's chat template (tokenizer_config.json's
`chat_template`; a model without one continues it as plain text, as `scratchlm chat` does,
unless --chat-template builtin; see scratchlm.tokenizers.chat) renders it with the
generation prompt, and only the reply is printed. MODEL_DIR may also be a LoRA adapter
directory (a `finetune --method lora` run's final/, or a PEFT adapter): it is applied to its
base model."""

from __future__ import annotations

import argparse
import sys

import torch

from scratchlm.errors import ScratchLMError
from scratchlm.generate import GenerationConfig, generate
from scratchlm.generate.beam import BeamConfig, beam_search
from scratchlm.generate.decode import max_new_tokens_for, stop_at, stop_checker
from scratchlm.models.quant import DTYPES, QUANTIZE, apply_precision, choose_precision
from scratchlm.peft import load_with_adapter
from scratchlm.registry import is_encoder_decoder
from scratchlm.tokenizers.chat import TEMPLATE_MODES, chat_prompt, chat_template_for

HELP = "generate text from a model directory"


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """The sampling options shared by `generate` and `chat`."""
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)


def add_precision_arguments(p: argparse.ArgumentParser) -> None:
    """--dtype and --quantize, shared by every verb that runs a model for inference."""
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="weights and activations; auto: bfloat16 where a bf16 matmul is measured "
                        "faster than fp32 on this machine, else float32")
    p.add_argument("--quantize", default="none", choices=QUANTIZE,
                   help="int8: int8 weights in every linear layer (CPU, fbgemm), fp32 activations")


def load_for_inference(args: argparse.Namespace, *, adapters: bool = True, header: bool = False):
    """(model, tokenizer) of args.model_dir on args.device in args.dtype / args.quantize (checked
    before anything is loaded). The machine's capabilities and the precision chosen are printed
    on stdout with `header` (serve's start-up lines), else on stderr when not the default fp32
    (stderr stays one line for a plain run's errors)."""
    from scratchlm.hardware import describe
    from scratchlm.modeldir import load

    precision = choose_precision(dtype=args.dtype, quantize=args.quantize, device=args.device)
    loader = load_with_adapter if adapters else load
    model, tokenizer = loader(args.model_dir, device=torch.device(args.device))
    if precision.warning:
        print(precision.warning, file=sys.stderr)
    apply_precision(model, precision)
    if header or precision.dtype != torch.float32 or precision.quantize != "none":
        print(f"{describe()}\n{precision.describe()}", file=sys.stdout if header else sys.stderr,
              flush=True)
    return model, tokenizer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--prompt", default="", help="text to continue")
    add_sampling_arguments(p)
    p.add_argument("--greedy", action="store_true", help="same as --temperature 0")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--num-samples", type=int, default=1,
                   help="samples in one batch (with --num-beams: the n-best list size)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams")
    p.add_argument("--length-penalty", type=float, default=1.0, help="for beam search")
    p.add_argument("--no-repeat-ngram-size", type=int, default=0,
                   help="never repeat an n-gram of the prompt or output (0: off)")
    p.add_argument("--device", default="cpu")
    add_precision_arguments(p)
    p.add_argument("--chat", action="store_true",
                   help="the prompt is a user message, rendered with the model's chat template")
    p.add_argument("--system", help="with --chat: a system message before the prompt")
    p.add_argument("--chat-template", choices=TEMPLATE_MODES, default="auto",
                   help="with --chat: auto (the model's own, else plain text), builtin or none")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=0.0 if args.greedy else args.temperature,
        top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        repetition_penalty=args.repetition_penalty, stop=args.stop, seed=args.seed,
        num_samples=args.num_samples, no_repeat_ngram_size=args.no_repeat_ngram_size,
    )
    model, tokenizer = load_for_inference(args)
    if is_encoder_decoder(model):
        raise ScratchLMError(f"{args.model_dir} is an encoder-decoder ({model.config.family}): it "
                             "translates a source; use `scratchlm translate MODEL_DIR --src TEXT`")
    shown = args.prompt  # what is printed before the generated text
    if args.system and not args.chat:
        raise ScratchLMError("--system is for --chat")
    if args.chat:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        messages.append({"role": "user", "content": args.prompt})
        template = chat_template_for(tokenizer, args.chat_template)
        args.prompt = chat_prompt(messages, tokenizer=tokenizer, template=template)
        shown = ""
    n_prompt = len(tokenizer.encode(args.prompt)) or 1
    fits = max_new_tokens_for(model, n_prompt, config.max_new_tokens)
    if fits < config.max_new_tokens:
        print(f"note: only {fits} new tokens fit in the model's context "
              f"({model.max_context}) after a {n_prompt}-token prompt", file=sys.stderr)
    if args.num_beams > 1:
        _refuse_sampling_with_beams(args)
        return _beam(args, model, tokenizer, fits, shown)
    if config.num_samples == 1:
        sys.stdout.write(shown)
        sys.stdout.flush()

        def stream(row: int, text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        generate(model, tokenizer, args.prompt, config, on_text=stream)
        sys.stdout.write("\n")
        return 0
    texts = generate(model, tokenizer, args.prompt, config)
    for i, text in enumerate(texts, 1):
        print(f"--- sample {i} ---\n{shown}{text}")
    return 0


def _beam(args: argparse.Namespace, model, tokenizer, max_new: int, shown: str) -> int:
    cfg = BeamConfig(num_beams=args.num_beams, max_new_tokens=max_new,
                     length_penalty=args.length_penalty, num_return_sequences=args.num_samples,
                     no_repeat_ngram_size=args.no_repeat_ngram_size,
                     repetition_penalty=args.repetition_penalty)
    ids = tokenizer.encode(args.prompt) or [tokenizer.eos_id]
    device = next(model.parameters()).device
    hyps = beam_search(model, torch.tensor([ids], device=device), config=cfg,
                       eos_id=tokenizer.eos_id, ends=stop_checker(tokenizer, args.stop))[0]
    for i, h in enumerate(hyps, 1):
        header = f"--- beam {i} (score {h.score:.4f}) ---\n" if len(hyps) > 1 else ""
        text = tokenizer.decode(h.tokens)
        at = stop_at(text, args.stop)
        print(f"{header}{shown}{text if at is None else text[:at]}")
    return 0


def _refuse_sampling_with_beams(args: argparse.Namespace) -> None:
    """Beam search is deterministic: sampling options would be silently ignored, so refuse them."""
    given = [flag for flag, value, default in (
        ("--top-k", args.top_k, 0), ("--top-p", args.top_p, 1.0), ("--min-p", args.min_p, 0.0),
        ("--seed", args.seed, None)) if value != default]
    if given:
        raise ScratchLMError(f"{', '.join(given)} sample(s) tokens, which beam search does not do; "
                             "drop them or --num-beams")
