"""Ctrl-C and SIGTERM, remembered: TensorRT calls back into Python while it builds, and an interrupt raised
inside such a callback is swallowed by TensorRT. The handler records the request before raising, so the stage
that called TensorRT can still stop the build when control comes back to it."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any

_requested = threading.Event()


def _handle(signum: int, frame: Any) -> None:
    _requested.set()
    raise KeyboardInterrupt


def install() -> None:
    """SIGINT and SIGTERM unwind like Ctrl-C (so staged work is removed) and are remembered."""
    _requested.clear()
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        signal.signal(signal.SIGINT, _handle)
        signal.signal(signal.SIGTERM, _handle)


def check() -> None:
    """Raise KeyboardInterrupt if an interrupt arrived, even one TensorRT swallowed."""
    if _requested.is_set():
        raise KeyboardInterrupt


def requested() -> bool:
    return _requested.is_set()


def request() -> None:
    """Record an interrupt (what the signal handler does), for callers and tests that deliver one themselves."""
    _requested.set()


def clear() -> None:
    _requested.clear()
