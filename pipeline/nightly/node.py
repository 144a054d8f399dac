"""What runs on a build farm's node, as Ray tasks: build a recipe's targets, validate an engine.

A node has no access to the driver's store or files. Everything arrives as values: the recipe's bytes, the
model as a `parcel.Parcel`, the driver's model record (hashes and the driver's paths, which the manifest
records), the files the recipe names besides its model (plugin libraries, a timing cache) as `parcel.File`s,
an engine's files for a validation. A timing cache the build added to goes back to the driver, which writes it.
The work happens in a private directory of the node's scratch space (TRT_PIPELINE_SCRATCH, default
TMPDIR/trt-pipeline-node), removed when the task ends; a directory left by a process that was killed is
removed by the next task on that node. Nothing here raises for a user error or a bug: both come back as
`failed` records, as with the local executor's `task.build_task`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.build import plan as plans
from pipeline.build import runner
from pipeline.digest import file_sha256
from pipeline.errors import CannotRunHere, PipelineError
from pipeline.files import write_json
from pipeline.manifest import Manifest
from pipeline.nightly.parcel import File, Parcel, fetch, files_of, materialize, sweep, write_files
from pipeline.nightly.task import Task, failure, file_logger
from pipeline.recipe import Recipe
from pipeline.stages.graph_cleanup import cleaned_files
from pipeline.store import MANIFEST, Artifact, Store, alive
from pipeline.trt import gpu, runtime
from pipeline.validate import artifact as validation

SCRATCH_ENV = "TRT_PIPELINE_SCRATCH"
CACHE_DAYS = 3  # cached models unused this long are removed


@dataclass(frozen=True)
class BuildJob:
    task: Task  # the driver's task: names, targets, force, and where the driver keeps the log
    recipe_path: str  # the recipe's absolute path on the driver (what the manifest records)
    recipe_text: bytes
    model: Parcel
    model_record: dict  # parse.digests on the driver: the model's hashes, with the driver's paths
    files: tuple[File, ...] = ()  # user_files(recipe): plugin libraries and the timing cache, as the driver has them


@dataclass(frozen=True)
class ValidationJob:
    manifest: dict  # the published artifact's manifest
    model: Parcel  # the original model, which the engine is compared with


def scratch() -> Path:
    return Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "trt-pipeline-node")


def build(job: BuildJob) -> tuple:
    """(meta, shared files, one dict of files per target). meta: the node's id, whether it fetched the model,
    the wall time, the log's text and one result per target: `built` with its manifest and file names, or
    `failed` with the error. Shared files (the cleaned model) travel once for all of the task's targets."""
    import ray

    started, task = time.perf_counter(), job.task
    shipped: dict[str, tuple] = {}
    fetched, cache = False, None
    with _workspace() as work:
        log = file_logger(f"pipeline.nightly.node.{os.getpid()}", work / "task.log")
        try:
            model, fetched = _model(job.model, log)
            shipped, results = _build(job, model, work, log)
            cache = _grown_cache(job, work)
        except Exception as error:  # noqa: BLE001 - e.g. a model that arrived damaged: every pair fails
            results = [_failed(job, target, error, log) for target in task.targets]
        finally:
            _close(log)
        text = (work / "task.log").read_text(errors="replace")
    meta = {"node": ray.get_runtime_context().get_node_id(), "fetched": fetched, "log": text,
            "wall_s": round(time.perf_counter() - started, 3), "results": results, "timing_cache": cache}
    shared = next((files for _, _, files in shipped.values() if files), {})
    return (meta, shared, *[shipped[target][1] if target in shipped else {} for target in task.targets])


def _model(parcel: Parcel, log: logging.Logger) -> tuple[Path, bool]:
    """The model on this node: from its cache, or fetched from the object store into it."""
    import ray

    started = time.perf_counter()
    model, fetched = materialize(parcel, scratch() / "models", ray.get)
    log.info("model %s (%d bytes) %s on this node", parcel.name, parcel.size,
             f"fetched in {time.perf_counter() - started:.2f}s" if fetched else "found in the cache")
    return model, fetched


