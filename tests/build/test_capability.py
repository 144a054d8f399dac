"""capability: options the chosen backend (or this machine) does not have, each with its recipe location."""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path

import pytest
import tensorrt_rtx

from pipeline import recipe as recipes
from pipeline.build import capability
from pipeline.trt.backend import Backend
from pipeline.trt.gpu import Gpu, Probe

NO_GPU = Probe(False, (), "no CUDA driver on this machine (libcuda.so.1 cannot be loaded)")
RTX4090 = Probe(True, (Gpu("NVIDIA GeForce RTX 4090", "8.9"),), None)
LABEL = f"tensorrt-rtx {tensorrt_rtx.__version__}"

RECIPE = """\
name: tiny
version: 1.0.0
model: {path: {models}/tiny.onnx}
backend: tensorrt-rtx
targets: [sm89]
stages:
  - parse: {}
  - network-flag: {strongly_typed: true}
  - memory-pool: {workspace: 64MiB, tactic_shared_memory: 48KiB}
  - serialize:
      flags: [tf32]
      profiles:
        - x: {min: [1, 4], opt: [8, 4], max: [64, 4]}
"""


def problems(write_recipe: Callable[..., Path], body: str, backend: Backend,
             probe: Probe = NO_GPU) -> tuple[Path, list[str]]:
    path = write_recipe(body)
    return path, capability.problems(recipes.load(path), backend, probe)


def test_a_clean_recipe_has_no_problems(write_recipe: Callable[..., Path], rtx_backend: Backend) -> None:
    assert problems(write_recipe, RECIPE, rtx_backend)[1] == []


def test_explicit_batch_false_is_refused_on_rtx(write_recipe: Callable[..., Path], rtx_backend: Backend) -> None:
    path, found = problems(write_recipe, RECIPE.replace("{strongly_typed: true}", "{explicit_batch: false}"),
                           rtx_backend)
    assert found == [f"{path}:8:36: stages[1].network-flag.explicit_batch: explicit_batch: false is not possible "
                     f"with {LABEL}: explicit batch is its only mode; remove the key or set it to true"]


def test_unknown_builder_flag(write_recipe: Callable[..., Path], rtx_backend: Backend) -> None:
    """Precision flags (fp16, int8, ...) get their own version-aware message: tests/stages/test_precision.py."""
    path, found = problems(write_recipe, RECIPE.replace("flags: [tf32]", "flags: [tf32, obey_precision_constraints]"),
                           rtx_backend)
    has = ", ".join(name.lower() for name in sorted(tensorrt_rtx.BuilderFlag.__members__))
    assert found == [f"{path}:11:21: stages[3].serialize.flags[1]: {LABEL} has no builder flag "
                     f"OBEY_PRECISION_CONSTRAINTS; it has {has}"]


def test_unknown_memory_pool(write_recipe: Callable[..., Path], rtx_backend: Backend) -> None:
    """TensorRT-RTX has every pool the schema allows, so the 'backend lacks this pool' branch needs a TensorRT that
    lacks one: the real module, with DLA and TACTIC_SHARED_MEMORY pools hidden (as in a build without them)."""
    pools = {name: value for name, value in tensorrt_rtx.MemoryPoolType.__members__.items()
             if name in ("WORKSPACE", "TACTIC_DRAM")}
    narrowed = types.SimpleNamespace(__version__=tensorrt_rtx.__version__,
                                     MemoryPoolType=types.SimpleNamespace(__members__=pools, **pools),
                                     NetworkDefinitionCreationFlag=tensorrt_rtx.NetworkDefinitionCreationFlag,
                                     BuilderFlag=tensorrt_rtx.BuilderFlag)
    path, found = problems(write_recipe, RECIPE, Backend("tensorrt-rtx", narrowed))
    assert found == [f"{path}:9:59: stages[2].memory-pool.tactic_shared_memory: {LABEL} has no memory pool "
                     "TACTIC_SHARED_MEMORY; it has tactic_dram, workspace"]


