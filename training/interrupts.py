"""Ctrl-C and SIGTERM as one line and an exit status, never a traceback (docs/ARCHITECTURE.md,
"Training"): SIGINT exits 130, SIGTERM 143 (128 + the signal, as a shell reports them)."""

from __future__ import annotations

import signal


class Interrupted(Exception):
    """The run was stopped by a signal; the message says what is kept and how to go on."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def code(self) -> int:
        return 128 + self.signum


def raise_on_sigterm() -> None:
    """SIGTERM raises Interrupted in the main thread, as SIGINT raises KeyboardInterrupt, so
    that `finally` blocks run (the default action would skip them)."""
    def handler(signum, frame):
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, handler)


def as_interrupted(e: BaseException) -> Interrupted | None:
    if isinstance(e, Interrupted):
        return e
    if isinstance(e, KeyboardInterrupt):
        return Interrupted(signal.SIGINT)
    return None
