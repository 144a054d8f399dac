"""Nightly rebuilds: every (recipe, target) pair of a recipes directory, keep going past failures, record the
night under ROOT/_nightly/<run>/report.json and compare it with the previous night.

The targets of a recipe are built together in a worker process (`pair.build_task`: shared stages once), split
across processes when there are more workers than recipes; a failure, or a crash inside TensorRT, costs only
its pair. Pairs whose source key is unchanged are skipped before any process starts; the runner skips the ones
whose build key is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from pipeline import clock
from pipeline.build import cache
from pipeline.build import plan as plans
from pipeline.build.cache import source_key
from pipeline.errors import PipelineError, RecipeError
from pipeline.files import replace_json
from pipeline.nightly import report as reports
from pipeline.nightly.pool import (
    BuildFn,
    Observer,
    Quiet,
    available_memory,
    schedule,
    spread,
    workers_for,
)
from pipeline.nightly.regression import Config, compare
from pipeline.nightly.task import Task, artifact_record, bug, build_task, failed
from pipeline.recipe import parse_yaml
from pipeline.stages.parse import digests
from pipeline.store import Store
from pipeline.trt import gpu
from pipeline.trt.gpu import Probe

REPORT = "report.json"
SCHEMA = 1
CONFIG_FILE = "nightly.yaml"


# ---------------------------------------------------------------- planning, in the parent


def recipe_files(directory: Path, exclude: tuple[Path, ...] = ()) -> list[Path]:
    if directory.is_file():
        raise PipelineError(f"{directory} is a file; nightly takes a directory of recipes",
                            hint=f"pass its directory: trt-pipeline nightly {directory.parent}, or build this "
                                 f"recipe alone: trt-pipeline build {directory}")
    if not directory.is_dir():
        raise PipelineError(f"no recipes directory {directory}", hint="pass one: trt-pipeline nightly RECIPES_DIR")
    skip = {p.resolve() for p in exclude}
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
                   and p.name != CONFIG_FILE and p.resolve() not in skip)
    if not files:
        raise PipelineError(f"no recipes (*.yaml) in {directory}")
    return files


Defer = Callable[[Any, str], bool]  # (backend, target) -> planned where it is built, not here


def plan_pairs(files: list[Path], store: Store, night: Path, probe: Probe, targets: tuple[str, ...],
               force: bool, memory_per_job: int, defer: Defer = lambda backend, target: False,
               ) -> tuple[list[Task], list[dict], list[tuple[str, str]]]:
    """Every pair: one task per recipe with the targets to build, the records already known (failed to plan,
    or unchanged), and the order of all pairs as (recipe file, target). `defer`: targets this machine cannot
    resolve but a build farm's node can (a GPU's): they are planned by the node that builds them."""
    tasks: list[Task] = []
    known: list[dict] = []
    order: list[tuple[str, str]] = []
    names: dict[str, Path] = {}
    for path in files:
        try:
            recipe, backend = plans.load_recipe(path)
            _unique_name(recipe, path, names)
        except Exception as error:  # noqa: BLE001 - a broken recipe (or a bug) costs only its own pairs
            name, listed = _raw_identity(path)
            name = path.name if names.get(name, path) != path else name  # a duplicate name: keep pairs apart
            known += [_failed(name, target, path, error) for target in targets or listed]
            order += [(str(path), target) for target in targets or listed]
            continue
        order += [(str(path), target) for target in targets or recipe.targets]
        todo, done = _plan_targets(recipe, backend, path, targets or recipe.targets, store, probe, force, defer)
        known += done
        if todo:
            tasks.append(_task(recipe, path, todo, store, night, probe, force, memory_per_job))
    return tasks, known, order


def _plan_targets(recipe: Any, backend: Any, path: Path, targets: tuple[str, ...], store: Store, probe: Probe,
                  force: bool, defer: Defer) -> tuple[tuple[str, ...], list[dict]]:
    """(targets to build, records of the others: not buildable here, or unchanged by source key)."""
    todo, known = [], []
    model = None
    for target in targets:
        if defer(backend, target):
            todo.append(target)
            continue
        try:
            plan = plans.make_plan(recipe, backend, probe, (target,))
            model = model or (None if force else digests(recipe.model_path))
            hit = None if force else _unchanged(plan, store, model)
        except Exception as error:  # noqa: BLE001 - e.g. a --targets entry this backend cannot build
            known.append(_failed(recipe.name, target, path, error))
            continue
        if hit:
            known.append({"recipe": recipe.name, "target": target, "recipe_file": str(path), "log": None,
                          **artifact_record(hit, recipe, "source key unchanged"), "wall_s": 0.0})
        else:
            todo.append(target)
    return tuple(todo), known


def _unique_name(recipe: Any, path: Path, names: dict[str, Path]) -> None:
    """Nights compare pairs by (recipe name, target): two files may not share a name."""
    other = names.setdefault(recipe.name, path)
    if other != path:
        raise RecipeError([recipe.problem(("name",), f"recipe name '{recipe.name}' is also used by {other}; "
                                                    "names must be unique within a nightly")])


def _task(recipe: Any, path: Path, targets: tuple[str, ...], store: Store, night: Path, probe: Probe, force: bool,
          memory_per_job: int) -> Task:
    cache = recipe.spec("serialize").timing_cache
    model = recipe.model_path
    model_bytes = sum(p.stat().st_size for p in model.parent.glob(f"{model.name}*") if p.is_file())
    # One build number per recipe and night, allocated here, so serial and parallel nights number alike.
    return Task(str(path), recipe.name, targets, str(store.root), force, probe, str(night / "logs"),
                str(cache.path) if cache else None, max(memory_per_job, 4 * model_bytes),
                store.new_run(recipe.name, recipe.version).build)


def _unchanged(plan: Any, store: Store, model: dict) -> Any | None:
    """The artifact the runner would reuse by source key (recipe settings, model, tools, target), if any."""
    import logging


    recipe, (target,) = plan.recipe, plan.targets
    key = source_key(recipe, model, plan.backend, target)
    return cache.reusable(store, recipe, "source_key", key, logging.getLogger("pipeline.nightly"))


def _raw_identity(path: Path) -> tuple[str, tuple[str, ...]]:
    """Name and targets of a recipe that does not load, as far as they can be read; the file name otherwise.
    Read with the recipe loader's guarded parser: a hostile file (an alias bomb, deep nesting) costs nothing."""
    try:
        _, data, _ = parse_yaml(path)
    except PipelineError:
        data = None
    data = data if isinstance(data, dict) else {}
    name = data.get("name") if isinstance(data.get("name"), str) else path.stem
    targets = data.get("targets")
    ok = isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)
    return name, tuple(targets) if ok else ("*",)


