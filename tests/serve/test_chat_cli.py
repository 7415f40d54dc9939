"""`scratchlm chat` driven through a pseudo-terminal as a person would use it (typing, Ctrl-C,
commands), and the conversation logic behind it."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import time

import pytest

import scratchlm
from scratchlm.cli.chat import Chat
from scratchlm.generate import GenerationConfig
from scratchlm.tokenizers.chat import chat_prompt, plain_transcript, render_chat
from tests.serve.conftest import ENV, TEMPLATE

PROMPT = "you> "
ECHOED_CTRL_C = r"(?:\^C)?"


class Terminal:
    """A child process on a pty (its controlling terminal, so Ctrl-C is a real SIGINT)."""

    def __init__(self, *args: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.execve(sys.executable, [sys.executable, "-m", "scratchlm", *args], ENV)
        self.out = ""

    def read(self, timeout: float) -> str:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return ""
        try:
            data = os.read(self.fd, 65536).decode("utf-8", errors="replace")
        except OSError:  # the child has exited
            return ""
        self.out += data
        return data

    def expect(self, pattern: str, since: int, timeout: float = 120) -> re.Match:
        """Wait until `pattern` (a regex) appears in the output after position `since`."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.out[since:])
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in:\n{self.out[since:]}")
            self.read(0.2)

    def type(self, text: str) -> int:
        """Type text; returns where its effects start in the output."""
        mark = len(self.out)
        os.write(self.fd, text.encode())
        return mark

    def exit_code(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("the chat did not exit:\n" + self.out)

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


@pytest.fixture
def terminal():
    made = []

    def spawn(*args: str) -> Terminal:
        made.append(Terminal(*args))
        return made[-1]

    yield spawn
    for t in made:
        t.close()


def test_ctrl_c_stops_the_answer_not_the_chat(terminal, talker_dir):
    # The talker never writes <eos>: its answer runs to 5000 tokens unless stopped.
    t = terminal("chat", str(talker_dir), "--max-new-tokens", "5000", "--seed", "1")
    t.expect("no chat template", 0)
    t.expect(PROMPT, 0)
    mark = t.type("Tell me a long story\r")
    t.expect("Tell me a long story\r?\n", mark)  # the terminal echoes the line
    answer_at = mark + t.out[mark:].index("\n") + 1
    while len(t.out) - answer_at < 40:  # the answer streams in while it is being written
        assert t.read(60), "no streamed text"
    assert PROMPT not in t.out[answer_at:]  # ... and it is not finished
    mark = t.type("\x03")  # Ctrl-C
    # The terminal's own echo of the key ("^C") may land before or after the program's
    # line: the pty orders the two as they reach it.
    t.expect(r"\[stopped\]\r?\n" + ECHOED_CTRL_C + PROMPT, mark)
    # At the prompt (a person's pause: a SIGINT in the instant before readline waits for
    # input is only seen at the next key): a hint, and the chat goes on.
    time.sleep(0.5)
    mark = t.type("\x03")
    t.expect(r"/exit or Ctrl-D quits\)\r?\n" + ECHOED_CTRL_C + PROMPT, mark)
    mark = t.type("/reset\r")
    t.expect(r"\(conversation cleared\)\r?\n" + PROMPT, mark)
    t.type("/exit\r")
    assert t.exit_code() == 0


def test_a_conversation_with_commands(terminal, talker_dir):
    t = terminal("chat", str(talker_dir), "--max-new-tokens", "30", "--temperature", "0")
    t.expect(PROMPT, 0)
    # Each line is typed once the prompt is back, as a person would: typed earlier, the
    # terminal echoes it before readline takes the line, and the transcript interleaves.
    mark = t.type("/system Speak in verse.\r")
    t.expect(r"\(system prompt set\)\r?\n" + PROMPT, mark)
    mark = t.type("/nonsense\r")
    t.expect(r"unknown command /nonsense[^\n]*\n" + PROMPT, mark)
    mark = t.type("Hello\r")
    reply = t.expect(r"(?s)Hello\r?\n(.+?)\r?\n" + PROMPT, mark, timeout=300).group(1)
    assert len(reply.strip()) > 0 and "[stopped]" not in reply
    mark = t.type("And then?\r")
    t.expect(r"(?s)And then\?\r?\n.+?\r?\n" + PROMPT, mark, timeout=300)
    mark = t.type("/reset\r")
    t.expect(r"\(conversation cleared\)\r?\n" + PROMPT, mark)
    os.write(t.fd, b"\x04")  # Ctrl-D at an empty prompt quits too
    assert t.exit_code() == 0


# ----------------------------------------------------------------------------- the logic
def test_plain_transcript_continues_the_text():
    messages = [{"role": "system", "content": "A play."}, {"role": "user", "content": "ROMEO:"},
                {"role": "assistant", "content": " But soft!"}, {"role": "user", "content": "JULIET:"}]
    assert plain_transcript(messages) == "A play.\nROMEO: But soft!\nJULIET:"


def test_chat_history_goes_through_the_template_and_fits_the_context(template_dir):
    model, tok = scratchlm.load(template_dir)
    chat = Chat(model, tok, GenerationConfig(max_new_tokens=10, temperature=0),
                template=TEMPLATE, system="Be brief.")
    chat.messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                     {"role": "user", "content": "Bye"}]
    text, dropped = chat.prompt()
    assert dropped == 0
    assert text == render_chat([{"role": "system", "content": "Be brief."}, *chat.messages],
                               tokenizer=tok, template=TEMPLATE, add_generation_prompt=True)
    reply, stopped = chat.answer(lambda piece: None)
    assert not stopped
    assert reply == scratchlm.generate(model, tok, text, chat.config)[0]
    # A conversation longer than the context (1024) loses its oldest messages.
    chat.messages = [{"role": "user", "content": "x" * 400}, {"role": "assistant", "content": "y" * 400},
                     {"role": "user", "content": "z" * 300}]
    text, dropped = chat.prompt()
    assert dropped == 2 and chat.messages == [{"role": "user", "content": "z" * 300}]
    assert len(tok.encode(text)) <= 1024 - 10


def test_chat_without_template_is_plain_continuation(gpt_dir):
    model, tok = scratchlm.load(gpt_dir)
    chat = Chat(model, tok, GenerationConfig(max_new_tokens=5, temperature=0), template=None)
    chat.messages = [{"role": "user", "content": "ROMEO:"}]
    assert chat.prompt()[0] == "ROMEO:" == chat_prompt(chat.messages, tokenizer=tok, template=None)


def test_template_modes(template_dir, gpt_dir):
    from scratchlm.errors import ScratchLMError
    from scratchlm.tokenizers.chat import DEFAULT_CHAT_TEMPLATE, chat_template_for

    with_template = scratchlm.load(template_dir)[1]
    without = scratchlm.load(gpt_dir)[1]
    assert chat_template_for(with_template, "auto") == TEMPLATE
    assert chat_template_for(without, "auto") is None
    assert chat_template_for(without, "builtin") == DEFAULT_CHAT_TEMPLATE
    assert chat_template_for(with_template, "none") is None
    with pytest.raises(ScratchLMError, match="unknown chat template mode"):
        chat_template_for(without, "jinja")
