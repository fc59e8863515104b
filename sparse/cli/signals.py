"""SIGTERM handled like Ctrl-C, so long commands clean up their partial outputs either way.

Python turns SIGINT into ``KeyboardInterrupt``, which unwinds the stack through every
``except BaseException`` / ``finally`` (the atomic writers of :mod:`sparse.io_utils` remove their
temporaries there). SIGTERM's default action kills the process on the spot and leaves those
temporaries behind. :func:`interrupts_as_exceptions` makes SIGTERM raise :class:`Terminated` (a
``KeyboardInterrupt``) instead, for the duration of a ``with`` block, and :func:`exit_code` gives
the shell's conventional status (128 + signal number: 130 for SIGINT, 143 for SIGTERM).

Usable by every sub-command (``sparse convert`` uses it around the conversion)::

    with interrupts_as_exceptions():
        ...                     # KeyboardInterrupt / Terminated propagate, cleanup runs
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

__all__ = ["Terminated", "interrupts_as_exceptions", "exit_code", "signal_name"]


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives inside :func:`interrupts_as_exceptions`.

    A ``KeyboardInterrupt`` so that code already handling Ctrl-C handles it too."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = int(signum)


def exit_code(exc: BaseException) -> int:
    """128 + the signal's number: 143 for :class:`Terminated` (SIGTERM), 130 for a plain Ctrl-C."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def signal_name(exc: BaseException) -> str:
    """``"SIGTERM"`` / ``"SIGINT"`` for an interrupt exception."""
    return signal.Signals(int(getattr(exc, "signum", signal.SIGINT))).name


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` and SIGINT ``KeyboardInterrupt``; any
    further SIGTERM/SIGINT is ignored (logged) until the block has been left, so the clean-up the first
    one started is not itself interrupted. The previous handlers are restored on exit.

    Signal handlers belong to the main thread: elsewhere (or where SIGINT is ignored, e.g. a
    background job) the block runs with the handlers as they are.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = False

    def handler(signum, frame):
        nonlocal stopping
        if stopping:
            log.warning("%s received while stopping; finishing the clean-up first", signal.Signals(signum).name)
            return
        stopping = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN:
            continue  # the parent asked for this signal to be ignored (nohup, background jobs)
        previous[signum] = current
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, current in previous.items():
            # None: installed from C, not restorable from Python; fall back to the default action
            signal.signal(signum, current if current is not None else signal.SIG_DFL)
