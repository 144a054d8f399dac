"""Nightly (recipe, target) pairs built in a worker process, and what a night records about each.

A task never raises: a user error (a bad recipe, a failed stage) or a bug becomes a `failed` record, so one
pair costs the night only itself. Everything a worker needs travels in a picklable `Task`.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.build import plan as plans
from pipeline.build import runner
from pipeline.digest import file_sha256
from pipeline.errors import PipelineError
from pipeline.lifecycle import diff as differences
from pipeline.manifest import PrecisionRecord, ValidationRecord
from pipeline.store import Run, Store
from pipeline.trt.gpu import Probe
from pipeline.validate import artifact as validate


@dataclass(frozen=True)
class Task:
    """Targets of one recipe to build in one worker process (picklable: paths and plain values). Built together,
    the shared stages (parse, graph-cleanup) run once for all of them, as in `trt-pipeline build`."""

    recipe_file: str
    recipe: str  # the recipe's name
    targets: tuple[str, ...]
    store: str
    force: bool
    probe: Probe
    logs: str  # directory of the night's logs
    timing_cache: str | None = None  # tasks sharing a timing cache never run at the same time
    estimate_bytes: int = 0  # memory one build of this recipe is assumed to need
    run: int | None = None  # the night's build number for this recipe, shared by every process building it

    @property
    def log(self) -> str:
        return str(Path(self.logs) / f"{self.recipe}.{'+'.join(self.targets)}.log")

    def split(self) -> list[Task]:
        return [replace(self, targets=(target,)) for target in self.targets]


def build_task(task: Task) -> list[dict]:
    """One record per target; never raises for a user error or a bug: both become `failed` records.

    The targets are built together; if that fails, each target is built alone so that the failure is pinned
    on its target and the others still publish (what the joint attempt published is kept, not rebuilt)."""
    log = file_logger("pipeline.nightly.task", Path(task.log))
    started = time.perf_counter()
    cache_before = _sha_or_none(task.timing_cache)
    store = Store(Path(task.store))
    before = {a.path for a in store.artifacts(task.recipe)}
    try:
        try:
            records = _build(task, store, log, before)
        except Exception as error:  # noqa: BLE001 - pinned on its target below
            if len(task.targets) == 1:
                records = [failure(task, task.targets[0], error, log)]
            else:
                log.info("building %s together failed; building each target alone", ", ".join(task.targets))
                records = [_build_alone(one, store, log, before) for one in task.split()]
    finally:
        for handler in log.handlers[:]:
            log.removeHandler(handler)
            handler.close()
    wall = round((time.perf_counter() - started) / len(records), 3)
    cache = {"path": task.timing_cache, "before": cache_before, "after": _sha_or_none(task.timing_cache)}
    return [{**r, "log": task.log, "wall_s": wall, **({"timing_cache": cache} if task.timing_cache else {})}
            for r in records]


def _build(task: Task, store: Store, log: logging.Logger, before: set[Path]) -> list[dict]:
    plan = load_plan(Path(task.recipe_file), task.probe, task.targets)
    fresh = {a.tag for a in store.artifacts(task.recipe) if a.path not in before}
    force = task.force and not fresh & {t.tag for t in plan.targets}  # published by this task's joint attempt
    outcomes = runner.build(plan, store, log, log.info, force=force, run=Run(task.run) if task.run else None)
    records = []
    for outcome in outcomes:
        new = not outcome.reused or outcome.artifact.path not in before
        if not outcome.reused:
            _validate(plan, outcome.artifact, store, task.probe, log)
        reason = None if new else "build key unchanged"
        records.append({**identity(task, outcome.target.name),
                        **artifact_record(outcome.artifact, plan.recipe, reason, store)})
    return records


def _build_alone(task: Task, store: Store, log: logging.Logger, before: set[Path]) -> dict:
    try:
        (record,) = _build(task, store, log, before)
        return record
    except Exception as error:  # noqa: BLE001 - a failure or a bug in one pair must not stop the night
        return failure(task, task.targets[0], error, log)


def failed(who: dict, error: str, hint: str | None, wall_s: float | None = None) -> dict:
    """The one shape of a failed pair's record: `who` is its identity (recipe, target, recipe_file, log)."""
    return {**who, "status": "failed", "error": error, "hint": hint, "wall_s": wall_s}


