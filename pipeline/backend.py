"""Which TensorRT: one adapter over `tensorrt` (data-centre GPUs) and `tensorrt_rtx` (RTX, CPU-only builds).

Capabilities are probed with `hasattr` on the real module, never by comparing version strings.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

from pipeline.errors import BackendError

MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
TAG_PREFIX = {"tensorrt": "trt", "tensorrt-rtx": "rtx"}
INSTALL_HINT = {
    "tensorrt": "pip install 'trt-pipeline[tensorrt]' (needs NVIDIA's package index and a data-centre GPU driver)",
    "tensorrt-rtx": "pip install tensorrt-rtx",
}


@dataclass(frozen=True)
class Backend:
    name: str  # 'tensorrt' | 'tensorrt-rtx'
    trt: Any  # the imported module

    @property
    def version(self) -> str:
        return str(self.trt.__version__)

    @property
    def short_version(self) -> str:
        """'1.7.1.116' -> '1.7.1' (the part that decides engine compatibility in tags)."""
        from pipeline.target import short_version

        return short_version(self.version)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt-rtx"

    def label(self) -> str:
        return f"{self.name} {self.version}"

    def member(self, enum: str, name: str) -> Any | None:
        """`trt.<enum>.<name>` if this TensorRT has it, else None."""
        return getattr(getattr(self.trt, enum, None), name, None)

    def require(self, enum: str, name: str, feature: str) -> Any:
        value = self.member(enum, name)
        if value is None:
            raise BackendError(f"{feature} needs {enum}.{name}, which {self.label()} does not have")
        return value

    def member_names(self, enum: str) -> list[str]:
        return sorted(getattr(getattr(self.trt, enum, None), "__members__", {}))


def load(name: str = "auto", importer: Callable[[str], Any] = importlib.import_module) -> Backend:
    """Import the named TensorRT. 'auto' prefers full TensorRT when it imports, else TensorRT-RTX."""
    if name == "auto":
        for candidate in ("tensorrt", "tensorrt-rtx"):
            try:
                return load(candidate, importer)
            except BackendError:
                continue
        raise BackendError("no TensorRT is importable (tried tensorrt, tensorrt_rtx)",
                           hint=f"install one: {INSTALL_HINT['tensorrt-rtx']}")
    if name not in MODULES:
        raise BackendError(f"unknown backend '{name}'", hint=f"use one of auto, {', '.join(MODULES)}")
    try:
        module = importer(MODULES[name])
        module.__version__  # a half-installed wheel imports but has no libraries behind it
    except (ImportError, OSError, AttributeError) as error:
        raise BackendError(f"backend '{name}' cannot be imported: {error}",
                           hint=f"install it: {INSTALL_HINT[name]}") from None
    return Backend(name, module)


def make_logger(backend: Backend, log: logging.Logger) -> Any:
    """An instance of the project's own `trt.ILogger` subclass that forwards into Python logging."""
    trt = backend.trt
    levels = {
        trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
        trt.ILogger.Severity.ERROR: logging.ERROR,
        trt.ILogger.Severity.WARNING: logging.WARNING,
        trt.ILogger.Severity.INFO: logging.INFO,
        trt.ILogger.Severity.VERBOSE: logging.DEBUG,
    }

    class PipelineLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        """Routes TensorRT's messages into `log`, keeping the last errors for the failure summary."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            try:
                level = levels.get(severity, logging.INFO)
                if level >= logging.ERROR:
                    self.errors.append(msg)
                log.log(level, "[%s] %s", backend.name, msg)
            except KeyboardInterrupt:  # it cannot cross TensorRT; pipeline.interrupt remembers it for the stage
                pass

    return PipelineLogger()