def _build(job: BuildJob, model: Path, work: Path, log: logging.Logger) -> tuple[dict, list[dict]]:
    """Build the targets together; if that fails, each alone, so that a failure is pinned on its target."""
    import ray

    task = job.task
    recipe_file = work / Path(job.recipe_path).name
    recipe_file.write_bytes(job.recipe_text)
    recipe, backend = plans.load_recipe(recipe_file)
    recipe = replace(with_user_files(recipe, work / USER_FILES, job.files, ray.get),
                     path=Path(job.recipe_path), model_path=model)
    probe = gpu.probe()  # this node's GPU: what 'local' means here, and what TensorRT may assume
    shipped: dict[str, tuple] = {}

    def attempt(targets: tuple[str, ...], store: Store) -> None:
        plan = plans.make_plan(recipe, backend, probe, targets, check_model=False)  # the build checks the model
        names = {t.tag: name for t, name in zip(plan.targets, targets)}
        runner.build(plan, store, log, log.info, force=True, model=job.model_record,
                     finish=lambda *staged: _ship(names, shipped, *staged))

    try:
        attempt(task.targets, Store(work / "store"))
        return shipped, [_built(task, target, shipped[target]) for target in task.targets]
    except Exception as error:  # noqa: BLE001 - pinned on its target below
        if len(task.targets) == 1:
            return shipped, [_failed(job, task.targets[0], error, log)]
        log.info("building %s together failed; building each target alone", ", ".join(task.targets))
    shipped.clear()
    results = []
    for index, target in enumerate(task.targets):
        try:
            attempt((target,), Store(work / f"store-{index}"))
            results.append(_built(task, target, shipped[target]))
        except Exception as error:  # noqa: BLE001 - a failure or a bug in one pair must not stop the others
            results.append(_failed(job, target, error, log))
    return shipped, results


def _ship(names: dict[str, str], shipped: dict, target: Any, staged: Path, record: dict, key: str) -> runner.Outcome:
    """runner.Finish on a node: keep the staged directory's files (mapped) for the driver, publish nothing."""
    cleaned = record["model"].get("cleaned_file")
    shared = [p.name for p in cleaned_files(staged / cleaned)] if cleaned else []
    own = sorted(p.name for p in staged.iterdir() if p.is_file() and p.name not in shared)
    shipped[names[target.tag]] = (record, files_of(staged, own), files_of(staged, shared))
    return runner.Outcome(target, Artifact(staged, record["recipe"]["name"], record["recipe"]["version"], 0,
                                           target.tag), reused=False)


USER_FILES = "files"  # in a task's directory: the recipe's plugin libraries and timing cache, as shipped


def user_files(recipe: Recipe) -> dict[str, Path]:
    """The files a recipe names besides its model, by the name they travel under: 'plugins/<i>/<file>' and
    'timing_cache/<file>' (a timing cache that does not exist yet travels as nothing; the build starts it)."""
    serialize = recipe.spec("serialize")
    found = {f"plugins/{index}/{path.name}": path for index, path in enumerate(serialize.plugins)}
    cache = serialize.timing_cache
    if cache is not None and cache.path.is_file():
        found[f"timing_cache/{cache.path.name}"] = cache.path
    return found


def with_user_files(recipe: Recipe, folder: Path, files: tuple[File, ...], get: Any) -> Recipe:
    """The recipe with its plugin libraries and timing cache fetched into `folder` (each checked by sha256) and
    its serialize spec pointing at them there."""
    serialize = recipe.spec("serialize")
    if not serialize.plugins and serialize.timing_cache is None:
        return recipe
    for item in files:
        fetch(item, folder / item.name, get)
    plugins = tuple(folder / "plugins" / str(index) / path.name for index, path in enumerate(serialize.plugins))
    cache = serialize.timing_cache
    if cache is not None:
        (folder / "timing_cache").mkdir(parents=True, exist_ok=True)
        cache = replace(cache, path=folder / "timing_cache" / cache.path.name)
    spec = replace(serialize, plugins=plugins, timing_cache=cache)
    return replace(recipe, stages={**recipe.stages, "serialize": spec})


