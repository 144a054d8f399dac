"""Can this backend on this machine build what the recipe asks? Checked before any expensive work."""

from __future__ import annotations

from pipeline.backend import Backend
from pipeline.errors import BackendError
from pipeline.gpu import Probe
from pipeline.recipe import Recipe
from pipeline.target import Target, resolve


def targets(recipe: Recipe, backend: Backend, probe: Probe, names: tuple[str, ...] = ()) -> tuple[list[Target], list[str]]:
    """Resolve the recipe's targets (or `names`, from --target) and the problems found doing so."""
    found: list[Target] = []
    problems = []
    for index, name in enumerate(names or recipe.targets):
        where = f"--target {name}" if names else f"{recipe.where(('targets', index))}: targets[{index}]"
        try:
            target = resolve(name, backend, probe)
        except BackendError as error:
            problems.append(f"{where}: {error}" + (f"; {error.hint}" if error.hint else ""))
            continue
        twin = next((t for t in found if t.tag == target.tag), None)
        if twin:
            problems.append(f"{where}: '{name}' is the same GPU tag as '{twin.name}' ({target.tag}); list it once")
        else:
            found.append(target)
    return found, problems


def problems(recipe: Recipe, backend: Backend, probe: Probe) -> list[str]:
    """Every option the chosen backend does not have, each with its recipe location."""
    out: list[str] = []
    label = backend.label()
    flags = recipe.spec("network-flag")
    if not flags.explicit_batch and (backend.is_rtx or backend.major >= 10):
        out.append(recipe.problem(recipe.stage_path("network-flag", "explicit_batch"),
                                  f"explicit_batch: false is not possible with {label}: explicit batch is its only "
                                  "mode; remove the key or set it to true"))
    if flags.strongly_typed and backend.member("NetworkDefinitionCreationFlag", "STRONGLY_TYPED") is None:
        out.append(recipe.problem(recipe.stage_path("network-flag", "strongly_typed"),
                                  f"{label} has no STRONGLY_TYPED network flag (it needs TensorRT >= 9); remove it"))
    for pool in recipe.spec("memory-pool").limits:
        if backend.member("MemoryPoolType", pool.upper()) is None:
            out.append(recipe.problem(recipe.stage_path("memory-pool", pool),
                                      f"{label} has no memory pool {pool.upper()}; it has "
                                      f"{', '.join(m.lower() for m in backend.member_names('MemoryPoolType'))}"))
    serialize = recipe.spec("serialize")
    for index, flag in enumerate(serialize.flags):
        if backend.member("BuilderFlag", flag.upper()) is None:
            out.append(recipe.problem(recipe.stage_path("serialize", "flags", index),
                                      f"{label} has no builder flag {flag.upper()}; it has "
                                      f"{', '.join(m.lower() for m in backend.member_names('BuilderFlag'))}"))
    if serialize.hardware_compatibility != "none" and backend.is_rtx:
        out.append(recipe.problem(recipe.stage_path("serialize", "hardware_compatibility"),
                                  "hardware_compatibility is a full-TensorRT option; with TensorRT-RTX choose the "
                                  "GPUs with targets: [...] instead"))
    out += [recipe.problem(recipe.stage_path("serialize", "plugins", index), f"plugin library not found: {plugin}")
            for index, plugin in enumerate(serialize.plugins) if not plugin.is_file()]
    if serialize.timing_cache and backend.is_rtx and probe.gpu is None:
        out.append(recipe.problem(recipe.stage_path("serialize", "timing_cache"),
                                  "a timing cache makes TensorRT-RTX query a GPU while building, which fails on this "
                                  "CPU-only machine (and it is deprecated in TensorRT-RTX); remove timing_cache"))
    return out
