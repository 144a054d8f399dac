"""Polygraphy, pointed at the right TensorRT, quiet on stdout, its exceptions made one line."""

from __future__ import annotations

import contextlib
import copy
import sys
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

from pipeline.errors import BackendError, PipelineError
from pipeline.trt.backend import Backend

RTX_ENV = "POLYGRAPHY_USE_TENSORRT_RTX"


def use_polygraphy(backend: Backend, environ: MutableMapping[str, str]) -> Any:
    """Point Polygraphy at this backend's TensorRT before it is imported; returns `polygraphy.config`.

    Polygraphy reads POLYGRAPHY_USE_TENSORRT_RTX once, when `polygraphy.config` is first imported. If it was
    imported earlier without it (by an ONNX-Runtime-only comparison, say), its TensorRT binding is still lazy
    until `polygraphy.backend.trt` loads, so the setting can be corrected until then, and not after.
    """
    if backend.is_rtx:
        environ[RTX_ENV] = "1"
    import polygraphy.config as config

    if config.USE_TENSORRT_RTX != backend.is_rtx:
        if "polygraphy.backend.trt" in sys.modules:
            loaded = "TensorRT-RTX" if config.USE_TENSORRT_RTX else "full TensorRT"
            raise BackendError(f"Polygraphy is already bound to {loaded} in this process; {backend.label()} "
                               "needs a fresh process")
        config.USE_TENSORRT_RTX = backend.is_rtx
    return config


_quiet = {"users": 0, "saved": None}
_quiet_lock = threading.Lock()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Polygraphy prints to stdout; the pipeline's stdout is for results. Its errors reach us as exceptions.
    Polygraphy's verbosity is one global: while any thread (the cleanup check runs beside the build) is inside
    `quiet`, it stays silenced; the last one out restores it (G_LOGGER.verbosity() nested across threads would
    restore it while another thread still runs Polygraphy, which then prints)."""
    from polygraphy.logger import G_LOGGER

    with _quiet_lock:
        if not _quiet["users"]:
            _quiet["saved"] = copy.copy(G_LOGGER.module_severity)
            G_LOGGER.module_severity = G_LOGGER.CRITICAL + 1
        _quiet["users"] += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet["users"] -= 1
            if not _quiet["users"]:
                G_LOGGER.module_severity = _quiet["saved"]


@contextlib.contextmanager
def one_line_errors(what: str) -> Iterator[None]:
    """Polygraphy's and ONNX Runtime's exceptions become one-line PipelineErrors that say what was being done."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as error:  # PolygraphyException, onnxruntime's Fail/InvalidArgument, ...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise PipelineError(f"{what}: {first}") from None
