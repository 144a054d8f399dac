"""serialize: build_serialized_network with TensorRT-RTX, the plan written into the staged artifact directory."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import tensorrt_rtx

from pipeline.context import Context
from pipeline.errors import BuildError
from pipeline.stages.serialize import ENGINE_FILE
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
