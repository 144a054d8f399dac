"""Run a recipe's stages in order: shared stages once, per-target stages for each target; time and report."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, MutableMapping

from pipeline import heap
from pipeline import recipe as recipes
from pipeline.background import Background
from pipeline.build import capability
from pipeline.build.record import build_key, manifest, source_key
from pipeline.digest import canonical_json, json_sha256, plain
from pipeline.errors import PipelineError, RecipeError
from pipeline.files import write_bytes
from pipeline.recipe import Recipe
from pipeline.ref import version_dir
from pipeline.stages import REGISTRY
from pipeline.stages.context import Context
from pipeline.stages.graph_cleanup import CHECK, cleaned_files
from pipeline.stages.parse import check_pin, digests, preflight
from pipeline.store import Artifact, Run, Store
from pipeline.trt import backend as backends
from pipeline.trt.backend import Backend, make_logger
from pipeline.trt.gpu import Probe
from pipeline.trt.polygraphy import use_polygraphy
from pipeline.trt.target import Target
from pipeline.validate.cleanup import cleanup_check

BUILD_LOG = "build.log"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    backend: Backend
    targets: tuple[Target, ...]
    stages: tuple[str, ...]
    model_checked: bool  # the recipe has been checked against the model's declared inputs and outputs


def load_recipe(path: Path) -> tuple[Recipe, Backend]:
    """The recipe and its backend; a backend that does not import is a located recipe problem, with the
    install hint on the same line (`check` and nightly print problems only)."""
    recipe = recipes.load(path)
    try:
        return recipe, backends.load(recipe.backend)
    except PipelineError as error:
        hint = f"; {error.hint}" if error.hint else ""
        raise RecipeError([recipe.problem(("backend",), f"{error}{hint}")]) from None


PLANS = "plans"  # the store's memo of plans already checked


def _plan_key(sha256: str, path: Path, probe: Probe, target_names: tuple[str, ...]) -> str:
    """Everything a plan's checks depend on besides the backend: the recipe's bytes and place (model paths are
    relative to it), this tool's code and schema (by content: an editable install changes without a new version),
    the GPUs of this machine and the targets asked for."""
    return json_sha256({"recipe": sha256, "path": str(path.resolve()), "tool": _tool_sha256(),
                        "gpus": [[g.name, g.compute_capability] for g in probe.gpus], "targets": list(target_names)})


@functools.lru_cache(maxsize=1)
def _tool_sha256() -> str:
    """sha256 over the pipeline package's sources and schema (~40 small files, about a millisecond)."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted([*package.rglob("*.py"), package / "recipe.schema.json"]):
        digest.update(f"{path.relative_to(package)}\0".encode() + path.read_bytes() + b"\0")
    return digest.hexdigest()


def remember_plan(plan_: Plan, store: Store, probe: Probe, target_names: tuple[str, ...] = ()) -> None:
    """Remember that this recipe, as it is now, planned without a problem with this backend on this machine.
    Not when the backend's package metadata names another version than its module reports (a remembered plan
    knows the version from the metadata only)."""
    recipe, installed = plan_.recipe, _installed()
    if installed[plan_.backend.name][0] != plan_.backend.version:
        return
    store.remember(PLANS, _plan_key(recipe.sha256, recipe.path, probe, target_names),
                   {"backend": plan_.backend.name, "version": plan_.backend.version, "installed": installed,
                    "targets": [dataclasses.astuple(t) for t in plan_.targets]})


def _installed() -> dict[str, list[str | None]]:
    """Every backend: its package's installed version and the file its module would be imported from (found, not
    imported): another TensorRT on PYTHONPATH, or full TensorRT appearing for 'auto', changes it."""
    return {name: [backends.installed_version(name), backends.module_file(name)] for name in sorted(backends.MODULES)}


