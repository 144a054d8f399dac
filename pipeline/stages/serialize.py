"""serialize: build the engine, streamed into this target's staged artifact directory and hashed as it is written."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import interrupt, userfiles
from pipeline.errors import BuildError
from pipeline.files import replace_bytes, staged_file
from pipeline.stages.context import Context
from pipeline.stages.stage import Stage
from pipeline.trt.backend import make_stream_writer


@dataclass(frozen=True)
class InputProfile:
    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class TimingCache:
    path: Path
    sha256: str | None = None
    error_on_miss: bool = False


@dataclass(frozen=True)
class SerializeSpec:
    builder_optimization_level: int = 3
    profiles: tuple[tuple[InputProfile, ...], ...] = ()
    flags: tuple[str, ...] = ()
    hardware_compatibility: str = "none"
    timing_cache: TimingCache | None = None
    plugins: tuple[Path, ...] = ()  # plugin libraries, resolved against the recipe's folder


ENGINE_FILE = "engine.plan"


def engine_from_network(ctx: Context) -> None:
    """Build the engine into the staged directory, streamed to disk and hashed as TensorRT serializes it when the
    backend can (the engine is never whole in memory), else from build_serialized_network's buffer. Either way
    it is written atomically: a failed or interrupted build leaves no engine file."""
    path = ctx.staged / ENGINE_FILE
    with staged_file(path) as engine:
        writer = make_stream_writer(ctx.backend, engine.write)
        if writer is not None:
            built = ctx.builder.build_serialized_network_to_stream(ctx.network, ctx.config, writer)
            if writer.error is not None:
                raise writer.error
        else:
            plan = ctx.builder.build_serialized_network(ctx.network, ctx.config)
            built = plan is not None
            if built:
                engine.write(memoryview(plan))
            del plan
        interrupt.check()  # a Ctrl-C during the build may have landed in TensorRT's logger callback
        if not built or engine.size == 0:
            detail = "; ".join(ctx.trt_logger.errors[-3:]) or "no message from TensorRT"
            raise BuildError(f"serialize: {ctx.backend.label()} could not build the engine for {ctx.target.tag}: "
                             f"{detail}", hint="run with -v for TensorRT's full log")
    ctx.engine_path = path
    ctx.engine_record = {"file": ENGINE_FILE, "sha256": engine.sha256, "bytes": engine.size}
    save_timing_cache(ctx)


def save_timing_cache(ctx: Context) -> None:
    """Write the timing cache back when the build added to it (atomically), as trtexec --timingCacheFile does.
    The cache's sha256 is part of the build key, so the next build of an unchanged recipe rebuilds once, after
    which the cache is stable and builds are reused again. A cache pinned by sha256 is a fixed input: never
    written."""
    cache = ctx.recipe.spec("serialize").timing_cache
    if cache is None or cache.sha256:
        return
    data = bytes(memoryview(ctx.config.get_timing_cache().serialize()))
    if cache.path.is_file() and cache.path.read_bytes() == data:
        return
    replace_bytes(cache.path, data)
    ctx.log.info("serialize: timing cache %s updated (%d bytes)", cache.path, len(data))


def _freeze(body: Mapping[str, Any], base: Path) -> SerializeSpec:
    body = dict(body)
    profiles = tuple(
        tuple(InputProfile(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"])) for name, s in profile.items())
        for profile in body.pop("profiles", [])
    )
    cache = body.pop("timing_cache", None)
    if cache:
        cache = TimingCache(path=userfiles.absolute(base, cache["path"]), sha256=cache.get("sha256"),
                            error_on_miss=cache.get("error_on_miss", False))
    plugins = tuple(userfiles.absolute(base, plugin) for plugin in body.pop("plugins", ()))
    return SerializeSpec(profiles=profiles, timing_cache=cache, flags=tuple(body.pop("flags", ())), plugins=plugins,
                         **body)


STAGE = Stage("serialize", SerializeSpec, _freeze, engine_from_network, per_target=True, in_key=True)
