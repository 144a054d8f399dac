"""Run a recipe's stages in order: shared stages once, per-target stages for each target; time and report."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import heap
from pipeline.background import Background
from pipeline.build.cache import WeightCopies, build_key, model_record, reusable, source_hit
from pipeline.build.plan import Plan
from pipeline.build.record import manifest
from pipeline.errors import PipelineError, RecipeError, StoreError
from pipeline.files import write_bytes
from pipeline.progress import Progress, as_progress
from pipeline.recipe import Recipe
from pipeline.stages import REGISTRY
from pipeline.stages.context import Context
from pipeline.stages.graph_cleanup import CHECK, WRITE, cleaned_files
from pipeline.stages.parse import Loaded, preflight
from pipeline.stages.precision import CHECK as PRECISION_CHECK
from pipeline.store import Artifact, Run, Store
from pipeline.trt.backend import Backend, make_logger
from pipeline.trt.polygraphy import use_polygraphy
from pipeline.trt.target import Target
from pipeline.validate.cleanup import cleanup_check
from pipeline.validate.precision import precision_check

BUILD_LOG = "build.log"


def _run_stage(name: str, ctx: Context, number: int, total: int, progress: Progress) -> dict:
    stage = REGISTRY[name]
    label = f"{name} {ctx.target.name}" if stage.per_target and ctx.target else name
    progress.started(f"[{number}/{total}] {label} ...")
    start = time.perf_counter()
    try:
        stage.run(ctx)
    except PipelineError as error:
        ctx.log.info("stage %s failed: %s", label, error)
        raise
    except Exception:
        ctx.log.exception("stage %s crashed", label)
        raise
    heap.trim()  # what the stage dropped (a model, a parser) goes back to the OS before the next one allocates
    seconds = round(time.perf_counter() - start, 3)
    progress(f"[{number}/{total}] {label:<24} {seconds:7.2f}s")
    return {"name": name, "target": ctx.target.name if stage.per_target and ctx.target else None,
            "seconds": seconds}


@dataclass(frozen=True)
class Outcome:
    target: Target
    artifact: Artifact
    reused: bool  # True when an artifact with the same key already existed


# A staged target's end: (target, its staged directory, its manifest, its build key) -> the outcome.
Finish = Callable[[Target, Path, dict, str], Outcome]


def build(plan: Plan, store: Store, log: logging.Logger, progress: Callable[[str], object] | None = None,
          force: bool = False, annotate: dict | None = None, run: Run | None = None, model: dict | None = None,
          finish: Finish | None = None) -> list[Outcome]:
    """Build every target of the plan, reusing artifacts whose key is unchanged unless `force`.

    Skip predicates, cheapest first: the source key (hashes of the recipe settings and original model,
    before any stage runs), then the build key (after graph-cleanup, from the cleaned model's hash).
    `annotate` is merged into each new manifest (e.g. where a promotion came from).
    Nothing half-written survives a failure: every target is staged and renamed into place whole.
    `model`: the model record when the caller has it (a build farm's node: hashed where the model lives);
    `finish`: what becomes of each staged target (default: `publisher`, into `store`).
    """
    recipe, progress = plan.recipe, as_progress(progress)
    first_look: list[Loaded] = []  # the model file as read for its hashes, when it was read: parse takes it over
    done: dict[Target, Outcome] = {}
    with store.staging(recipe.name) as scratch:  # the build's scratch directory, removed whatever happens
        copies = WeightCopies(scratch)  # weights copied into it while they are hashed
        model = model or model_record(plan.recipe, store, log, keep=first_look, copies=copies)
        for target in plan.targets:
            hit = None if force else source_hit(plan.recipe, plan.backend, store, model, target, log)
            if hit:
                progress(f"[skip] {target.name:<6} unchanged recipe and model (source key): reusing {hit.ref} "
                         f"{hit.tag}")
                done[target] = Outcome(target, hit, reused=True)
        todo = [t for t in plan.targets if t not in done]
        info = first_look[0].header if first_look else None
        if todo and not plan.model_checked and (problems := preflight(recipe, model["sha256"], info=info)):
            raise RecipeError(problems)
        if todo:
            finish = finish or publisher(store, recipe, run or Run(), force, log, progress)
            _build_targets(plan, todo, model, store, log, progress, force, annotate or {}, done, finish, first_look,
                           scratch, copies.found)
        first_look.clear()
    reused = sum(o.reused for o in done.values())
    if reused:
        progress(f"{reused} of {len(plan.targets)} target(s) skipped (unchanged); use --force to rebuild")
    return [done[t] for t in plan.targets]


def _build_targets(plan: Plan, todo: list[Target], model: dict, store: Store, log: logging.Logger,
                   progress: Progress, force: bool, annotate: dict, done: dict, finish: Finish,
                   first_look: list[Loaded], scratch: Path, copies: dict[str, Path]) -> None:
    """Run the shared stages once, then each target's stages into its own staged directory, and hand each
    finished directory with its manifest to `finish` (which publishes it, or ships it to whoever does).
    `first_look`: the model file as already read (parse.Loaded), if it was; handed to parse, not kept here.
    `scratch`: the build's scratch directory; `copies`: external-data files copied into it (WeightCopies)."""
    recipe, backend = plan.recipe, plan.backend
    shared = [s for s in plan.stages if not REGISTRY[s].per_target]
    per_target = [s for s in plan.stages if REGISTRY[s].per_target]
    total = len(plan.stages)
    with _build_log(log, scratch / BUILD_LOG, store, recipe.name) as handler, Background() as background:
        loaded = {"model": first_look[0].model, "model_bytes": first_look.pop().data} if first_look else {}
        ctx = context(recipe, backend, scratch, log, model_record=model, background=background, progress=progress,
                      weight_copies=copies, **loaded)
        del loaded
        timings = [_run_stage(name, ctx, i + 1, total, progress) for i, name in enumerate(shared)]
        shared_log = handler.stream.tell()
        for target in todo:
            key = build_key(recipe, ctx.cleaned_sha256, backend, target)
            hit = None if force else reusable(store, recipe, "key", key, log)
            if hit:
                progress(f"[skip] {target.name:<6} unchanged cleaned model and settings (build key): "
                         f"reusing {hit.ref} {hit.tag}")
                done[target] = Outcome(target, hit, reused=True)
                continue
            target_log = handler.stream.tell()
            with store.staging(f"{recipe.name}-{target.sm}") as staged:
                tctx = ctx.for_target(target, staged)
                ctx.onnx_bytes = None  # the first target's parser takes the cleaned model's bytes; later ones the file
                stage_times = timings + [_run_stage(name, tctx, len(shared) + i + 1, total, progress)
                                         for i, name in enumerate(per_target)]
                _link_shared_files(tctx, staged)
                waited, checks = _settle(tctx, progress)
                handler.flush()
                handler.check()
                _copy_log(scratch / BUILD_LOG, staged / BUILD_LOG, shared_log, target_log)
                record = manifest(tctx, stage_times, started=time.time(), waited=waited, check=checks.get(CHECK),
                                  precision_check=checks.get(PRECISION_CHECK))
                record.update(annotate)
                done[target] = finish(target, staged, record, key)


def publisher(store: Store, recipe: Recipe, run: Run, force: bool, log: logging.Logger,
              progress: Progress) -> Finish:
    """Publish each staged target into `store` under `run`'s build number, unless an artifact with the same
    build key appeared meanwhile (re-checked under the lock: a parallel run may have published it)."""

    def finish(target: Target, staged: Path, record: dict, key: str) -> Outcome:
        artifact, reused = store.publish_unless(
            recipe.name, recipe.version, target.tag, staged, record, run,
            existing=lambda: None if force else reusable(store, recipe, "key", key, log))  # noqa: B023
        if reused:
            progress(f"[skip] {target.name:<6} built meanwhile by another run (build key): "
                     f"reusing {artifact.ref} {artifact.tag}")
        else:
            log.info("published %s", artifact.path)
        return Outcome(target, artifact, reused=reused)

    return finish


def context(recipe: Recipe, backend: Backend, scratch: Path, log: logging.Logger,
            environ: MutableMapping[str, str] = os.environ, **fields: Any) -> Context:
    """A build's context: TensorRT's log routed into `log`, graph-cleanup's check wired to pipeline.validate."""
    return Context(recipe, backend, scratch, log, make_logger(backend, log.getChild("trt")),
                   checker=functools.partial(_cleanup_check, backend, environ), precision_checker=precision_check,
                   environ=environ, **fields)


def _cleanup_check(backend: Backend, environ: MutableMapping[str, str], *args: Any) -> Callable[[], dict]:
    """graph-cleanup's check (pipeline.validate.cleanup), with Polygraphy pointed at the build's TensorRT."""
    use_polygraphy(backend, environ)
    return cleanup_check(*args)


def _settle(ctx: Context, progress: Progress) -> tuple[float, dict[str, Any]]:
    """Wait for the checks running beside the build (a failure is raised here) and say so in this target's log,
    from this thread; returns the seconds spent waiting (part of the build's duration) and each check's result."""
    start, label = time.perf_counter(), "waiting for the checks"
    if not ctx.background.done():
        progress.started(f"      {label} ...")
    results = ctx.background.wait()
    waited = round(time.perf_counter() - start, 3)
    if waited >= 0.05:
        progress(f"      {label:<24} {waited:7.2f}s")
    check = results.get(CHECK)
    if check and check["status"] == "skipped":
        ctx.log.info("graph-cleanup: check skipped: %s", check["reason"])
    elif check:
        ctx.log.info("graph-cleanup: cleaned graph matches the original on %d shape set(s) (%.2fs beside the build)",
                     len(check["results"]), check["seconds"])
    reduced = results.get(PRECISION_CHECK)
    if reduced:
        ctx.log.info("precision: %s graph within its limits on %d sample(s) (%.2fs beside the build)",
                     reduced["mode"], reduced["samples"], reduced["seconds"])
    return waited, results


class LogFile(logging.FileHandler):
    """A build's log file. A write error (a full disk) is kept, not printed as a logging traceback: `check` makes it
    the build's one-line StoreError."""

    error: OSError | None = None

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            self.error = self.error or error
        else:
            super().handleError(record)

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as error:
            self.error = self.error or error

    def close(self) -> None:
        try:
            super().close()
        except OSError as error:
            self.error = self.error or error

    def check(self) -> None:
        if self.error is not None:
            raise StoreError(f"cannot write {self.baseFilename}: {self.error.strerror}")


@contextlib.contextmanager
def _build_log(log: logging.Logger, path: Path, store: Store, name: str) -> Iterator[logging.FileHandler]:
    """Everything at INFO and above (TensorRT's messages included) also goes to `path` during the build.
    When the build fails, is interrupted or crashes, the log is kept in the store (a user error's hint names it;
    otherwise it is logged)."""
    handler = LogFile(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    level = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        yield handler
    except BaseException as error:
        handler.flush()
        with contextlib.suppress(OSError):  # keeping the log must not hide why the build stopped
            kept = store.keep_failure_log(name, path)
            if isinstance(error, PipelineError):
                error.hint = (f"{error.hint}; " if error.hint else "") + f"full log: {kept}"
            else:
                log.warning("the build log is kept in %s", kept)
        raise
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        handler.close()


def _copy_log(source: Path, dest: Path, shared_end: int, target_start: int) -> None:
    """The shared stages' part of the log, then this target's part only."""
    data = source.read_bytes()
    write_bytes(dest, data[:shared_end] + data[target_start:])


def _link_shared_files(ctx: Context, staged: Path) -> None:
    """The cleaned model, and the reduced-precision one TensorRT built from (with their external data), next to the
    engine: hard links when possible."""
    ctx.background.result(WRITE)  # the cleaned model's file, when graph-cleanup writes it beside the build
    models = [path for path in (ctx.cleaned_path, ctx.precision_path) if path is not None]
    for source in [file for path in models for file in cleaned_files(path)]:
        try:
            os.link(source, staged / source.name)
        except OSError:
            shutil.copyfile(source, staged / source.name)
