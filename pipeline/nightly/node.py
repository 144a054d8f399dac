"""What runs on a build farm's node, as Ray tasks: build a recipe's targets, validate an engine.

A node never writes the driver's store. Everything arrives as values: the recipe's bytes, the model as a
`parcel.Parcel`, the driver's model record (hashes and the driver's paths, which the manifest
records), the files the recipe names besides its model (plugin libraries, a timing cache) as `parcel.File`s,
an engine's files for a validation. A timing cache the build added to goes back to the driver, which writes it.
A node that proves it sees the driver's files (`handover`: the same machine, or a shared filesystem) uses
the model where it is, builds in a box of the driver's handover directory and returns names and hashes
instead of the files; otherwise the files travel through the object store.
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
from pipeline.nightly import handover as handovers
from pipeline.nightly.handover import OBJECT_STORE, PATH, Handover, Stamp
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
    handover: Handover | None = None  # the driver's handover directory (None: everything by object store)
    model_stamps: tuple[Stamp, ...] = ()  # the model's files as the driver sees them (used in place if they match)


@dataclass(frozen=True)
class ValidationJob:
    manifest: dict  # the published artifact's manifest
    model: Parcel  # the original model, which the engine is compared with
    handover: Handover | None = None
    model_stamps: tuple[Stamp, ...] = ()
    engine_stamp: Stamp | None = None  # the published engine, used in place where this node sees it


def scratch() -> Path:
    return Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "trt-pipeline-node")


def build(job: BuildJob) -> tuple:
    """(meta, shared files, one dict of files per target). meta: the node's id, where the model came from
    (`model`: path, cache or object-store), how the built files go back (`transport`: `path`, the files then in
    `box` and each built result naming them in `handed`, the returned dicts empty; or `object-store`, the files
    in the returned dicts), the wall time, the log's text and one result per target: `built` with its manifest
    and file names, or `failed` with the error. Shared files (the cleaned model) travel once for all targets."""
    import ray

    started, task = time.perf_counter(), job.task
    shipped: dict[str, tuple] = {}
    came, cache = OBJECT_STORE, None
    seen = handovers.visible(job.handover)
    box = handovers.box(job.handover, f"{os.getpid()}-") if seen and job.handover else None
    try:
        with _workspace() as work:
            log = file_logger(f"pipeline.nightly.node.{os.getpid()}", work / "task.log")
            try:
                log.info("driver's files %s", f"seen here: results handed over in {box}" if box else
                         "not seen here (or not writable): results go through the object store")
                model, came = _model(job.model, job.model_stamps, seen, log)
                shipped, results = _build(job, model, work, box, log)
                cache = _grown_cache(job, work)
            except Exception as error:  # noqa: BLE001 - e.g. a model that arrived damaged: every pair fails
                results = [_failed(job, target, error, log) for target in task.targets]
            finally:
                _close(log)
            text = (work / "task.log").read_text(errors="replace")
    except BaseException:  # cancelled: nothing of this task is left in the driver's handover directory
        if box is not None:
            shutil.rmtree(box, ignore_errors=True)
        raise
    meta = {"node": ray.get_runtime_context().get_node_id(), "model": came, "log": text,
            "transport": PATH if box else OBJECT_STORE, "box": str(box) if box else None,
            "wall_s": round(time.perf_counter() - started, 3), "results": results, "timing_cache": cache}
    if box is not None:
        return (meta, {}, *[{} for _ in task.targets])
    shared = next((files for _, _, files, _ in shipped.values() if files), {})
    return (meta, shared, *[shipped[target][1] if target in shipped else {} for target in task.targets])


def _model(parcel: Parcel, stamps: tuple[Stamp, ...], seen: bool, log: logging.Logger) -> tuple[Path, str]:
    """The model on this node: the driver's own file where this node sees it unchanged (`path`), else from its
    cache (`cache`), or fetched from the object store into it (`object-store`)."""
    import ray

    started = time.perf_counter()
    if handovers.in_place(stamps, seen):
        log.info("model %s (%d bytes) used in place: the driver's %s, checked in %.2fs", parcel.name, parcel.size,
                 stamps[0].path, time.perf_counter() - started)
        return Path(stamps[0].path), PATH
    model, fetched = materialize(parcel, scratch() / "models", ray.get)
    log.info("model %s (%d bytes) %s on this node", parcel.name, parcel.size,
             f"fetched in {time.perf_counter() - started:.2f}s" if fetched else "found in the cache")
    return model, OBJECT_STORE if fetched else "cache"


def _build(job: BuildJob, model: Path, work: Path, box: Path | None,
           log: logging.Logger) -> tuple[dict, list[dict]]:
    """Build the targets together; if that fails, each alone, so that a failure is pinned on its target. With a
    `box` (in the driver's handover directory) the build happens there and the files are handed over in it."""
    import ray

    task = job.task
    recipe_file = work / Path(job.recipe_path).name
    recipe_file.write_bytes(job.recipe_text)
    recipe, backend = plans.load_recipe(recipe_file)
    recipe = replace(with_user_files(recipe, work / USER_FILES, job.files, ray.get),
                     path=Path(job.recipe_path), model_path=model)
    probe = gpu.probe()  # this node's GPU: what 'local' means here, and what TensorRT may assume
    shipped: dict[str, tuple] = {}
    stores = box or work

    def attempt(targets: tuple[str, ...], store: Store) -> None:
        plan = plans.make_plan(recipe, backend, probe, targets, check_model=False)  # the build checks the model
        names = {t.tag: name for t, name in zip(plan.targets, targets)}
        runner.build(plan, store, log, log.info, force=True, model=job.model_record,
                     finish=lambda *staged: _ship(names, shipped, box, *staged))

    try:
        attempt(task.targets, Store(stores / "store"))
        return shipped, [_built(task, target, shipped[target]) for target in task.targets]
    except Exception as error:  # noqa: BLE001 - pinned on its target below
        if len(task.targets) == 1:
            return shipped, [_failed(job, task.targets[0], error, log)]
        log.info("building %s together failed; building each target alone", ", ".join(task.targets))
    shipped.clear()
    results = []
    for index, target in enumerate(task.targets):
        try:
            attempt((target,), Store(stores / f"store-{index}"))
            results.append(_built(task, target, shipped[target]))
        except Exception as error:  # noqa: BLE001 - a failure or a bug in one pair must not stop the others
            results.append(_failed(job, target, error, log))
    return shipped, results


SHARED = "shared"  # in a box: the files every target of the task shares (the cleaned model), handed over once


def _ship(names: dict[str, str], shipped: dict, box: Path | None, target: Any, staged: Path, record: dict,
          key: str) -> runner.Outcome:
    """runner.Finish on a node: keep the staged directory's files for the driver, publish nothing. Without a box,
    as arrays mapped from disk (the object store takes them); with one, moved into it (a box per target, the shared
    files once), named with their sizes and sha256s."""
    cleaned = record["model"].get("cleaned_file")
    shared = [p.name for p in cleaned_files(staged / cleaned)] if cleaned else []
    own = sorted(p.name for p in staged.iterdir() if p.is_file() and p.name not in shared)
    name = names[target.tag]
    if box is None:
        shipped[name] = (record, files_of(staged, own), files_of(staged, shared), False)
    else:
        known = {record["engine"]["file"]: record["engine"]["sha256"],
                 **({cleaned: record["model"]["cleaned_sha256"]} if cleaned else {})}
        handed = handovers.hand_over(staged, own, box / name, known)
        common = box / SHARED
        earlier = next((entry[2] for entry in shipped.values() if entry[3] and entry[2]), None)
        if common.is_dir():  # an earlier target's: the same cleaned model (its hard links)
            together = earlier or {n: [(common / n).stat().st_size, known.get(n) or file_sha256(common / n)]
                                   for n in shared}
        else:
            together = handovers.hand_over(staged, shared, common, known)
        shipped[name] = (record, handed, together, True)
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
    """A built result; `handed`: where the files are in the box, with their sizes and sha256s (by path only)."""
    record, own, shared, by_path = shipped
    handed = {"handed": {"own": own, "shared": shared}} if by_path else {}
    return {"recipe": task.recipe, "target": target, "status": "built", "manifest": record,
            "files": list(own), "shared": list(shared), **handed}


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
    not this one), the `skipped` report costs neither the engine's nor the model's transfer. `engine` is empty when
    the engine was handed over by path: this node then reads the published engine where it is, or, when it cannot
    see it, answers {node, log, resend: True} and the driver sends it again with the engine in the object store."""
    import ray

    result: dict[str, Any] = {}
    node = ray.get_runtime_context().get_node_id()
    with _workspace() as work:
        log = file_logger(f"pipeline.nightly.node.{os.getpid()}", work / "validate.log")
        try:
            probe = gpu.probe()
            manifest = Manifest.from_dict(job.manifest, Path(MANIFEST))
            runnable = _runnable(manifest, probe)
            seen = handovers.visible(job.handover) if runnable else False
            files = _engine(job, engine, seen, log) if runnable else {}
            if files is None:
                return {"node": node, "log": "", "resend": True}
            model = _model(job.model, job.model_stamps, seen, log)[0] if runnable else None
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
    return {**result, "node": node}


def _engine(job: ValidationJob, engine: list, seen: bool, log: logging.Logger) -> dict[str, Any] | None:
    """The engine's files: from the object store, or the published file where this node sees it unchanged;
    None when neither (the driver then sends it through the object store)."""
    import ray

    if engine:
        return ray.get(engine[0])
    if job.engine_stamp is None or not handovers.in_place((job.engine_stamp,), seen):
        return None
    published = Path(job.engine_stamp.path)
    log.info("engine %s used in place", published)
    return files_of(published.parent, [published.name])


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


