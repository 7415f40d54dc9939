"""From a conversation to the text a model continues, for `scratchlm chat` and the server.

    template = chat_template_for(tokenizer, "auto")      # the model's own, or None
    text = chat_prompt(messages, tokenizer=tokenizer, template=template)

With a template (a Jinja chat template, rendered as transformers renders it, with the
generation prompt), the model answers as the assistant. Without one (a model pretrained from
scratch has none) the conversation is plain text that the model continues: each user or
system message starts a new line and each reply continues the line before it.
"""

from __future__ import annotations

from scratchlm.data.sft import DEFAULT_CHAT_TEMPLATE, render_chat
from scratchlm.errors import ScratchLMError
from scratchlm.tokenizers import Tokenizer

TEMPLATE_MODES = ("auto", "builtin", "none")


def chat_template_for(tokenizer: Tokenizer, mode: str = "auto") -> str | None:
    """auto: the tokenizer's chat template (tokenizer_config.json), else None; builtin:
    scratchlm's default template (what `scratchlm finetune` trains chat data with); none:
    plain continuation."""
    if mode not in TEMPLATE_MODES:
        raise ScratchLMError(f"unknown chat template mode {mode!r} (modes: {', '.join(TEMPLATE_MODES)})")
    if mode == "builtin":
        return DEFAULT_CHAT_TEMPLATE
    if mode == "none":
        return None
    return getattr(tokenizer, "chat_template", None) or None


def plain_transcript(messages: list[dict[str, str]]) -> str:
    """The conversation as one running text: a user or system message starts a new line,
    a reply continues the text before it."""
    text = ""
    for m in messages:
        if m["role"] != "assistant" and text and not text.endswith("\n"):
            text += "\n"
        text += m["content"]
    return text


def chat_prompt(messages: list[dict[str, str]], *, tokenizer: Tokenizer, template: str | None) -> str:
    """What the model reads before its reply."""
    if template is None:
        return plain_transcript(messages)
    return render_chat(messages, tokenizer=tokenizer, template=template, add_generation_prompt=True)
