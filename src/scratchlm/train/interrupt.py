"""Stopping a training run on SIGINT or SIGTERM without losing a step.

Ctrl-C (SIGINT) and the signal schedulers, `timeout` and torchrun send (SIGTERM) are treated
alike. The handler only records the request: the loop finishes the optimizer step it is in,
saves a checkpoint at that step boundary and raises `Interrupted`, which the CLI turns into
one line with the command that resumes the run and exit status 128 + signal (130, 143).
Raising from the handler instead (Python's KeyboardInterrupt) would land mid-step, after
dropout had drawn from the RNG, and the saved state would not be a step boundary.

A second signal while the run stops (during the save, say) only says that it is waiting;
a third aborts at once (the checkpoint being written is discarded, the previous one stays).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from scratchlm.errors import ScratchLMError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(ScratchLMError):
    """Training stopped on a signal; `exit_code` is 128 + the signal's number."""

    def __init__(self, message: str, *, signum: int, step: int, saved: bool) -> None:
        super().__init__(message)
        self.signum, self.step, self.saved = signum, step, saved
        self.exit_code = 128 + signum


class Aborted(BaseException):
    """The third signal: stop now, wherever the run is (not an Exception: nothing catches it
    by accident, and the atomic writers remove their temp files on the way out)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopRequest:
    """What the signal handler saw: the first signal's number and how many came."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.signum: int | None = None
        self.count = 0
        self.quiet = quiet  # ranks > 0 say nothing

    def _say(self, text: str) -> None:
        if not self.quiet:  # os.write: print() from a handler can re-enter a buffered write
            os.write(2, (text + "\n").encode())

    def _handle(self, signum: int, _frame) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
        name = signal_name(signum)
        if self.count == 1:
            self._say(f"{name}: finishing this step and saving a checkpoint; "
                      "send it twice more to abort without saving")
        elif self.count == 2:
            self._say(f"{name} again: still saving the checkpoint; once more aborts without saving")
        else:
            raise Aborted(self.signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle SIGINT and SIGTERM while the block runs (only the main thread can)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)
