"""`trt-pipeline nightly`: rebuild every recipe for every target, compare with the previous night, report."""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
import time
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import TextIO

from pipeline import interrupt
from pipeline.commands.farm import connect
from pipeline.commands.options import cluster_options
from pipeline.commands.output import Command, Progress, emit_json, print_table
from pipeline.errors import PipelineError
from pipeline.nightly import regression
from pipeline.nightly import run as nights
from pipeline.nightly.farm import Farm
from pipeline.nightly.report import (
    change_line,
    first_line,
    headline,
    markdown,
    pair_row,
    ran_on,
    regression_line,
)
from pipeline.nightly.task import Task
from pipeline.store import Store

STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


class Display:
    """Progress on `stream`: a status line redrawn in place on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO, tty: bool) -> None:
        self.out, self.tty = Progress(stream, tty, clock=False), tty  # it draws its own clock
        self.start = time.monotonic()
        self.total = self.done = self.to_build = self.workers = 0
        self.running: dict[tuple[str, str], float] = {}
        self.walls: list[float] = []

    def planned(self, total: int, to_build: int, workers: int) -> None:
        self.total, self.to_build, self.workers = total, to_build, max(workers, 1)
        self._line(f"nightly: {total} pair(s), {to_build} to build with {workers} worker(s), "
                   f"{total - to_build} known before building (unchanged or not buildable)")

    def started(self, task: Task) -> None:
        now = time.monotonic()
        self.running.update({(task.recipe, target): now for target in task.targets})
        if not self.tty:
            self._line(f"[{self.done:>{len(str(self.total))}}/{self.total}] start  {task.recipe} "
                       f"{'+'.join(task.targets)}  ({self._clock()})")
        self.tick()

    def finished(self, record: dict) -> None:
        self.done += 1
        if self.running.pop((record["recipe"], record["target"]), None) is not None and record.get("wall_s"):
            self.walls.append(record["wall_s"])
        what = record["status"] + (f" ({record['reason']})" if record.get("reason") else "")
        detail = record.get("artifact") or _first_line(record.get("error"))
        wall = f" {record['wall_s']:.1f}s" if record.get("wall_s") else ""
        self._line(f"[{self.done:>{len(str(self.total))}}/{self.total}] {what:<8} {record['recipe']} "
                   f"{record['target']}{wall}  {detail}{'  ' + ran_on(record) if ran_on(record) else ''}  "
                   f"({self._clock()})")

    def tick(self) -> None:
        if not self.tty or not self.running:
            return
        now = time.monotonic()
        tasks: dict[tuple[str, float], list[str]] = {}
        for (recipe, target), since in self.running.items():
            tasks.setdefault((recipe, since), []).append(target)
        names = ", ".join(f"{r} {'+'.join(t)} {now - s:.0f}s" for (r, s), t in tasks.items())
        self.out.started(f"[{self.done}/{self.total}] running {names}  ({self._clock()})")

    def clear(self) -> None:
        """Erase the status line (on a terminal): the next output starts on a clean line."""
        Progress.end_status()

    def _clock(self) -> str:
        elapsed = time.monotonic() - self.start
        eta = self._eta()
        return f"elapsed {_hms(elapsed)}, eta {_hms(eta) if eta is not None else '?'}"

    def _eta(self) -> float | None:
        """Mean build time so far x the work left (running pairs count what they have left), over the workers."""
        finished = len(self.walls)
        queued = max(self.to_build - finished - len(self.running), 0)
        if not queued and not self.running:
            return 0.0
        if not self.walls:
            return None
        mean, now = sum(self.walls) / len(self.walls), time.monotonic()
        left = queued * mean + sum(max(mean - (now - s), 0.0) for s in self.running.values())
        return left / self.workers

    def _line(self, text: str) -> None:
        self.out(text)
        self.tick()


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def _first_line(text: str | None) -> str:
    return first_line(text)


def nightly(args: argparse.Namespace, log: logging.Logger) -> int:
    config_file = args.config or (args.recipes_dir / nights.CONFIG_FILE)
    config_file = config_file if args.config or config_file.is_file() else None
    config = regression.load_config(config_file)
    observer = nights.Quiet() if args.quiet else Display(sys.stderr, sys.stderr.isatty())
    store = Store(args.store)
    store.reclaim()  # what a killed run left behind (its workers died with it)
    before = {a.path for a in store.artifacts()}
    try:
        with _executor(args) as executor:
            report = nights.run(args.recipes_dir, store, config, _target_names(args.targets), args.jobs,
                                args.force, observer=observer, config_file=config_file, executor=executor)
    except KeyboardInterrupt:
        if isinstance(observer, Display):
            observer.clear()  # the CLI's one "interrupted" line goes on a line of its own
        for artifact in store.artifacts():  # what the workers published before they were stopped
            if artifact.path not in before:
                interrupt.published(f"{artifact.ref} [{artifact.tag}]")
        raise
    summary_file = args.environ.get(STEP_SUMMARY_ENV)
    if summary_file:
        try:
            with open(summary_file, "a") as handle:
                handle.write(markdown(report) + "\n")
        except OSError as error:
            log.warning("cannot append the summary to $%s (%s): %s", STEP_SUMMARY_ENV, summary_file, error.strerror)
    if args.json:
        emit_json(report)
    else:
        _print_summary(report)
    return 0 if report["summary"]["ok"] else 1


def _executor(args: argparse.Namespace) -> ContextManager[Farm | None]:
    """--cluster ADDRESS: the night's pairs are built and validated on a Ray cluster."""
    if not args.cluster:
        return contextlib.nullcontext()
    return connect(args)


