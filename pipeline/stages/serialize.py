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
# Models with at least this many bytes of weights stream their engine to disk. Streaming costs TensorRT-RTX a chunk
# buffer of ~64 MiB (plus the chunk handed to Python) and saves holding the whole engine: measured here, +65 MiB
# peak RSS on two_input, +80 MiB on ResNet-50 (a 100 MB engine), -2.1 GB on 2.25 GiB of weights.
STREAM_FROM = 512 << 20


def engine_from_network(ctx: Context) -> None:
    """Build the engine into the staged directory and hash it as it is written. For a big model (STREAM_FROM) it is
    streamed to disk as TensorRT serializes it, when the backend can (never whole in memory); else it is written
    from build_serialized_network's buffer. Either way past the page cache (files.Direct: measured here, a 2.25 GiB
    engine streamed in ~1 s instead of 4-6 s, ResNet-50 0.06-0.1 s sooner), and atomically: a failed or interrupted
    build leaves no engine."""
    path = ctx.staged / ENGINE_FILE
    big = ctx.model_record.get("bytes", 0) >= STREAM_FROM
    with staged_file(path, direct=True) as engine:  # to the disk, not through the page cache (files.Direct)
        writer = make_stream_writer(ctx.backend, engine.write) if big else None
        # Ctrl-C/SIGTERM during the build is deferred: raised inside one of TensorRT's callbacks (its logger) it would
        # only be printed by TensorRT; recorded instead, it makes the progress monitor cancel the build, and it is
        # raised when the build has returned.
        with interrupt.deferred():
            if writer is not None:
                built = ctx.builder.build_serialized_network_to_stream(ctx.network, ctx.config, writer)
            else:
                plan = ctx.builder.build_serialized_network(ctx.network, ctx.config)
                built = plan is not None
        if writer is not None:
            if writer.error is not None:
                raise writer.error
            ctx.log.info("serialize: the engine was streamed to disk in %d piece(s)", engine.pieces)
        else:
            if built:
                engine.write(memoryview(plan))
            del plan
        interrupt.check()
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
