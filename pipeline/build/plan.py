"""Plans: a recipe checked against its backend, this machine and its model before anything is built, every
problem at once; the store's memo of plans already checked; what a dry run would do."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline import recipe as recipes
from pipeline.build import capability, support
from pipeline.build.cache import model_record, source_hit
from pipeline.digest import canonical_json, json_sha256, plain
from pipeline.errors import PipelineError, RecipeError
from pipeline.recipe import Recipe
from pipeline.stages.parse import preflight
from pipeline.stages.precision import target_problems
from pipeline.store import Store
from pipeline.trt import backend as backends
from pipeline.trt.backend import Backend
from pipeline.trt.gpu import Probe
from pipeline.trt.target import Target


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    backend: Backend
    targets: tuple[Target, ...]
    stages: tuple[str, ...]
    model_checked: bool  # the recipe has been checked against the model's declared inputs and outputs


def load_recipe(path: Path, probe: Probe | None = None, target_names: tuple[str, ...] = (),
                check_model: bool = True) -> tuple[Recipe, Backend]:
    """The recipe and its backend; a backend that does not import is a located recipe problem, with the
    install hint on the same line (`check` and nightly print problems only). With `probe`, a recipe with problems
    is checked on as make_plan would wherever its problems leave the parts intact, so that one run reports every
    problem: the targets against the backend, and the model (that it is a readable model; its inputs and outputs
    against the stages that name them when those are intact)."""
    try:
        recipe = recipes.load(path)
    except RecipeError as error:
        if probe is None or error.recipe is None:
            raise
        raise RecipeError(error.problems + _later_problems(error.recipe, probe, target_names, check_model)) from None
    return recipe, _backend(recipe)


def _backend(recipe: Recipe) -> Backend:
    try:
        return backends.load(recipe.backend)
    except PipelineError as error:
        hint = f"; {error.hint}" if error.hint else ""
        raise RecipeError([recipe.problem(("backend",), f"{error}{hint}")]) from None


def _later_problems(recipe: Recipe, probe: Probe, target_names: tuple[str, ...], check_model: bool) -> list[str]:
    """make_plan's problems for a recipe the loader found problems in (`recipe.damaged` names the parts left at
    placeholders): each check that needs only intact parts."""
    problems: list[str] = []
    if "backend" not in recipe.damaged:
        try:
            backend = _backend(recipe)
        except RecipeError as error:
            problems += error.problems
        else:
            targets, problems = capability.targets(recipe, backend, probe, target_names)
            if "stages" not in recipe.damaged:
                problems += capability.problems(recipe, backend, probe) + target_problems(recipe, backend, targets)
    if check_model and "model" not in recipe.damaged:  # the file always; its I/O when what names it is intact
        problems += preflight(recipe, io=not recipe.damaged & _NAMES_IO)
    return problems


# Damage that leaves the recipe's view of the model's inputs and outputs unknown (a damaged validate: block is
# left out, so its outputs are simply not checked)
_NAMES_IO = frozenset({"stage-list", "semantic", "stage:graph-cleanup", "stage:serialize", "stage:precision"})


def make_plan(recipe: Recipe, backend: Backend, probe: Probe, target_names: tuple[str, ...] = (),
              check_model: bool = True, parser_support: bool = False) -> Plan:
    """Check everything that can be checked before building; raise every problem at once.
    `check_model=False` leaves the model checks (which read the model) to `build`, which runs them only when
    something is to be built: an unchanged rebuild then never parses the model. `parser_support`: also ask
    TensorRT's parser which nodes it cannot take (`check`; a build's parse reports the same, without the cost of
    a second parser holding the weights)."""
    targets, problems = capability.targets(recipe, backend, probe, target_names)
    problems += capability.problems(recipe, backend, probe) + target_problems(recipe, backend, targets) + \
        (preflight(recipe) if check_model else [])
    if parser_support and check_model and not problems:  # needs a readable model and an importable backend
        problems += support.problems(recipe, backend, logging.getLogger("pipeline"))
    if problems:
        raise RecipeError(problems)
    return Plan(recipe, backend, tuple(targets), tuple(recipe.stages), check_model)


PLANS = "plans"  # the store's memo of plans already checked


def _plankey(sha256: str, path: Path, probe: Probe, target_names: tuple[str, ...]) -> str:
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


def remember_plan(plan: Plan, store: Store, probe: Probe, target_names: tuple[str, ...] = ()) -> None:
    """Remember that this recipe, as it is now, planned without a problem with this backend on this machine.
    Not when the backend's package metadata names another version than its module reports (a remembered plan
    knows the version from the metadata only)."""
    recipe, installed = plan.recipe, _installed()
    if installed[plan.backend.name][0] != plan.backend.version:
        return
    store.remember(PLANS, _plankey(recipe.sha256, recipe.path, probe, target_names),
                   {"backend": plan.backend.name, "version": plan.backend.version, "installed": installed,
                    "targets": [dataclasses.astuple(t) for t in plan.targets]})


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
        known = store.memo(PLANS).get(_plankey(sha256, path, probe, target_names))
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


def dry_run(plan: Plan, store: Store, log: logging.Logger, force: bool = False) -> dict:
    """What `build` would do, as data (`build --dry-run --json`): the recipe, backend, stages with their settings,
    and per target the directory it would write, or the artifact it would reuse (unchanged source key)."""
    recipe = plan.recipe
    model = model_record(plan.recipe, store, log, remember=False)
    targets = []
    for target in plan.targets:
        hit = None if force else source_hit(plan.recipe, plan.backend, store, model, target, log)
        if hit:
            targets.append({"name": target.name, "tag": target.tag, "action": "reuse", "reuse": hit.ref,
                            "path": str(hit.path)})
            continue
        build = store.next_build(recipe.name, recipe.version)  # one number per run
        targets.append({"name": target.name, "tag": target.tag, "action": "build",
                        "path": str(store.artifact_dir(recipe.name, recipe.version, build, target.tag))})
    return {"recipe": {"name": recipe.name, "version": recipe.version, "path": str(recipe.path),
                       "sha256": recipe.sha256},
            "backend": plan.backend.label(), "model": str(recipe.model_path),
            "stages": [{"name": stage, "settings": plain(recipe.spec(stage))} for stage in plan.stages],
            "targets": targets}


def dry_run_lines(plan: Plan, store: Store, log: logging.Logger | None = None, force: bool = False) -> list[str]:
    """The --dry-run text: what would run, with which settings, and where it would go (or what it would reuse)."""
    recipe = plan.recipe
    planned = dry_run(plan, store, log or logging.getLogger("pipeline"), force)
    lines = [f"{recipe.name} {recipe.version} from {recipe.path} (sha256 {recipe.sha256[:12]})",
             f"  backend  {planned['backend']}",
             f"  model    {planned['model']}",
             f"  stages   {' -> '.join(plan.stages)}"]
    for stage in planned["stages"]:
        lines.append(f"    {stage['name']:<14} {canonical_json(stage['settings'])}")
    for target in planned["targets"]:
        action = f"reuse {target['reuse']} ({target['path']})" if target["action"] == "reuse" else target["path"]
        lines.append(f"  target   {target['name']:<6} -> {action}")
    return lines
