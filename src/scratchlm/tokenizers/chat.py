"""Chat templates: the one policy every verb uses to turn a conversation into model text.

    template = chat_template_for(tokenizer, "auto")       # chat, serve, generate --chat, evaluate
    text = chat_prompt(messages, tokenizer=tokenizer, template=template)
    template = training_template(tokenizer)               # finetune (SFT), saved with the model

The policy: a model's own template (`chat_template` in tokenizer_config.json, or
chat_template.jinja) is used, rendered with Jinja as transformers renders it. A model without
one (pretrained here from scratch) is continued as plain text (`plain_transcript`), unless
`--chat-template builtin` asks for scratchlm's DEFAULT_CHAT_TEMPLATE. Fine-tuning on chat data
needs role markers, so `finetune` renders with the model's template or the built-in one, and
writes the one it used into the fine-tuned model's tokenizer: from then on "auto" finds it
there, and every verb talks to the model the way it was trained.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from scratchlm.errors import ScratchLMError
from scratchlm.tokenizers.tokenizer import Tokenizer

TEMPLATE_MODES = ("auto", "builtin", "none")

# For models without a chat template of their own (those trained here): each turn is a role
# marker line, the content, and <eos>; generation is prompted with the assistant marker.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def _jinja_env():
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    # The settings transformers renders chat templates with.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


_TEMPLATES: dict[str, Any] = {}


def special_token_strings(tokenizer: Tokenizer) -> dict[str, str]:
    """bos_token, eos_token, pad_token, unk_token as text ("" for a role without a token),
    the variables chat templates use."""
    out = {}
    for role in ("bos", "eos", "pad", "unk"):
        i = getattr(tokenizer, f"{role}_id", None)
        out[f"{role}_token"] = (tokenizer.hf.id_to_token(i) or "") if i is not None else ""
    return out


def render_chat(
    messages: list[dict[str, str]], *, tokenizer: Tokenizer, template: str | None = None,
    add_generation_prompt: bool = False,
) -> str:
    """The conversation as the template writes it (what the model reads)."""
    from jinja2 import TemplateError

    template = template or training_template(tokenizer)
    try:
        compiled = _TEMPLATES.get(template)
        if compiled is None:
            compiled = _TEMPLATES[template] = _jinja_env().from_string(template)
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               **special_token_strings(tokenizer))
    except TemplateError as e:
        raise ScratchLMError(f"the chat template failed: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError) as e:
        # the template's own expressions (`m.content + 1`): the template's fault, in one line
        raise ScratchLMError(f"the chat template failed: {type(e).__name__}: {e}") from None


def chat_template_for(tokenizer: Tokenizer, mode: str = "auto") -> str | None:
    """auto: the tokenizer's chat template, else None (plain continuation); builtin:
    DEFAULT_CHAT_TEMPLATE; none: plain continuation."""
    if mode not in TEMPLATE_MODES:
        raise ScratchLMError(f"unknown chat template mode {mode!r} (modes: {', '.join(TEMPLATE_MODES)})")
    if mode == "builtin":
        return DEFAULT_CHAT_TEMPLATE
    if mode == "none":
        return None
    return getattr(tokenizer, "chat_template", None) or None


def training_template(tokenizer: Tokenizer) -> str:
    """The template chat data is fine-tuned with: the model's own, else the built-in one."""
    return chat_template_for(tokenizer, "auto") or DEFAULT_CHAT_TEMPLATE


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
    """What the model reads before its reply (template None: the plain transcript)."""
    if template is None:
        return plain_transcript(messages)
    return render_chat(messages, tokenizer=tokenizer, template=template, add_generation_prompt=True)