def remembered_plan(path: Path, store: Store, probe: Probe, target_names: tuple[str, ...] = ()) -> Plan | None:
    """The plan of a recipe this store planned before, byte for byte, with this tool, schema and machine and the
    same backend packages installed (package metadata): the recipe is loaded without the JSON Schema check and
    TensorRT is not imported until something is built. An unchanged rebuild then takes ~0.3 s instead of ~0.6 s.
    None when anything differs, or when the plan checked files besides the recipe (plugins, a timing cache)."""
    try:
        sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        known = store.memo(PLANS).get(_plan_key(sha256, path, probe, target_names))
        if not known or known["installed"] != _installed():  # 'auto' may pick another backend now
            return None
        recipe = recipes.load(path, schema_checked=True)
        targets = tuple(Target(*target) for target in known["targets"])
    except (OSError, PipelineError, KeyError, TypeError):  # changed meanwhile, or a damaged memo: plan afresh
        return None
    serialize = recipe.spec("serialize")
    if recipe.sha256 != sha256 or serialize.plugins or serialize.timing_cache:  # edited between the two reads
        return None
    return Plan(recipe, backends.deferred(known["backend"], known["version"]), targets, tuple(recipe.stages), False)


def plan(recipe: Recipe, backend: Backend, probe: Probe, target_names: tuple[str, ...] = (),
         check_model: bool = True) -> Plan:
    """Check everything that can be checked before building; raise every problem at once.
    `check_model=False` leaves the model checks (which read the model) to `build`, which runs them only when
    something is to be built: an unchanged rebuild then never parses the model."""
    targets, problems = capability.targets(recipe, backend, probe, target_names)
    problems += capability.problems(recipe, backend, probe) + (preflight(recipe) if check_model else [])
    if problems:
        raise RecipeError(problems)
    return Plan(recipe, backend, tuple(targets), tuple(recipe.stages), check_model)


def dry_run(plan_: Plan, store: Store, log: logging.Logger, force: bool = False) -> dict:
    """What `build` would do, as data (`build --dry-run --json`): the recipe, backend, stages with their settings,
    and per target the directory it would write, or the artifact it would reuse (unchanged source key)."""
    recipe = plan_.recipe
    model = model_record(plan_, store, log, remember=False)
    targets = []
    for target in plan_.targets:
        hit = None if force else source_hit(plan_, store, model, target, log)
        if hit:
            targets.append({"name": target.name, "tag": target.tag, "action": "reuse", "reuse": hit.ref,
                            "path": str(hit.path)})
            continue
        version = version_dir(recipe.version, store.next_build(recipe.name, recipe.version))  # one number per run
        targets.append({"name": target.name, "tag": target.tag, "action": "build",
                        "path": str(store.root / recipe.name / version / target.tag)})
    return {"recipe": {"name": recipe.name, "version": recipe.version, "path": str(recipe.path),
                       "sha256": recipe.sha256},
            "backend": plan_.backend.label(), "model": str(recipe.model_path),
            "stages": [{"name": stage, "settings": plain(recipe.spec(stage))} for stage in plan_.stages],
            "targets": targets}


def describe(plan_: Plan, store: Store, log: logging.Logger | None = None, force: bool = False) -> list[str]:
    """The --dry-run text: what would run, with which settings, and where it would go (or what it would reuse)."""
    recipe = plan_.recipe
    plan = dry_run(plan_, store, log or logging.getLogger("pipeline"), force)
    lines = [f"{recipe.name} {recipe.version} from {recipe.path} (sha256 {recipe.sha256[:12]})",
             f"  backend  {plan['backend']}",
             f"  model    {plan['model']}",
             f"  stages   {' -> '.join(plan_.stages)}"]
    for stage in plan["stages"]:
        lines.append(f"    {stage['name']:<14} {canonical_json(stage['settings'])}")
    for target in plan["targets"]:
        action = f"reuse {target['reuse']} ({target['path']})" if target["action"] == "reuse" else target["path"]
        lines.append(f"  target   {target['name']:<6} -> {action}")
    return lines


def _run_stage(name: str, ctx: Context, number: int, total: int, progress: Progress) -> dict:
    stage = REGISTRY[name]
    label = f"{name} {ctx.target.name}" if stage.per_target and ctx.target else name
    started = getattr(progress, "started", None)  # the CLI shows a status line while the stage runs
    if started:
        started(f"[{number}/{total}] {label} ...")
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


