"""Can this backend on this machine build what the recipe asks? Checked before any expensive work."""

from __future__ import annotations

from pipeline.errors import BackendError
from pipeline.recipe import Recipe
from pipeline.stages.precision import flag_problem
from pipeline.trt.backend import Backend
from pipeline.trt.gpu import Probe
from pipeline.trt.target import Target, resolve

# Builder flags that pass every check but make a TensorRT-RTX 1.x build fail on a CPU-only machine (no GPU, no
# driver): measured with tensorrt-rtx 1.7.1 on the tiny model, one flag per build. Every other BuilderFlag builds.
_MYELIN = "the build fails with MyelinCheckException: CHECK(status == CUDA_SUCCESS)"
RTX_FLAGS_NEEDING_A_GPU = {
    "refit": _MYELIN,
    "refit_identical": _MYELIN,
    "strip_plan": _MYELIN,
    "version_compatible": "the build fails loading libnvinfer_lean.so.1",
}

def targets(recipe: Recipe, backend: Backend, probe: Probe, names: tuple[str, ...] = ()) -> tuple[list[Target], list[str]]:
    """Resolve the recipe's targets (or `names`, from --target) and the problems found doing so."""
    found, problems, _ = _resolve(recipe, backend, probe, names)
    return found, problems


def not_buildable_here(recipe: Recipe, backend: Backend, probe: Probe, names: tuple[str, ...] = ()) -> list[str]:
    """The target problems that are this machine's lack of a GPU, not the recipe's fault: 'local', and every
    full-TensorRT target, need a GPU to build on. `build` exits 2 (cannot run here) when these are all it has."""
    return _resolve(recipe, backend, probe, names)[2]


def _resolve(recipe: Recipe, backend: Backend, probe: Probe,
             names: tuple[str, ...]) -> tuple[list[Target], list[str], list[str]]:
    found: list[Target] = []
    problems, no_gpu = [], []
    for index, name in enumerate(names or recipe.targets):
        where = _where(recipe, name, index, names)
        try:
            target = resolve(name, backend, probe)
        except BackendError as error:
            problems.append(f"{where}: {error}" + (f"; {error.hint}" if error.hint else ""))
            if probe.gpu is None and (name == "local" or not backend.is_rtx):
                no_gpu.append(problems[-1])
            continue
        twin = next((t for t in found if t.tag == target.tag), None)
        if twin:
            problems.append(f"{where}: '{name}' is the same GPU tag as '{twin.name}' ({target.tag}); list it once")
        else:
            found.append(target)
    return found, problems, no_gpu


def _where(recipe: Recipe, name: str, index: int, names: tuple[str, ...]) -> str:
    """A target's location: its recipe line when the recipe lists it (callers such as nightly pass the recipe's
    own targets one at a time), else the command line."""
    if names and name not in recipe.targets:
        return f"--target {name}"
    index = recipe.target_index(recipe.targets.index(name) if names else index)
    return f"{recipe.where(('targets', index))}: targets[{index}]"


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
            out.append(recipe.problem(recipe.stage_path("serialize", "flags", index), flag_problem(backend, flag) or
                                      f"{label} has no builder flag {flag.upper()}; it has "
                                      f"{', '.join(m.lower() for m in backend.member_names('BuilderFlag'))}"))
    if backend.is_rtx and backend.major == 1 and probe.gpu is None:
        for index, flag in enumerate(serialize.flags):
            if flag.lower() in RTX_FLAGS_NEEDING_A_GPU:
                out.append(recipe.problem(recipe.stage_path("serialize", "flags", index),
                                          f"{flag.lower()} needs a GPU at build time with TensorRT-RTX 1.x (measured: "
                                          f"{RTX_FLAGS_NEEDING_A_GPU[flag.lower()]} on a CPU-only machine); remove it "
                                          "here, or build on a machine with a GPU"))
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
