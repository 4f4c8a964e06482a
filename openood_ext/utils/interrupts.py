"""Graceful SIGINT/SIGTERM handling.

While :func:`graceful_interrupts` is active, SIGINT and SIGTERM raise :class:`RunInterrupted` in the
main thread, except inside a :func:`critical` section (an atomic file write): there the signal is
remembered and raised when the section ends, so a write in progress always finishes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class RunInterrupted(BaseException):
    """A run was stopped by SIGINT/SIGTERM (a BaseException so that ``except Exception`` lets it pass)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


_state = threading.local()


def _depth() -> int:
    return getattr(_state, "depth", 0)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """Defer SIGINT/SIGTERM until the block ends."""
    _state.depth = _depth() + 1
    try:
        yield
    finally:
        _state.depth -= 1
        pending = getattr(_state, "pending", None)
        if _state.depth == 0 and pending is not None:
            _state.pending = None
            raise RunInterrupted(pending)


def _handler(signum, frame):
    if _depth() > 0:
        _state.pending = signum
        return
    raise RunInterrupted(signum)


@contextlib.contextmanager
def graceful_interrupts() -> Iterator[None]:
    """Install the handlers for the duration of a run (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
