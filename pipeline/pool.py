"""Run nightly tasks in worker processes: as many at once as --jobs and memory allow; a crash costs one pair."""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Protocol

from dataclasses import replace

from pipeline.pair import Task, build_task, identity


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
    import multiprocessing

    pending, solo, results = list(tasks), [], []
    crashed: set[Task] = set()
    running: dict[Future, Task] = {}
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        while pending or solo or running:
            for task in _next(pending, solo, running, crashed, workers):
                running[pool.submit(build, task)] = task
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
                pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


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
    return [{**identity(task, target), "status": "failed", "wall_s": None, "hint": None,
             "error": f"internal error (this is a bug): the result was lost: {type(error).__name__}: {error}"}
            for target in task.targets]


def _crashed(task: Task, crashed: set[Task], solo: list[Task], observer: Observer, alone: bool) -> list[dict]:
    """A task whose process died. A pair that was alone in the pool (or already retried) failed; otherwise
    each of the task's pairs is retried alone, to find the one that crashes."""
    if len(task.targets) > 1 or (not alone and task not in crashed):
        for one in task.split():
            crashed.add(one)
            solo.append(one)
        return []
    (target,) = task.targets
    record = {**identity(task, target), "status": "failed", "wall_s": None,
              "error": "the build process died (a crash inside TensorRT, or killed for memory)",
              "hint": f"see {task.log}; reproduce with `trt-pipeline build {task.recipe_file} --target {target}`"}
    observer.finished(record)
    return [record]
