"""serialize: build_serialized_network with TensorRT-RTX, the plan written into the staged artifact directory."""

from __future__ import annotations

import logging
import resource
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tensorrt_rtx

from pipeline import interrupt
from pipeline.digest import file_sha256
from pipeline.errors import BuildError, StoreError
from pipeline.stages import serialize
from pipeline.stages.context import Context
from pipeline.stages.serialize import ENGINE_FILE
from pipeline.trt.backend import Backend, make_stream_writer
from tests.conftest import run_stages

Recipe = Callable[..., Path]
ContextFor = Callable[..., Context]


def engine(tiny_recipe: Path, build_context: ContextFor, target: str) -> bytes:
    ctx = build_context(tiny_recipe, target)
    run_stages(ctx, "parse", "network-flag", "memory-pool", "serialize")
    assert ctx.engine_path == ctx.staged / ENGINE_FILE
    return ctx.engine_path.read_bytes()


def test_serialize_writes_a_plan(tiny_recipe: Path, build_context: ContextFor) -> None:
    plan = engine(tiny_recipe, build_context, "sm89")
    assert len(plan) > 1000


def test_the_target_changes_the_plan(tiny_recipe: Path, build_context: ContextFor) -> None:
    """Proof that the compute-capability setting reaches the builder: engines for two GPUs differ."""
    assert engine(tiny_recipe, build_context, "sm86") != engine(tiny_recipe, build_context, "sm89")


def test_a_failed_build_says_why(write_recipe: Recipe, build_context: ContextFor) -> None:
    """A real build failure: TensorRT-RTX refuses a shared-memory pool of 0 bytes."""
    path = write_recipe("name: t\nversion: 1.0.0\nmodel: {path: {models}/tiny.onnx}\ntargets: [sm89]\nstages:\n"
                        "  - parse: {}\n  - network-flag: {}\n  - memory-pool: {tactic_shared_memory: 0}\n"
                        "  - serialize: {profiles: [{x: {min: [1, 4], opt: [1, 4], max: [1, 4]}}]}\n")
    ctx = build_context(path)
    run_stages(ctx, "parse", "network-flag", "memory-pool")
    with pytest.raises(BuildError) as caught:
        run_stages(ctx, "serialize")
    prefix = f"serialize: tensorrt-rtx {tensorrt_rtx.__version__} could not build the engine for sm89.rtx-"
    assert str(caught.value).startswith(prefix)
    assert "Error Code" in str(caught.value)  # TensorRT's own reason, from the project's logger
    assert caught.value.hint is not None and "-v" in caught.value.hint
    assert not (ctx.staged / ENGINE_FILE).exists()