def _grown_cache(job: BuildJob, work: Path) -> bytes | None:
    """The timing cache's bytes when the build added to it (the driver writes them back), else None."""
    found = [path for path in (work / USER_FILES / "timing_cache").glob("*") if path.is_file()]
    if not found:
        return None
    sent = next((item.sha256 for item in job.files if item.name.startswith("timing_cache/")), None)
    return None if file_sha256(found[0]) == sent else found[0].read_bytes()


def _built(task: Task, target: str, shipped: tuple) -> dict:
    record, own, shared = shipped
    return {"recipe": task.recipe, "target": target, "status": "built", "manifest": record,
            "files": list(own), "shared": list(shared)}


def _failed(job: BuildJob, target: str, error: Exception, log: logging.Logger) -> dict:
    """A failed record; its hint names the driver's copy of this task's log, not this node's scratch space."""
    record = failure(job.task, target, error, log)
    if record.get("hint"):
        record["hint"] = re.sub(r"full log: \S+", f"full log: {job.task.log}", record["hint"])
    return record


def validate(job: ValidationJob, engine: list) -> dict:
    """Validate one engine on this node: {node, log, report} or {node, log, error}; the report is the one
    pipeline.validate.artifact would record in a store. `engine`: [the build's return holding the engine's files],
    nested so that Ray fetches nothing before this node knows it can run the engine: where it cannot (no GPU, or
    not this one), the `skipped` report costs neither the engine's nor the model's transfer."""
    import ray

    result: dict[str, Any] = {}
    with _workspace() as work:
        log = file_logger(f"pipeline.nightly.node.{os.getpid()}", work / "validate.log")
        try:
            probe = gpu.probe()
            manifest = Manifest.from_dict(job.manifest, Path(MANIFEST))
            runnable = _runnable(manifest, probe)
            files = ray.get(engine[0]) if runnable else {}
            model = _model(job.model, log)[0] if runnable else None
            store, artifact = _artifact_copy(job.manifest, files, work / "store")
            spec = validation.settings(manifest, log)
            result["report"] = validation.validate_artifact(store, artifact, spec, probe, os.environ, log,
                                                            model=model)
        except PipelineError as error:
            log.error("validation could not run: %s", error)
            result["error"] = str(error)
        except Exception as error:  # noqa: BLE001 - reported by the driver, not raised through Ray
            log.error("validation crashed (this is a bug):\n%s", "".join(traceback.format_exception(error)))
            result["error"] = f"internal error (this is a bug): {type(error).__name__}: {error}"
        finally:
            _close(log)
        result["log"] = (work / "validate.log").read_text(errors="replace")
    return {**result, "node": ray.get_runtime_context().get_node_id()}


def _runnable(manifest: Manifest, probe: gpu.Probe) -> bool:
    try:
        runtime.runnable_gpu(manifest, probe)
    except CannotRunHere:
        return False  # validate_artifact says why, in the skipped report
    return True


def _artifact_copy(manifest: dict, files: dict[str, Any], root: Path) -> tuple[Store, Artifact]:
    """The artifact laid out in a private store, as the driver's store holds it (engine and manifest)."""
    recipe, build, tag = manifest["recipe"], manifest["build"]["number"], manifest["target"]["tag"]
    store = Store(root)
    folder = store.artifact_dir(recipe["name"], recipe["version"], build, tag)
    folder.mkdir(parents=True)
    write_files(files, folder)
    write_json(folder / MANIFEST, manifest)
    return store, Artifact(folder, recipe["name"], recipe["version"], build, tag)


@contextlib.contextmanager
def _workspace() -> Iterator[Path]:
    """A private directory for one task, removed when it ends (Ray's cancel unwinds it like Ctrl-C)."""
    root = scratch() / "jobs"
    root.mkdir(parents=True, exist_ok=True)
    _remove_orphans(root)
    sweep(scratch() / "models", CACHE_DAYS * 86400)
    path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _remove_orphans(root: Path) -> None:
    """Directories of tasks whose process is gone (killed, or force-cancelled)."""
    for path in root.iterdir():
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _close(log: logging.Logger) -> None:
    for handler in log.handlers[:]:
        log.removeHandler(handler)
        handler.close()