def test_a_pool_name_the_schema_does_not_know_is_caught_by_the_schema(write_recipe: Callable[..., Path]) -> None:
    path = write_recipe(RECIPE.replace("workspace: 64MiB", "workspace: 64MiB, scratch: 1GiB"))
    with pytest.raises(recipes.RecipeError) as caught:
        recipes.load(path)
    assert caught.value.problems == [
        f"{path}:9:37: stages[2].memory-pool.scratch: unknown key; expected one of dla_global_dram, dla_local_dram, "
        "dla_managed_sram, tactic_dram, tactic_shared_memory, workspace"]


def test_hardware_compatibility_on_rtx(write_recipe: Callable[..., Path], rtx_backend: Backend) -> None:
    path, found = problems(write_recipe, RECIPE.replace("flags: [tf32]", "hardware_compatibility: ampere_plus"),
                           rtx_backend)
    assert found == [f"{path}:11:31: stages[3].serialize.hardware_compatibility: hardware_compatibility is a "
                     "full-TensorRT option; with TensorRT-RTX choose the GPUs with targets: [...] instead"]


def test_timing_cache_on_cpu_only_rtx(write_recipe: Callable[..., Path], rtx_backend: Backend) -> None:
    body = RECIPE.replace("flags: [tf32]", "timing_cache: {path: t.cache}")
    path, found = problems(write_recipe, body, rtx_backend, NO_GPU)
    assert found == [f"{path}:11:21: stages[3].serialize.timing_cache: a timing cache makes TensorRT-RTX query a GPU "
                     "while building, which fails on this CPU-only machine (and it is deprecated in TensorRT-RTX); "
                     "remove timing_cache"]
    assert problems(write_recipe, body, rtx_backend, RTX4090)[1] == []  # with a GPU it is allowed


def test_every_problem_at_once(write_recipe: Callable[..., Path], rtx_backend: Backend) -> None:
    body = (RECIPE.replace("{strongly_typed: true}", "{explicit_batch: false}")
            .replace("flags: [tf32]", "flags: [fp16]\n      hardware_compatibility: ampere_plus"))
    path, found = problems(write_recipe, body, rtx_backend)
    assert [line.split(": ")[1] for line in found] == [
        "stages[1].network-flag.explicit_batch", "stages[3].serialize.flags[0]",
        "stages[3].serialize.hardware_compatibility"]


def test_targets_are_located(write_recipe: Callable[..., Path], rtx_backend: Backend) -> None:
    path = write_recipe(RECIPE.replace("targets: [sm89]", "targets: [sm89, sm90, local]"))
    recipe = recipes.load(path)
    found, problems_ = capability.targets(recipe, rtx_backend, NO_GPU)
    supported = ", ".join(sorted((m.lower() for m in tensorrt_rtx.ComputeCapability.__members__ if m.startswith("SM")),
                                 key=lambda m: int(m[2:])))
    assert supported.startswith("sm75, sm80, sm86, sm89, sm120")
    assert [t.name for t in found] == ["sm89"]
    assert problems_ == [
        f"{path}:5:17: targets[1]: {LABEL} cannot build for sm90; it supports {supported}",
        f"{path}:5:23: targets[2]: target 'local' means the GPU of this machine, but no CUDA driver on this machine "
        "(libcuda.so.1 cannot be loaded); name the targets instead, e.g. targets: [sm86, sm89]",
    ]


def test_a_target_named_twice_is_refused(write_recipe: Callable[..., Path], rtx_backend: Backend) -> None:
    path = write_recipe(RECIPE.replace("targets: [sm89]", "targets: [sm89, local]"))
    found, problems_ = capability.targets(recipes.load(path), rtx_backend, RTX4090)
    assert [t.name for t in found] == ["sm89"]
    assert problems_ == [f"{path}:5:17: targets[1]: 'local' is the same GPU tag as 'sm89' "
                         f"(sm89.rtx-{'.'.join(tensorrt_rtx.__version__.split('.')[:3])}); list it once"]


def test_command_line_targets_replace_the_recipes(write_recipe: Callable[..., Path], rtx_backend: Backend) -> None:
    recipe = recipes.load(write_recipe(RECIPE))
    found, problems_ = capability.targets(recipe, rtx_backend, NO_GPU, ("sm86", "sm90"))
    assert [t.name for t in found] == ["sm86"]
    assert len(problems_) == 1 and problems_[0].startswith("--target sm90: ")