class _Cache:
    """Stands in for config.get_timing_cache(): a timing cache exists only where TensorRT can time tactics on a
    GPU (full TensorRT, or TensorRT-RTX with a GPU); a CPU-only RTX build refuses one."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data


def _cache_context(tmp_path: Path, pinned: bool, after_build: bytes) -> Any:
    from types import SimpleNamespace

    from pipeline.stages.serialize import SerializeSpec, TimingCache

    path = tmp_path / "timing.cache"
    path.write_bytes(b"before")
    spec = SerializeSpec(timing_cache=TimingCache(path, sha256="ab" * 32 if pinned else None))
    recipe = SimpleNamespace(spec=lambda stage: spec)
    config = SimpleNamespace(get_timing_cache=lambda: _Cache(after_build))
    return SimpleNamespace(recipe=recipe, config=config, log=logging.getLogger("x")), path


def test_a_grown_timing_cache_is_written_back(tmp_path: Path) -> None:
    from pipeline.stages.serialize import save_timing_cache

    ctx, path = _cache_context(tmp_path, pinned=False, after_build=b"before+tactics")
    save_timing_cache(ctx)
    assert path.read_bytes() == b"before+tactics"
    assert [p.name for p in tmp_path.iterdir()] == ["timing.cache"]  # no temp file left


def test_a_pinned_timing_cache_is_never_written(tmp_path: Path) -> None:
    from pipeline.stages.serialize import save_timing_cache

    ctx, path = _cache_context(tmp_path, pinned=True, after_build=b"before+tactics")
    save_timing_cache(ctx)
    assert path.read_bytes() == b"before"


class _CtrlC(logging.Handler):
    """Delivers a Ctrl-C inside TensorRT's logger callback, as a signal arriving mid-build does: the interrupt
    is recorded (what pipeline.interrupt's handler does) and raised where TensorRT swallows it."""

    def emit(self, record: logging.LogRecord) -> None:
        if "Engine generation" in record.getMessage():
            interrupt.request()
            raise KeyboardInterrupt


def test_ctrl_c_inside_a_tensorrt_callback_stops_the_build(tiny_recipe: Path, build_context: ContextFor) -> None:
    ctx = build_context(tiny_recipe, "sm89")
    run_stages(ctx, "parse", "network-flag", "memory-pool")
    handler, trt_log = _CtrlC(), logging.getLogger("x.trt")
    level = trt_log.level
    trt_log.addHandler(handler)
    trt_log.setLevel(logging.INFO)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_stages(ctx, "serialize")
    finally:
        trt_log.removeHandler(handler)
        trt_log.setLevel(level)
        interrupt.clear()
    assert ctx.engine_path is None and not (ctx.staged / ENGINE_FILE).exists()


# ---------------------------------------------------------------- the engine streamed to disk


def test_the_streamed_engine_is_what_build_serialized_network_returns(
        tiny_recipe: Path, build_context: ContextFor, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A big model's engine (here: any, STREAM_FROM 0) goes to disk through build_serialized_network_to_stream: byte
    for byte the plan the in-memory call makes for the same network and config, and its sha256 and size,
    computed while streaming, are the file's."""
    monkeypatch.setattr(serialize, "STREAM_FROM", 0)
    ctx = build_context(tiny_recipe)
    with caplog.at_level(logging.INFO, logger="x"):
        run_stages(ctx, "parse", "network-flag", "memory-pool", "serialize")
    assert "serialize: the engine was streamed to disk in 1 piece(s)" in caplog.messages
    on_disk = ctx.engine_path.read_bytes()
    assert on_disk == bytes(memoryview(ctx.builder.build_serialized_network(ctx.network, ctx.config)))
    assert ctx.engine_record == {"file": ENGINE_FILE, "sha256": file_sha256(ctx.engine_path), "bytes": len(on_disk)}
    assert sorted(p.name for p in ctx.staged.iterdir()) == [ENGINE_FILE]  # no staged temp file left


@pytest.mark.parametrize("stream_from", [0, serialize.STREAM_FROM], ids=["streamed", "in-memory"])
def test_a_write_failing_mid_stream_leaves_no_engine(tiny_recipe: Path, build_context: ContextFor,
                                                     monkeypatch: pytest.MonkeyPatch, stream_from: int) -> None:
    """A real short disk: a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) lets the first 16 KiB of the engine
    reach the staged file, then the kernel refuses the rest (EFBIG). The build fails with the file named, and
    neither the engine nor its staged file is left, streamed or written from memory."""
    monkeypatch.setattr(serialize, "STREAM_FROM", stream_from)
    ctx = build_context(tiny_recipe)
    run_stages(ctx, "parse", "network-flag", "memory-pool")
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, limits[1]))
    try:
        with pytest.raises(StoreError, match=f"cannot write {ctx.staged / ENGINE_FILE}: File too large"):
            run_stages(ctx, "serialize")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert list(ctx.staged.iterdir()) == []
    assert ctx.engine_path is None and ctx.engine_record == {}


def test_an_error_in_the_sink_is_kept_for_the_caller(rtx_backend: Backend) -> None:
    """An exception cannot cross TensorRT's callback: the writer keeps it, reports the chunk unwritten and writes
    nothing more; serialize raises it once the builder returns."""
    seen: list[bytes] = []

    def sink(data: bytes) -> None:
        if seen:
            raise KeyboardInterrupt
        seen.append(data)

    writer = make_stream_writer(rtx_backend, sink)
    assert writer.write(b"abc", 3) == 3
    assert writer.write(b"def", 3) == 0 and isinstance(writer.error, KeyboardInterrupt)
    assert writer.write(b"ghi", 3) == 0 and seen == [b"abc"]
