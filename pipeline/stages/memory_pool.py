"""memory-pool: the builder config: a limit per memory pool, plus the builder options from `serialize`
(optimization level, profiles, flags, compute-capability targets, hardware compatibility, timing cache)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipeline import interrupt
from pipeline.digest import file_sha256
from pipeline.errors import BuildError
from pipeline.stages.context import Context
from pipeline.stages.serialize import SerializeSpec
from pipeline.stages.stage import Stage
from pipeline.trt.backend import make_progress_monitor
from pipeline.units import size_bytes


@dataclass(frozen=True)
class PoolSpec:
    limits: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # pool -> bytes


def _profiles(ctx: Context, spec: SerializeSpec) -> list[dict]:
    network, recipe = ctx.network, ctx.recipe
    covered: set[str] = set()
    for profile in spec.profiles:
        trt_profile = ctx.builder.create_optimization_profile()
        for item in profile:
            trt_profile.set_shape(item.name, item.min, item.opt, item.max)
            covered.add(item.name)
        ctx.config.add_optimization_profile(trt_profile)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t.name for t in inputs if any(d < 0 for d in t.shape) and t.name not in covered]
    if dynamic:
        shapes = ", ".join(f"{t.name} {list(t.shape)}" for t in inputs if t.name in dynamic)
        raise BuildError(recipe.problem(recipe.stage_path("serialize", "profiles"),
                                        f"input(s) {', '.join(dynamic)} have dynamic dimensions ({shapes}) but no "
                                        "optimization profile"),
                         hint="add '- NAME: {min: [...], opt: [...], max: [...]}' to profiles")
    return [{item.name: {"min": list(item.min), "opt": list(item.opt), "max": list(item.max)} for item in profile}
            for profile in spec.profiles]


def _timing_cache(ctx: Context, spec: SerializeSpec) -> dict | None:
    cache = spec.timing_cache
    if cache is None:
        return None
    data = cache.path.read_bytes() if cache.path.is_file() else b""
    sha = file_sha256(cache.path) if data else None
    if cache.sha256 and cache.sha256 != sha:
        raise BuildError(f"serialize.timing_cache: pinned sha256 {cache.sha256}, but {cache.path} has {sha}")
    trt_cache = ctx.config.create_timing_cache(data)
    ctx.config.set_timing_cache(trt_cache, ignore_mismatch=False)
    if cache.error_on_miss:
        ctx.config.set_flag(ctx.backend.require("BuilderFlag", "ERROR_ON_TIMING_CACHE_MISS", "error_on_miss"))
    ctx.timing_cache = trt_cache
    return {"path": str(cache.path), "sha256": sha, "error_on_miss": cache.error_on_miss}


def config_from_recipe(ctx: Context) -> None:
    backend, target = ctx.backend, ctx.target
    pools = ctx.recipe.spec("memory-pool").limits
    spec: SerializeSpec = ctx.recipe.spec("serialize")
    config = ctx.config = ctx.builder.create_builder_config()
    ctx.monitor = make_progress_monitor(backend, ctx.progress.detail, lambda: not interrupt.requested())
    if ctx.monitor is not None:  # the build's phases on the status line; Ctrl-C stops the build at its next step
        config.progress_monitor = ctx.monitor
    for pool, nbytes in pools.items():
        config.set_memory_pool_limit(backend.require("MemoryPoolType", pool.upper(), f"memory-pool.{pool}"), nbytes)
    config.builder_optimization_level = spec.builder_optimization_level
    for flag in spec.flags:
        config.set_flag(backend.require("BuilderFlag", flag.upper(), f"serialize.flags: {flag}"))
    capabilities: list[str] = []
    if backend.is_rtx and target is not None:
        config.num_compute_capabilities = 1
        config.set_compute_capability(backend.require("ComputeCapability", target.sm.upper(), target.sm), 0)
        capabilities = [target.compute_capability]
    if spec.hardware_compatibility != "none":
        config.hardware_compatibility_level = backend.require(
            "HardwareCompatibilityLevel", spec.hardware_compatibility.upper(), "hardware_compatibility")
    ctx.config_record = {
        "memory_pools": {pool: config.get_memory_pool_limit(backend.trt.MemoryPoolType.__members__[pool.upper()])
                         for pool in pools},
        "builder_optimization_level": config.builder_optimization_level,
        "profiles": _profiles(ctx, spec),
        "flags": sorted(flag.upper() for flag in spec.flags),
        "hardware_compatibility": spec.hardware_compatibility,
        "compute_capabilities": capabilities,
        "timing_cache": _timing_cache(ctx, spec),
    }


def _freeze(body: Mapping[str, Any], base: Path) -> PoolSpec:
    return PoolSpec(MappingProxyType({pool: size_bytes(size) for pool, size in body.items()}))


STAGE = Stage("memory-pool", PoolSpec, _freeze, config_from_recipe, per_target=True, in_key=True)