def _newest_first(store: Store, recipe: Recipe, log: logging.Logger,
                  pick: Callable[[Artifact, dict], object]) -> object:
    """The first non-None `pick(artifact, manifest)` over this recipe's artifacts of its version, newest first.
    An unreadable manifest (or a missing field `pick` reads) is skipped with a warning: it must not block every
    later build."""
    for artifact in reversed(store.artifacts(recipe.name)):
        if artifact.version != recipe.version:
            continue
        try:
            with artifact.reading():
                found = pick(artifact, artifact.manifest())
        except PipelineError as error:
            log.warning("ignoring %s for reuse: %s", artifact.path, error)
            continue
        if found is not None:
            return found
    return None


def _reusable(store: Store, recipe: Recipe, field: str, key: str, log: logging.Logger) -> Artifact | None:
    """The newest artifact of this recipe name and version whose manifest has build[field] == key."""
    return _newest_first(store, recipe, log, lambda artifact, m: artifact if m["build"].get(field) == key else None)


def _known_model(store: Store, recipe: Recipe, sha256: str, log: logging.Logger,
                 hasher: Callable[[Path], str]) -> dict | None:
    """The model record of an artifact of this version built from this very file (same path and sha256, and
    external-data files that still hash the same): the skip decision then needs no parse of the model."""

    def same_file(artifact: Artifact, manifest: dict) -> dict | None:
        known = manifest["model"]
        if (known.get("path"), known.get("sha256")) != (str(recipe.model_path), sha256) or not all(
                Path(data["path"]).is_file() and hasher(Path(data["path"])) == data["sha256"]
                for data in known["external_data"]):
            return None
        return {key: known[key] for key in ("path", "sha256", "external_data", "bytes")}

    return _newest_first(store, recipe, log, same_file)


def model_record(plan_: Plan, store: Store, log: logging.Logger, remember: bool = True) -> dict:
    """The model's hashes for the source key; from an earlier manifest when the file is unchanged (no parse).
    A pin is checked here, before any reuse: it is never skipped. `remember=False` (a dry run) writes nothing."""
    recipe = plan_.recipe
    if not recipe.model_path.is_file():
        raise RecipeError(preflight(recipe))
    hasher = functools.partial(store.file_sha256, remember=remember)
    sha = hasher(recipe.model_path)
    check_pin(recipe, sha)
    return _known_model(store, recipe, sha, log, hasher) or digests(recipe.model_path, sha, hasher)


def source_hit(plan_: Plan, store: Store, model: dict, target: Target, log: logging.Logger) -> Artifact | None:
    """The artifact `build` reuses for `target` before running any stage: same source key, same version."""
    return _reusable(store, plan_.recipe, "source_key", source_key(plan_.recipe, model, plan_.backend, target), log)


