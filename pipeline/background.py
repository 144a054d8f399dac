"""Checks a stage starts on a second thread, which the build waits for before it publishes anything.

TensorRT-RTX builds on one core (and releases the GIL while it does), so a check that does not feed the
build, such as graph-cleanup's ONNX Runtime comparison, runs beside network-flag, memory-pool and serialize
instead of before them. A check's exception is raised where the build waits for it, so a failed check fails
the build exactly as if it had run in line.

A check that holds the GIL itself (the ONNX checker's C++) gains nothing beside Python work: it is started
`gated`, and runs once the build calls `release` on entering TensorRT, which lets go of the GIL.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

from pipeline import heap


class Background:
    """Named jobs on one worker thread. Use as a context manager: leaving it waits for every job and raises the
    first failure, also when leaving on an error (the check's stage ran first, so its failure is the one to
    report). Leaving it on Ctrl-C sets `stopping`, which a long job checks between its steps, cancels the jobs
    not yet started and waits for the running one to stop, so no job still reads the build's scratch files when
    they are removed."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline-check")
        self._jobs: dict[str, Future] = {}
        self.stopping = threading.Event()
        self._released = threading.Event()
        # A Background collected without `with` (a bare Context's) leaves no gated job waiting for a release: its
        # worker would keep the interpreter from exiting. (One still alive at exit would: leave it by `with`.)
        weakref.finalize(self, _drop, self._released, self.stopping)

    def start(self, name: str, job: Callable[..., Any], *args: Any, gated: bool = False) -> None:
        """Run `job(*args)` on the worker after the jobs started before it; `gated`: not before `release`."""
        if name in self._jobs:
            raise ValueError(f"background job {name!r} was already started")
        self._jobs[name] = self._pool.submit(_gated, self._released, self.stopping, job, *args) if gated else \
            self._pool.submit(_trimmed, job, *args)

    def release(self) -> None:
        """Let gated jobs run: the build is about to spend a while in code that does not hold the GIL."""
        self._released.set()

    def result(self, name: str) -> Any:
        """The job's return value, once it has finished; its exception is raised here. None if never started, or
        gated and skipped on Ctrl-C. Waiting releases the gated jobs (this thread has nothing else to do)."""
        job = self._jobs.get(name)
        if job is None:
            return None
        self.release()
        return job.result()

    def done(self) -> bool:
        """Every job started so far has finished."""
        return all(job.done() for job in self._jobs.values())

    def wait(self) -> dict[str, Any]:
        """Wait for every job, in the order started; the first failure is raised. Returns each job's result."""
        return {name: self.result(name) for name in self._jobs}

    def __enter__(self) -> Background:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            if kind is None or issubclass(kind, Exception):  # not on Ctrl-C
                self.wait()  # a failed check is raised first even here: its stage came before the one that failed
            else:
                self.stopping.set()
        except BaseException:  # Ctrl-C while waiting: no gated job starts after it
            self.stopping.set()
            raise
        finally:
            self.release()
            self._pool.shutdown(wait=True, cancel_futures=True)


def _gated(released: threading.Event, stopping: threading.Event, job: Callable[..., Any], *args: Any) -> Any:
    released.wait()
    return None if stopping.is_set() else _trimmed(job, *args)


def _drop(released: threading.Event, stopping: threading.Event) -> None:
    stopping.set()
    released.set()


def _trimmed(job: Callable[..., Any], *args: Any) -> Any:
    """Run the job, then give what it freed back to the OS: the worker thread has its own malloc arena, which
    the build's allocations on the main thread would not reuse."""
    try:
        return job(*args)
    finally:
        heap.trim()
