"""memory-pool: the builder config, read back from TensorRT-RTX itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import tensorrt_rtx as trt

from pipeline.errors import BuildError
from pipeline.stages.context import Context
from tests.conftest import run_stages

Recipe = Callable[..., Path]
ContextFor = Callable[..., Context]

TINY = """\
name: t
version: 1.0.0
model: {{path: {{models}}/{model}.onnx}}
targets: [sm89]
stages:
  - parse: {{}}
  - network-flag: {{}}
  - memory-pool: {{workspace: 64MiB, tactic_shared_memory: 48KiB, tactic_dram: 1GiB}}
  - serialize:
      builder_optimization_level: 1
      flags: [tf32, strip_plan]
      profiles:
{profiles}"""
X = "        - x: {min: [1, 4], opt: [8, 4], max: [64, 4]}\n"


def configured(write_recipe: Recipe, build_context: ContextFor, target: str = "sm89", model: str = "tiny",
               profiles: str = X) -> Context:
    ctx = build_context(write_recipe(TINY.format(model=model, profiles=profiles)), target)
    run_stages(ctx, "parse", "network-flag", "memory-pool")
    return ctx


def test_pool_limits_are_read_back_from_the_config(write_recipe: Recipe, build_context: ContextFor) -> None:
    ctx = configured(write_recipe, build_context)
    assert ctx.config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) == 64 * 1024**2
    assert ctx.config.get_memory_pool_limit(trt.MemoryPoolType.TACTIC_SHARED_MEMORY) == 48 * 1024
    assert ctx.config.get_memory_pool_limit(trt.MemoryPoolType.TACTIC_DRAM) == 1024**3
    assert ctx.config_record["memory_pools"] == {"workspace": 64 * 1024**2, "tactic_shared_memory": 48 * 1024,
                                                 "tactic_dram": 1024**3}


def test_builder_options(write_recipe: Recipe, build_context: ContextFor) -> None:
    ctx = configured(write_recipe, build_context)
    assert ctx.config.builder_optimization_level == ctx.config_record["builder_optimization_level"] == 1
    assert ctx.config.get_flag(trt.BuilderFlag.TF32) and ctx.config.get_flag(trt.BuilderFlag.STRIP_PLAN)
    assert not ctx.config.get_flag(trt.BuilderFlag.REFIT)
    assert ctx.config_record["flags"] == ["STRIP_PLAN", "TF32"]
    assert ctx.config.num_optimization_profiles == 1
    assert ctx.config_record["profiles"] == [{"x": {"min": [1, 4], "opt": [8, 4], "max": [64, 4]}}]
    assert (ctx.config_record["hardware_compatibility"], ctx.config_record["timing_cache"]) == ("none", None)


@pytest.mark.parametrize(("target", "capability", "cc"), [("sm89", trt.ComputeCapability.SM89, "8.9"),
                                                          ("sm120", trt.ComputeCapability.SM120, "12.0")])
def test_compute_capability_is_set(write_recipe: Recipe, build_context: ContextFor, target: str,
                                   capability: trt.ComputeCapability, cc: str) -> None:
    ctx = configured(write_recipe, build_context, target)
    assert ctx.config.num_compute_capabilities == 1
    assert ctx.config.get_compute_capability(0) == capability
    assert ctx.config_record["compute_capabilities"] == [cc]


def test_two_inputs_in_one_profile(write_recipe: Recipe, build_context: ContextFor) -> None:
    profiles = ("        - image: {min: [1, 3, 32, 32], opt: [4, 3, 64, 64], max: [8, 3, 128, 128]}\n"
                "          scale: {min: [1, 1], opt: [4, 1], max: [8, 1]}\n")
    ctx = configured(write_recipe, build_context, model="two_input", profiles=profiles)
    assert ctx.config.num_optimization_profiles == 1
    assert ctx.config_record["profiles"] == [{"image": {"min": [1, 3, 32, 32], "opt": [4, 3, 64, 64],
                                                        "max": [8, 3, 128, 128]},
                                              "scale": {"min": [1, 1], "opt": [4, 1], "max": [8, 1]}}]


def test_missing_profile_for_a_dynamic_input(write_recipe: Recipe, build_context: ContextFor) -> None:
    profiles = "        - image: {min: [1, 3, 32, 32], opt: [4, 3, 64, 64], max: [8, 3, 128, 128]}\n"
    path = write_recipe(TINY.format(model="two_input", profiles=profiles))
    ctx = build_context(path)
    run_stages(ctx, "parse", "network-flag")
    with pytest.raises(BuildError) as caught:
        run_stages(ctx, "memory-pool")
    assert str(caught.value) == (f"{path}:13:9: stages[3].serialize.profiles: input(s) scale have dynamic dimensions "
                                 "(scale [-1, 1]) but no optimization profile")
    assert caught.value.hint == "add '- NAME: {min: [...], opt: [...], max: [...]}' to profiles"


def test_no_profiles_at_all_points_at_serialize(write_recipe: Recipe, build_context: ContextFor) -> None:
    path = write_recipe(TINY.format(model="tiny", profiles="").replace("      profiles:\n", ""))
    ctx = build_context(path)
    run_stages(ctx, "parse", "network-flag")
    with pytest.raises(BuildError) as caught:
        run_stages(ctx, "memory-pool")
    assert str(caught.value) == (f"{path}:10:7: stages[3].serialize.profiles: input(s) x have dynamic dimensions "
                                 "(x [-1, 4]) but no optimization profile")