def build(plan_: Plan, store: Store, log: logging.Logger, progress: Progress = lambda line: None,
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
    recipe = plan_.recipe
    model = model or model_record(plan_, store, log)
    done: dict[Target, Outcome] = {}
    for target in plan_.targets:
        hit = None if force else source_hit(plan_, store, model, target, log)
        if hit:
            progress(f"[skip] {target.name:<6} unchanged recipe and model (source key): reusing {hit.ref} {hit.tag}")
            done[target] = Outcome(target, hit, reused=True)
    todo = [t for t in plan_.targets if t not in done]
    if todo and not plan_.model_checked and (problems := preflight(recipe, model["sha256"])):
        raise RecipeError(problems)
    if todo:
        finish = finish or publisher(store, recipe, run or Run(), force, log, progress)
        _build_targets(plan_, todo, model, store, log, progress, force, annotate or {}, done, finish)
    reused = sum(o.reused for o in done.values())
    if reused:
        progress(f"{reused} of {len(plan_.targets)} target(s) skipped (unchanged); use --force to rebuild")
    return [done[t] for t in plan_.targets]


def _build_targets(plan_: Plan, todo: list[Target], model: dict, store: Store, log: logging.Logger,
                   progress: Progress, force: bool, annotate: dict, done: dict, finish: Finish) -> None:
    """Run the shared stages once, then each target's stages into its own staged directory, and hand each
    finished directory with its manifest to `finish` (which publishes it, or ships it to whoever does)."""
    recipe, backend = plan_.recipe, plan_.backend
    shared = [s for s in plan_.stages if not REGISTRY[s].per_target]
    per_target = [s for s in plan_.stages if REGISTRY[s].per_target]
    total = len(plan_.stages)
    with store.staging(recipe.name) as scratch, _build_log(log, scratch / BUILD_LOG, store, recipe.name) as handler, \
            Background() as background:
        ctx = context(recipe, backend, scratch, log, model_record=model, background=background)
        timings = [_run_stage(name, ctx, i + 1, total, progress) for i, name in enumerate(shared)]
        shared_log = handler.stream.tell()
        for target in todo:
            key = build_key(recipe, ctx.cleaned_sha256, backend, target)
            hit = None if force else _reusable(store, recipe, "key", key, log)
            if hit:
                progress(f"[skip] {target.name:<6} unchanged cleaned model and settings (build key): "
                         f"reusing {hit.ref} {hit.tag}")
                done[target] = Outcome(target, hit, reused=True)
                continue
            target_log = handler.stream.tell()
            with store.staging(f"{recipe.name}-{target.sm}") as staged:
                tctx = ctx.for_target(target, staged)
                stage_times = timings + [_run_stage(name, tctx, len(shared) + i + 1, total, progress)
                                         for i, name in enumerate(per_target)]
                _link_shared_files(tctx, staged)
                waited, checks = _settle(tctx, progress)
                handler.flush()
                _copy_log(scratch / BUILD_LOG, staged / BUILD_LOG, shared_log, target_log)
                record = manifest(tctx, stage_times, started=time.time(), waited=waited, check=checks.get(CHECK))
                record.update(annotate)
                done[target] = finish(target, staged, record, key)


def publisher(store: Store, recipe: Recipe, run: Run, force: bool, log: logging.Logger,
              progress: Progress) -> Finish:
    """Publish each staged target into `store` under `run`'s build number, unless an artifact with the same
    build key appeared meanwhile (re-checked under the lock: a parallel run may have published it)."""

    def finish(target: Target, staged: Path, record: dict, key: str) -> Outcome:
        artifact, reused = store.publish_unless(
            recipe.name, recipe.version, target.tag, staged, record, run,
            existing=lambda: None if force else _reusable(store, recipe, "key", key, log))
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
                   checker=functools.partial(_cleanup_check, backend, environ), environ=environ, **fields)


def _cleanup_check(backend: Backend, environ: MutableMapping[str, str], *args: Any) -> Callable[[], dict]:
    """graph-cleanup's check (pipeline.validate.cleanup), with Polygraphy pointed at the build's TensorRT."""
    use_polygraphy(backend, environ)
    return cleanup_check(*args)


def _settle(ctx: Context, progress: Progress) -> tuple[float, dict[str, Any]]:
    """Wait for the checks running beside the build (a failure is raised here) and say so in this target's log,
    from this thread; returns the seconds spent waiting (part of the build's duration) and each check's result."""
    start, label = time.perf_counter(), "waiting for the cleanup check"
    started = getattr(progress, "started", None)
    if started and not ctx.background.done():
        started(f"      {label} ...")
    results = ctx.background.wait()
    waited = round(time.perf_counter() - start, 3)
    if waited >= 0.05:
        progress(f"      {label:<24} {waited:7.2f}s")
    check = results.get(CHECK)
    if check:
        ctx.log.info("graph-cleanup: cleaned graph matches the original on %d shape set(s) (%.2fs beside the build)",
                     len(check["results"]), check["seconds"])
    return waited, results


@contextlib.contextmanager
def _build_log(log: logging.Logger, path: Path, store: Store, name: str) -> Iterator[logging.FileHandler]:
    """Everything at INFO and above (TensorRT's messages included) also goes to `path` during the build.
    When the build fails, is interrupted or crashes, the log is kept in the store (a user error's hint names it;
    otherwise it is logged)."""
    handler = logging.FileHandler(path)
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
    """The cleaned model (and its external data) next to the engine: hard links when possible."""
    if ctx.cleaned_path is None:
        return
    for source in cleaned_files(ctx.cleaned_path):
        try:
            os.link(source, staged / source.name)
        except OSError:
            shutil.copyfile(source, staged / source.name)
