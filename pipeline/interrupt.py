"""Ctrl-C and SIGTERM, remembered: TensorRT calls back into Python while it builds, and an interrupt raised
inside such a callback is swallowed by TensorRT. The handler records the request before raising, so the stage
that called TensorRT can still stop the build when control comes back to it.

It also records which signal came (the exit status is 128 + its number: 130 for SIGINT, 143 for SIGTERM), and
what was published before it came, so the one "interrupted" line says what the interrupted run left behind.
A step that must not be cut in half (renaming a build into place and noting it) runs `deferred()`: a signal
arriving meanwhile takes effect when the step ends.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, NoReturn

_requested = threading.Event()
_state: dict[str, Any] = {"signal": None, "depth": 0, "pending": False}
_published: list[str] = []
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _handle(signum: int, frame: Any) -> None:
    _requested.set()
    _state["signal"] = _state["signal"] or signum
    if _state["depth"]:
        _state["pending"] = True  # raised when the deferred step ends
        return
    raise KeyboardInterrupt


def install() -> None:
    """SIGINT and SIGTERM unwind like Ctrl-C (so staged work is removed) and are remembered."""
    clear()
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        for signum in SIGNALS:
            signal.signal(signum, _handle)


def check() -> None:
    """Raise KeyboardInterrupt if an interrupt arrived, even one TensorRT swallowed."""
    if _requested.is_set():
        raise KeyboardInterrupt


def caused(error: BaseException) -> bool:
    """`error` is an interrupt, or what some code made of one: a signal during an import can land in a class's
    `__set_name__`, which Python turns into a RuntimeError whose cause is the KeyboardInterrupt."""
    seen: BaseException | None = error
    for _ in range(32):  # a chain, not a cycle
        if seen is None:
            return False
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def requested() -> bool:
    return _requested.is_set()


def request() -> None:
    """Record an interrupt (what the signal handler does), for callers and tests that deliver one themselves."""
    _requested.set()


def clear() -> None:
    _requested.clear()
    _state.update(signal=None, depth=0, pending=False)
    _published.clear()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run the block whole: SIGINT/SIGTERM arriving meanwhile raise KeyboardInterrupt when it ends (not inside)."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
    if not _state["depth"] and _state["pending"]:
        _state["pending"] = False
        raise KeyboardInterrupt


def published(what: str) -> None:
    """Note something made visible in the store (a build, a channel change), for the interrupted line."""
    _published.append(what)


def summary() -> str:
    """What the interrupted run published, in one line."""
    if not _published:
        return "nothing was published by the interrupted step"
    return f"published before the interrupt: {', '.join(_published)}; nothing after it"


def exit_code() -> int:
    """128 + the signal that interrupted (130 for Ctrl-C, and when no signal was seen; 143 for SIGTERM)."""
    return 128 + (_state["signal"] or signal.SIGINT)


def finish(code: int) -> int:
    """The exit status, fixed as late as possible: an interrupt that arrived, or is pending now, makes it 130 or
    143. From here SIGINT/SIGTERM only get recorded, then are ignored process-wide: a signal arriving while the
    interpreter shuts down (its handlers reset to the default) would otherwise end the process with -2 or -15,
    and blocking them in this thread is not enough, as the kernel hands them to any native thread (TensorRT's,
    ONNX Runtime's) that does not block them."""
    _state["depth"] += 1  # a signal handled from here on is recorded, not raised
    with contextlib.suppress(ValueError, OSError):
        signal.pthread_sigmask(signal.SIG_BLOCK, set(SIGNALS))
        pending = signal.sigpending()
        for signum in SIGNALS:
            if signum in pending and not _state["signal"]:
                _state["signal"] = signum
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)  # process-wide, unlike the mask; discards what is pending
    # A KeyboardInterrupt raised inside exec()'d code (dataclasses make their methods so, at import) leaves CPython's
    # "unhandled KeyboardInterrupt" flag set even once caught, and the process would then end by SIGINT (130);
    # running exec() once more clears it.
    exec("None")  # noqa: S102 - a constant
    return exit_code() if _state["signal"] else code


def end(code: int) -> NoReturn:
    """End the process with finish(code)'s status. What a normal exit does that anyone sees runs first: the atexit
    functions (logging's flush, weakref finalizers, Ray's disconnect), then stdout and stderr are flushed; tearing
    the interpreter down (every module, TensorRT's and ONNX Runtime's objects, the heap: ~0.1 s after a build)
    is skipped. A normal exit instead when another non-daemon thread still runs (it would be waited for), when a
    profiler or tracer is attached (cProfile, coverage: they write their results at exit), or when stdout cannot
    be flushed (a reader that left: the interpreter reports it as it always does)."""
    status = finish(code)
    if sys.getprofile() or sys.gettrace() or any(
            thread is not threading.main_thread() and not thread.daemon and thread.is_alive()
            for thread in threading.enumerate()):
        raise SystemExit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            raise SystemExit(status) from None
    os._exit(status)