def bug(error: BaseException) -> str:
    return f"internal error (this is a bug): {type(error).__name__}: {error}"


def failure(task: Task, target: str, error: Exception, log: logging.Logger) -> dict:
    if isinstance(error, PipelineError):
        log.error("%s %s: %s%s", task.recipe, target, error, f"\nhint: {error.hint}" if error.hint else "")
        return failed(identity(task, target), str(error), error.hint)
    log.error("%s %s: internal error (this is a bug):\n%s", task.recipe, target,
              "".join(traceback.format_exception(error)))
    return failed(identity(task, target), bug(error), f"traceback in {task.log}")


def file_logger(name: str, path: Path) -> logging.Logger:
    """The logger `name`, writing INFO and above to `path` only (a worker's log: nothing reaches the terminal, not
    even logging's own report of a write that failed, e.g. on a full disk: runner.LogFile keeps it)."""
    log = logging.getLogger(name)
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = runner.LogFile(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.handlers[:] = [handler]
    return log


def _sha_or_none(path: str | None) -> str | None:
    return file_sha256(Path(path)) if path and Path(path).is_file() else None


def identity(task: Task, target: str) -> dict:
    return {"recipe": task.recipe, "target": target, "recipe_file": task.recipe_file, "log": task.log}


def load_plan(path: Path, probe: Probe, targets: tuple[str, ...] = ()) -> Any:
    """Recipe -> backend -> plans.Plan (for `targets`, default the recipe's), every problem as a RecipeError."""
    recipe, backend = plans.load_recipe(path, probe, targets)
    return plans.make_plan(recipe, backend, probe, targets)


def artifact_record(artifact: Any, recipe: Any, reason: str | None, store: Store | None = None) -> dict:
    """What a night records about a built or reused artifact, read from its manifest. `reason`: why it was reused
    (None: built). A built one, given its `store`, says why it was built: what changed since the previous build
    of the recipe and target ("reason", and every change as {path, old, new} in "changes")."""
    manifest = artifact.manifest()
    status, changes = "skipped" if reason else "built", []
    if status == "built" and store is not None:
        reason, found = differences.why_built(store, artifact)
        changes = [change.to_json() for change in found]
    return {"status": status, "reason": reason, "changes": changes, "artifact": artifact.ref,
            "tag": artifact.tag, "path": str(artifact.path), "build_key": manifest.build.key,
            "engine_sha256": manifest.engine.sha256, "engine_bytes": manifest.engine.bytes,
            "build_s": manifest.build.duration_s, "validation": validation_record(manifest.validation, recipe, manifest.precision)}


def validation_record(validation: ValidationRecord, recipe: Any, precision: PrecisionRecord | None = None) -> dict:
    """{status, reason, max_errors {output: float}, tolerances {output: atol}} from a manifest's validation block,
    and for a reduced-precision engine its accuracy delta: the precision check's max abs error per output against
    the FP32 original, with the check's max_abs limits (accuracy_delta, accuracy_limits)."""
    errors = output_errors(validation.results)
    spec = getattr(recipe, "validate", None)
    tolerances = {name: spec.tolerance(name).atol for name in errors} if spec else {}
    return {"status": validation.status, "reason": validation.reason, "max_errors": errors, "tolerances": tolerances,
            **({"accuracy_delta": dict(precision.accuracy_delta), "accuracy_limits": dict(precision.accuracy_limits)}
               if precision else {})}


def output_errors(results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per-output max absolute error, the worst over the validated shapes, from the validation results validate.py
    writes: results[i].outputs[name].max_abs."""
    found: dict[str, float] = {}
    for result in results:
        for name, output in (result.get("outputs") or {}).items():
            error = output.get("max_abs")
            if isinstance(error, (int, float)):
                found[name] = max(found.get(name, error), error)
    return found


def _validate(plan: Any, artifact: Any, store: Store, probe: Probe, log: logging.Logger) -> None:
    """The build's validate step (skipped, with the reason, where no GPU can run the engine), unless the
    artifact already carries a validation result."""
    if artifact.manifest().validation.status != "not-run":
        return
    try:
        validate.after_build(plan.recipe, [artifact], store, probe, os.environ, log, log.info)
    except PipelineError as error:
        log.error("validation of %s could not run: %s", artifact.ref, error)
