"""Chat with a model in the terminal: `scratchlm chat MODEL_DIR [--system TEXT
--max-new-tokens N --temperature T --top-k K --top-p P --min-p P --repetition-penalty R
--seed S --chat-template auto|builtin|none]`.

The conversation goes through the model's chat template (tokenizer_config.json's
`chat_template`); replies stream as they are generated. A model pretrained from scratch has no
template: the chat says so and the model continues the conversation as plain text
(--chat-template builtin uses scratchlm's own template, the one `scratchlm finetune` trains
chat data with). When the conversation outgrows the model's context, the oldest messages are
dropped. An encoder-decoder translates each message.

In the chat: /reset forgets the conversation, /system TEXT sets the system prompt (/system
alone clears it), /exit or Ctrl-D quits. Ctrl-C stops the answer being written, not the chat.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

from scratchlm.cli.generate import (
    add_precision_arguments,
    add_sampling_arguments,
    load_for_inference,
)
from scratchlm.errors import ScratchLMError
from scratchlm.generate import GenerationConfig, generate
from scratchlm.registry import is_encoder_decoder
from scratchlm.tokenizers.chat import TEMPLATE_MODES, chat_prompt, chat_template_for

HELP = "chat with a model in the terminal (streamed replies, /reset, /system, /exit)"
COMMANDS = "commands: /reset, /system TEXT, /exit (or Ctrl-D); Ctrl-C stops an answer"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--system", default="", help="system prompt")
    add_sampling_arguments(p)
    p.add_argument("--chat-template", choices=TEMPLATE_MODES, default="auto",
                   help="auto: the model's own, else plain continuation; builtin: scratchlm's; "
                        "none: plain continuation")
    p.add_argument("--device", default="cpu")
    add_precision_arguments(p)


class Chat:
    """The conversation and how to answer it (kept apart from the terminal for tests)."""

    def __init__(self, model, tokenizer, config: GenerationConfig, *, template: str | None,
                 system: str = "") -> None:
        self.model, self.tok, self.config, self.template = model, tokenizer, config, template
        self.system = system
        self.messages: list[dict[str, str]] = []

    def prompt(self) -> tuple[str, int]:
        """The text the model continues, and how many of the oldest messages were dropped
        to leave room for a reply in the model's context."""
        context = self.model.max_context
        room = min(self.config.max_new_tokens, context // 2) if context else 0
        dropped = 0
        while True:
            head = [{"role": "system", "content": self.system}] if self.system else []
            text = chat_prompt(head + self.messages, tokenizer=self.tok, template=self.template)
            if not context or len(self.tok.encode(text)) <= context - room or len(self.messages) <= 1:
                return text, dropped
            self.messages.pop(0)
            dropped += 1
            while len(self.messages) > 1 and self.messages[0]["role"] == "assistant":
                self.messages.pop(0)  # the history starts with a user message
                dropped += 1

    def answer(self, on_text) -> tuple[str, bool]:
        """Generate the reply to the conversation, streaming it to on_text(text); returns
        (reply, stopped). Ctrl-C (KeyboardInterrupt) stops it and keeps what was written."""
        pieces: list[str] = []

        def take(row: int, text: str) -> None:
            pieces.append(text)
            on_text(text)

        try:
            if is_encoder_decoder(self.model):
                from scratchlm.generate.translate import translate

                cfg = GenerationConfig(**{**self.config.__dict__, "stop": []})
                take(0, translate(self.model, self.tok, [self.messages[-1]["content"]], config=cfg)[0])
            else:
                text, _ = self.prompt()
                generate(self.model, self.tok, text, self.config, on_text=take)
        except KeyboardInterrupt:
            return "".join(pieces), True
        return "".join(pieces), False


def run(args: argparse.Namespace, extra: list[str]) -> int:
    # Ctrl-C stops an answer. A program started in the background by a non-interactive shell
    # inherits SIGINT ignored, and Python then leaves it ignored: restore the default.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                              repetition_penalty=args.repetition_penalty, seed=args.seed)
    model, tokenizer = load_for_inference(args)
    template = chat_template_for(tokenizer, args.chat_template)
    chat = Chat(model, tokenizer, config, template=template, system=args.system)
    out = sys.stdout
    cfg = model.config
    print(f"chat with {args.model_dir} ({cfg.family}, context {model.max_context or 'unlimited'})")
    if is_encoder_decoder(model):
        print("an encoder-decoder: each message is translated (no history)")
    elif template is None:
        print("this model has no chat template (pretrained from scratch?): it continues the "
              "conversation as plain text")
    print(COMMANDS)

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print("\n(/exit or Ctrl-D quits)")
            continue
        command, _, rest = line.strip().partition(" ")
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            chat.messages.clear()
            print("(conversation cleared)")
            continue
        if command == "/system":
            chat.system = rest.strip()
            print(f"(system prompt {'set' if chat.system else 'cleared'})")
            continue
        if command.startswith("/"):
            print(f"unknown command {command}; {COMMANDS}")
            continue
        if not line.strip():
            continue
        chat.messages.append({"role": "user", "content": line})
        if not is_encoder_decoder(model):
            _, dropped = chat.prompt()
            if dropped:
                print(f"(dropped the {dropped} oldest messages to fit the model's context)")
        try:
            reply, stopped = chat.answer(write)
        except ScratchLMError as e:
            print(f"error: {e}")
            chat.messages.pop()
            continue
        print(" [stopped]" if stopped else "")
        if reply:
            chat.messages.append({"role": "assistant", "content": reply})
        else:
            chat.messages.pop()  # nothing came back: the question is not part of the history
