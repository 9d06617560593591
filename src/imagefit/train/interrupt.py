"""Graceful stops. While a training stage runs with a checkpointer, the first SIGINT (Ctrl-C) or
SIGTERM (a scheduler preempting the job) asks the loop to stop before its next step: it saves
where it is, mid-epoch included, and raises `TrainingInterrupted` (exit 130 or 143). A second
signal ends the process at once; that is safe because every file is written atomically.
Outside training, SIGTERM becomes an `Interrupted` exception, as SIGINT is a KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A SIGTERM outside training, raised like Ctrl-C's KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(exc: BaseException) -> int:
    """The exit code of an interruption: 128 + the signal's number."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


class StopRequest:
    """Set by the first signal: `signum` is None until then."""

    signum: int | None = None


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM set the request instead of raising; a second one
    exits immediately. Outside the main thread (signals cannot be caught there) nothing changes.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum, _frame):
        if request.signum is not None:
            os.write(2, b"\nSecond interrupt: stopping now. The last checkpoint is intact.\n")
            os._exit(128 + signum)
        request.signum = signum
        os.write(2, b"\nInterrupted: finishing the current step and saving "
                    b"(interrupt again to stop at once).\n")

    previous = {signum: signal.signal(signum, handle) for signum in SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises `Interrupted` in the main thread (by default it kills the process without
    any cleanup); the CLI wraps every command in this."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, _frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
