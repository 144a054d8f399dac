"""Run nightly tasks in worker processes: as many at once as --jobs and memory allow; a crash costs one pair.

Ctrl-C is the parent's to handle: workers ignore SIGINT (it reaches the whole process group on a terminal), and
on an interrupt the parent sends each worker SIGTERM, which unwinds its build like Ctrl-C unwinds `build`
(staged directories removed), and waits for them.
A parent that dies without unwinding (SIGKILL, the OOM killer) takes its workers with it: each asks the kernel for
SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG), so no worker goes on to publish for a night nobody records;
what they staged is reclaimed by the next run (Store.reclaim).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from pipeline import interrupt
from pipeline.nightly.task import Task, bug, build_task, failed, identity


class Observer(Protocol):
    def planned(self, total: int, to_build: int, workers: int) -> None: ...
    def started(self, task: Task) -> None: ...
    def finished(self, record: dict) -> None: ...
    def tick(self) -> None: ...


class Quiet:
    def planned(self, total: int, to_build: int, workers: int) -> None: ...
    def started(self, task: Task) -> None: ...
    def finished(self, record: dict) -> None: ...
    def tick(self) -> None: ...


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, else free physical pages; bytes."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def workers_for(tasks: list[Task], jobs: int, memory: int) -> int:
    """min(jobs, what memory allows for the hungriest recipe, number of pairs), at least 1."""
    estimate = max((t.estimate_bytes for t in tasks), default=1) or 1
    return max(1, min(jobs, memory // estimate, sum(len(t.targets) for t in tasks)))


def spread(tasks: list[Task], workers: int) -> list[Task]:
    """Split the recipes with the most targets in halves until every worker has a task (or all are single)."""
    tasks = list(tasks)
    while len(tasks) < workers:
        index, largest = max(enumerate(tasks), key=lambda item: len(item[1].targets))
        if len(largest.targets) < 2:
            break
        half = (len(largest.targets) + 1) // 2
        tasks[index:index + 1] = [replace(largest, targets=largest.targets[:half]),
                                  replace(largest, targets=largest.targets[half:])]
    return tasks


BuildFn = Callable[[Task], list]


def schedule(tasks: list[Task], workers: int, observer: Observer, build: BuildFn = build_task) -> list[dict]:
    """Run the tasks in `workers` processes; at most `workers` in flight, so every submitted task is running.

    A worker that dies (a crash inside TensorRT, the OOM killer) breaks the pool: the tasks in flight are
    retried one pair at a time in a fresh pool, and a pair that kills its process alone is recorded as failed.
    """
    pending, solo, results = list(tasks), [], []
    crashed: set[Task] = set()
    running: dict[Future, Task] = {}
    pool = _pool(workers)
    try:
        while pending or solo or running:
            for task in _next(pending, solo, running, crashed, workers):
                with _children_ignore_sigint():  # submit starts the worker processes
                    running[pool.submit(_call, build, task)] = task
                observer.started(task)
            done, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
            observer.tick()
            broken = any(isinstance(f.exception(), BrokenProcessPool) for f in done)
            if broken:
                pool.shutdown(wait=True, cancel_futures=True)
                done = set(running)  # results that came back before the crash are kept
            suspects = sum(isinstance(f.exception(), BrokenProcessPool) for f in done)
            for future in done:
                task = running.pop(future)
                error = future.exception()
                if isinstance(error, BrokenProcessPool):
                    results += _crashed(task, crashed, solo, observer, alone=suspects == 1)
                    continue
                for record in future.result() if error is None else _lost(task, error):
                    if task in crashed:
                        record["retried"] = True  # its first attempt may have published before the crash
                    results.append(record)
                    observer.finished(record)
            if broken:
                pool = _pool(workers)
    except BaseException:  # Ctrl-C, SIGTERM or a bug in the parent: stop the builds, they clean up after themselves
        _terminate(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                               initargs=(os.getpid(),))


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Processes started meanwhile inherit SIGINT ignored through exec (Python then installs no KeyboardInterrupt
    handler), so a Ctrl-C while a worker imports cannot print its traceback. The parent's own Ctrl-C is held
    (blocked) meanwhile, not lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


_busy = False  # a worker is running a task: SIGTERM unwinds it


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _worker_init(parent: int) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_stop)


def die_with_parent(parent: int) -> None:
    """Be SIGKILLed by the kernel when the process that started this one dies (Linux; elsewhere nothing). A parent
    already gone before the request was made (the worker was reparented meanwhile) means exit now."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(128 + signal.SIGKILL)


def _worker_stop(signum: int, frame: Any) -> None:
    if not _busy:
        os._exit(128 + signum)  # idle: nothing to clean up
    # The parent reports the interrupt in one line: what TensorRT prints about it from here is noise.
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    interrupt.request()  # TensorRT may swallow the KeyboardInterrupt; the stage checks when TensorRT returns
    raise KeyboardInterrupt  # unwinds the build: its staging directories are removed on the way out


def _call(build: BuildFn, task: Task) -> list:
    """Run one task in a worker; an interrupt (the parent's SIGTERM) ends the process once the build has unwound."""
    global _busy
    _busy = True
    try:
        return build(task)
    except KeyboardInterrupt:
        os._exit(128 + signal.SIGINT)
    finally:
        _busy = False


def _terminate(pool: ProcessPoolExecutor) -> None:
    """SIGTERM every worker of the pool (they unwind and exit; `shutdown` then waits for them)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):  # the executor's own worker table
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if process.is_alive():
                process.terminate()


def _next(pending: list[Task], solo: list[Task], running: dict, crashed: set[Task], workers: int) -> list[Task]:
    """Tasks to start now: a crash suspect only alone; never two pairs sharing a timing cache together."""
    if solo:
        return [solo.pop(0)] if not running else []
    if any(t in crashed for t in running.values()):
        return []  # a crash suspect is being retried alone
    busy = {t.timing_cache for t in running.values() if t.timing_cache}
    chosen = []
    for task in list(pending):
        if len(running) + len(chosen) >= workers:
            break
        if task.timing_cache and task.timing_cache in busy:
            continue
        busy.add(task.timing_cache)
        pending.remove(task)
        chosen.append(task)
    return chosen


def _lost(task: Task, error: BaseException) -> list[dict]:
    """A task whose results never came back (they could not be sent to, or returned from, its process)."""
    return [failed(identity(task, target), f"the result was lost: {bug(error)}", None) for target in task.targets]


def _crashed(task: Task, crashed: set[Task], solo: list[Task], observer: Observer, alone: bool) -> list[dict]:
    """A task whose process died. A pair that was alone in the pool (or already retried) failed; otherwise
    each of the task's pairs is retried alone, to find the one that crashes."""
    if len(task.targets) > 1 or (not alone and task not in crashed):
        for one in task.split():
            crashed.add(one)
            solo.append(one)
        return []
    (target,) = task.targets
    record = failed(identity(task, target), "the build process died (a crash inside TensorRT, or killed for memory)",
                    f"see {task.log}; reproduce with `trt-pipeline build {task.recipe_file} --target {target}`")
    observer.finished(record)
    return [record]