def _failed(name: str, target: str, path: Path, error: Exception) -> dict:
    if isinstance(error, PipelineError):
        message, hint = str(error), error.hint
    else:
        logging.getLogger("pipeline.nightly").error("planning %s failed (this is a bug)", path, exc_info=error)
        message, hint = bug(error), None
    return failed({"recipe": name, "target": target, "recipe_file": str(path), "log": None}, message, hint, 0.0)


# ---------------------------------------------------------------- the night


class Executor(Protocol):
    """Where the pairs are built instead of local worker processes (pipeline.nightly.farm.Farm: a Ray cluster)."""

    def defer(self, backend: Any, target: str) -> bool: ...
    def workers(self, tasks: list[Task]) -> int: ...
    def run(self, tasks: list[Task], observer: Observer) -> list[dict]: ...
    def describe(self) -> dict: ...


def run(recipes_dir: Path, store: Store, config: Config = Config(), targets: tuple[str, ...] = (), jobs: int = 1,
        force: bool = False, probe: Probe | None = None, observer: Observer = Quiet(),
        config_file: Path | None = None, build: BuildFn = build_task, executor: Executor | None = None) -> dict:
    """Plan, build, record and compare one night; returns the report (also in ROOT/_nightly/<run>/report.json).
    `executor`: build elsewhere (a cluster) instead of in `jobs` local worker processes."""
    started = time.time()
    files = recipe_files(recipes_dir, (config_file,) if config_file else ())
    night = claim_night(store, started)
    with _recorded_only_when_finished(night):
        tasks, known, order = plan_pairs(files, store, night, probe or gpu.probe(), targets, force,
                                         config.memory_per_job, *([executor.defer] if executor else []))
        workers = (executor.workers(tasks) if executor else workers_for(tasks, jobs, available_memory())) \
            if tasks else 0
        tasks = spread(tasks, workers)
        observer.planned(len(order), len(order) - len(known), workers)
        for record in known:
            observer.finished(record)
        built = (executor.run(tasks, observer) if executor else schedule(tasks, workers, observer, build)) \
            if tasks else []
        records = _ordered(known + built, order)
        previous = previous_night(store, night.name)
        regressions, changes = compare(previous["pairs"], records, config) if previous else ([], [])
        report = {"schema": SCHEMA, "run": night.name, "started_at": clock.utc(started), "finished_at": clock.utc(time.time()),
                  "duration_s": round(time.time() - started, 3), "recipes_dir": str(recipes_dir),
                  "store": str(store.root), "targets": list(targets) or None, "force": force, "jobs": jobs,
                  "workers": workers, "cluster": executor.describe() if executor else None,
                  "config": {**config.thresholds(), "file": str(config_file) if config_file else None},
                  "previous": previous["run"] if previous else None, "summary": _summary(records, regressions),
                  "pairs": records, "regressions": regressions, "changes": changes,
                  "files": {name: str(night / name) for name in (REPORT, reports.HTML, reports.MARKDOWN)}}
        replace_json(night / REPORT, report)
        reports.write(night, report, nights(store)[-config.history:])
    return report


