"""The gate for tests that run an engine: they run where a GPU that the installed TensorRT supports is present,
and skip elsewhere with the probe's reason. On a GPU runner, TRT_PIPELINE_REQUIRE_GPU=1 turns that skip into a
failure, so a runner that lost its GPU cannot pass by skipping (see README, "GPU tests")."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from pipeline.errors import PipelineError
from pipeline.trt import backend as backends
from pipeline.trt import gpu
from pipeline.trt import runtime as engine

REQUIRE_ENV = "TRT_PIPELINE_REQUIRE_GPU"


def skip_reason() -> str | None:
    """Why engines cannot run here (driver, GPU, or a GPU the installed TensorRT refuses), or None."""
    probe = gpu.probe()
    if probe.gpu is None:
        return probe.reason
    try:
        backend = backends.load("auto")
    except PipelineError as error:
        return str(error)
    return engine.why_not(backend.name, probe.gpu.compute_capability, probe)


REASON = skip_reason()


def needs_gpu(test: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a test `gpu`; skip it with the probe's reason, or fail when TRT_PIPELINE_REQUIRE_GPU=1."""
    if REASON and os.environ.get(REQUIRE_ENV) == "1":
        def fail() -> None:  # no fixtures: they would fail first, with a less useful message
            pytest.fail(f"{REQUIRE_ENV}=1 but engines cannot run here: {REASON}")

        fail.__name__, fail.__qualname__, fail.__doc__ = test.__name__, test.__qualname__, test.__doc__
        return pytest.mark.gpu(fail)
    return pytest.mark.gpu(pytest.mark.skipif(REASON is not None, reason=f"needs a GPU: {REASON}")(test))