def _print_summary(report: dict) -> None:
    print_table(("RECIPE", "TARGET", "STATUS", "ENGINE", "BUILD", "MAX ERROR", "VALIDATION", "ARTIFACT"),
                [pair_row(p) for p in report["pairs"]])
    print(headline(report) + f" (compared with {report['previous'] or 'no previous night'})")
    for r in report["regressions"]:
        print(f"regression: {regression_line(r)}")
    for p in report["pairs"]:
        if p["status"] == "failed":
            print(f"failed: {p['recipe']} {p['target']}: {first_line(p.get('error'))}"
                  + (f" (log: {p['log']})" if p.get("log") else ""))
    for p in report["pairs"]:  # a cluster's pair (or validation) that no node could run
        stuck = p if p["status"] == "unschedulable" else p.get("validation") or {}
        if stuck.get("status") == "unschedulable":
            print(f"unschedulable: {p['recipe']} {p['target']}: {stuck.get('error') or stuck.get('reason')}")
    for c in report["changes"]:
        print(f"change: {change_line(c)}")
    print(f"report: {report['files']['report.html']}")
    print(f"summary: {report['files']['summary.md']}")


def _jobs(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of parallel builds >= 1, got {text!r}")
    return int(text)


def _target_names(values: list[str]) -> tuple[str, ...]:
    """--targets sm86 sm89, --targets sm86,sm89: each must look like a target (RECIPES_DIR goes first)."""
    names = tuple(dict.fromkeys(t for value in values for t in value.split(",") if t))
    for name in names:
        if not re.fullmatch(r"local|sm[0-9]{2,3}", name):
            raise PipelineError(f"--targets: expected targets like sm89 or local, got '{name}'",
                                hint="put RECIPES_DIR before --targets: trt-pipeline nightly recipes --targets sm89")
    return names


def register(command: Command) -> None:
    p = command("nightly", nightly,
                "Plan every (recipe, target) pair of RECIPES_DIR, skip pairs whose build key is unchanged, build the "
                "rest (in parallel with --jobs, bounded by memory), keep going past failures, record the night under "
                "STORE/_nightly/<time>/ (report.json, report.html, summary.md) and compare it with the previous "
                "night. Thresholds come from --config (default RECIPES_DIR/nightly.yaml when present). "
                "Exit 0 when all is good, 1 on any failure or regression.")
    p.add_argument("recipes_dir", nargs="?", type=Path, default=Path("recipes"), metavar="RECIPES_DIR",
                   help="directory of recipe *.yaml files (default: recipes)")
    p.add_argument("--targets", nargs="+", action="extend", default=[], metavar="T",
                   help="build these targets for every recipe instead of each recipe's own (e.g. sm86 sm89)")
    p.add_argument("--jobs", "-j", type=_jobs, default=1, metavar="N",
                   help="build up to N pairs at once in separate processes (fewer if memory is short); default 1")
    p.add_argument("--force", action="store_true", help="rebuild every pair even when its key is unchanged")
    p.add_argument("--config", type=Path, metavar="FILE", help="thresholds file (default RECIPES_DIR/nightly.yaml)")
    cluster_options(p, "build and validate", note="; --jobs is then the cluster's CPUs")