@contextlib.contextmanager
def _recorded_only_when_finished(night: Path) -> Iterator[None]:
    """An interrupted night (Ctrl-C, SIGTERM) or one stopped by a bug leaves no run directory behind."""
    try:
        yield
    except BaseException:
        shutil.rmtree(night, ignore_errors=True)
        raise


def _ordered(records: list[dict], order: list[tuple[str, str]]) -> list[dict]:
    """Planning order (recipe file, then target), whatever order the pairs finished in."""
    rank = {pair: i for i, pair in enumerate(order)}
    return sorted(records, key=lambda r: rank.get((r["recipe_file"], r["target"]), len(rank)))


def _summary(records: list[dict], regressions: list[dict]) -> dict:
    count = lambda status: sum(r["status"] == status for r in records)  # noqa: E731
    failed = count("failed")
    invalid = sum((r.get("validation") or {}).get("status") == "failed" for r in records)
    # a pair (or its validation) that no node of a cluster could run
    stuck = count("unschedulable") + sum((r.get("validation") or {}).get("status") == "unschedulable"
                                         for r in records)
    return {"pairs": len(records), "built": count("built"), "skipped": count("skipped"), "failed": failed,
            "validation_failed": invalid, "regressions": len(regressions),
            **({"unschedulable": stuck} if stuck else {}),
            "ok": not failed and not invalid and not regressions and not stuck}


def claim_night(store: Store, when: float) -> Path:
    """A fresh ROOT/_nightly/<UTC time>[-N]/ (with logs/), claimed by the store so two nightlies never share one."""
    path = store.new_night(clock.compact(when))
    (path / "logs").mkdir()
    return path


def nights(store: Store) -> list[dict]:
    """Every recorded night's report, oldest first (runs without a readable report.json are left out)."""
    import json

    found = []
    for path in (p for p in store.nights() if (p / REPORT).is_file()):
        try:
            found.append(json.loads((path / REPORT).read_text()))
        except (OSError, ValueError):
            continue
    return found


def previous_night(store: Store, run: str) -> dict | None:
    """The newest night recorded before `run`."""
    earlier = [n for n in nights(store) if n.get("run", "") < run]
    return earlier[-1] if earlier else None