def test_a_missing_plugin_library_is_located(write_recipe: Callable[..., Path], rtx_backend: Backend) -> None:
    path, found = problems(write_recipe, RECIPE.replace("      flags: [tf32]\n", "      flags: [tf32]\n"
                                                                             "      plugins: [libgone.so]\n"), rtx_backend)
    assert found == [f"{path}:12:17: stages[3].serialize.plugins[0]: plugin library not found: "
                     f"{path.parent / 'libgone.so'}"]


def test_flags_that_need_a_gpu_to_build_are_refused_on_cpu_only_rtx(write_recipe: Callable[..., Path],
                                                                    rtx_backend: Backend) -> None:
    body = RECIPE.replace("flags: [tf32]", "flags: [tf32, strip_plan, sparse_weights, refit, refit_identical, "
                                           "version_compatible]")
    path, found = problems(write_recipe, body, rtx_backend, NO_GPU)
    myelin = "the build fails with MyelinCheckException: CHECK(status == CUDA_SUCCESS)"
    assert found == [
        f"{path}:11:{column}: stages[3].serialize.flags[{index}]: {flag} needs a GPU at build time with TensorRT-RTX "
        f"1.x (measured: {why} on a CPU-only machine); remove it here, or build on a machine with a GPU"
        for index, column, flag, why in [(1, 21, "strip_plan", myelin), (3, 49, "refit", myelin),
                                         (4, 56, "refit_identical", myelin),
                                         (5, 73, "version_compatible", "the build fails loading libnvinfer_lean.so.1")]]
    assert problems(write_recipe, body, rtx_backend, RTX4090)[1] == []  # with a GPU they are allowed


@pytest.mark.parametrize("flag", sorted(capability.RTX_FLAGS_NEEDING_A_GPU))
def test_the_refused_flags_really_fail_a_cpu_only_build(flag: str, write_recipe: Callable[..., Path],
                                                        rtx_backend: Backend, tmp_path: Path) -> None:
    """The measurement behind the refusal, kept honest: built past the check, each flag fails here. When a
    TensorRT-RTX release builds one of them on CPU, this fails: drop it from RTX_FLAGS_NEEDING_A_GPU."""
    import logging

    from pipeline.build import plan as plans
    from pipeline.build import runner
    from pipeline.errors import BuildError
    from pipeline.store import Store

    recipe = recipes.load(write_recipe(RECIPE.replace("flags: [tf32]", f"flags: [{flag}]")))
    targets, _ = capability.targets(recipe, rtx_backend, NO_GPU)
    plan = plans.Plan(recipe, rtx_backend, tuple(targets), tuple(recipe.stages), True)  # skips the refusal
    with pytest.raises(BuildError, match="^serialize: "):
        runner.build(plan, Store(tmp_path / "store"), logging.getLogger("x.flags"))


def test_recipe_targets_passed_as_names_point_at_the_recipe(write_recipe: Callable[..., Path],
                                                            rtx_backend: Backend) -> None:
    """nightly plans a recipe's own targets one at a time: a bad one is the recipe's line, not '--target'."""
    path = write_recipe(RECIPE.replace("targets: [sm89]", "targets: [sm89, sm90]"))
    found, problems_ = capability.targets(recipes.load(path), rtx_backend, NO_GPU, ("sm90",))
    assert found == []
    assert len(problems_) == 1 and problems_[0].startswith(f"{path}:5:17: targets[1]: {LABEL} cannot build for sm90")


def test_not_buildable_here_is_only_the_missing_gpu(write_recipe: Callable[..., Path], rtx_backend: Backend) -> None:
    recipe = recipes.load(write_recipe(RECIPE.replace("targets: [sm89]", "targets: [sm89, sm90, local]")))
    assert capability.not_buildable_here(recipe, rtx_backend, NO_GPU) == [
        f"{recipe.path}:5:23: targets[2]: target 'local' means the GPU of this machine, but no CUDA driver on this "
        "machine (libcuda.so.1 cannot be loaded); name the targets instead, e.g. targets: [sm86, sm89]"]
    assert capability.not_buildable_here(recipe, rtx_backend, RTX4090) == []
