"""Which TensorRT: one adapter over `tensorrt` (data-centre GPUs) and `tensorrt_rtx` (RTX, CPU-only builds).

Capabilities are probed with `hasattr` on the real module, never by comparing version strings.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import BackendError
from pipeline.trt.target import short_version

MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
TAG_PREFIX = {"tensorrt": "trt", "tensorrt-rtx": "rtx"}
INSTALL_HINT = {
    "tensorrt": "pip install 'trt-pipeline[tensorrt]' (needs NVIDIA's package index and a data-centre GPU driver)",
    "tensorrt-rtx": "pip install tensorrt-rtx",
}


@dataclass(frozen=True)
class Backend:
    name: str  # 'tensorrt' | 'tensorrt-rtx'
    module: Any  # the imported module, or a function that imports it when first needed
    known_version: str | None = None  # its __version__, when known without importing it

    @functools.cached_property
    def trt(self) -> Any:
        """The TensorRT module (imported now if it was not yet: a remembered plan needs none until it builds)."""
        return self.module() if callable(self.module) else self.module

    @property
    def version(self) -> str:
        return self.known_version or str(self.trt.__version__)

    @property
    def short_version(self) -> str:
        """'1.7.1.116' -> '1.7.1' (the part that decides engine compatibility in tags)."""
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

    def build_sms(self) -> tuple[str, ...]:
        """The architectures TensorRT-RTX builds for ahead of time ('sm75', ..., 'sm121'), lowest first."""
        sms = (m.lower() for m in self.member_names("ComputeCapability") if m.startswith("SM"))
        return tuple(sorted(sms, key=lambda sm: int(sm[2:])))


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
        module.__version__  # noqa: B018 - a half-installed wheel imports but has no libraries behind it
    except (ImportError, OSError, AttributeError) as error:
        raise BackendError(f"backend '{name}' cannot be imported: {error}",
                           hint=f"install it: {INSTALL_HINT[name]}") from None
    return Backend(name, module)


def installed_version(name: str) -> str | None:
    """The installed version of a package (a backend's, or a tool's for the source key), read from its metadata
    without importing it; None when it is not installed under that name. As importlib.metadata finds it (the first
    sys.path entry holding a NAME-VERSION.dist-info or .egg-info whose name matches, the Version of its metadata)
    but without importing importlib.metadata and the email parser, ~40 ms of an unchanged rebuild's start-up."""
    wanted = _normalized(name)
    for entry in sys.path:
        try:
            listed = os.scandir(entry or ".")
        except OSError:
            continue
        with listed:
            found = [e.path for e in listed if e.name.endswith((".dist-info", ".egg-info"))
                     and _normalized(e.name.partition("-")[0]) == wanted]
        for path in sorted(found):
            version = _metadata_version(path)
            if version:
                return version
    return None


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _metadata_version(path: str) -> str | None:
    """The Version header of a dist-info's METADATA or an egg-info's PKG-INFO (a directory, or the file itself)."""
    for candidate in (os.path.join(path, "METADATA"), os.path.join(path, "PKG-INFO"), path):
        try:
            with open(candidate, encoding="utf-8", errors="replace") as headers:
                for line in headers:
                    if line.startswith("Version:"):
                        return line.partition(":")[2].strip()
                    if not line.strip():  # the end of the headers
                        break
        except OSError:  # not there, or a directory
            continue
    return None


def module_file(name: str) -> str | None:
    """The file a backend's module would be imported from, found without importing it; None when not found."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(MODULES[name])
    except (ImportError, ValueError):
        return None
    return spec.origin if spec else None


def deferred(name: str, version: str) -> Backend:
    """A backend whose module is imported only when something needs more than its name and version, and must
    then report that version (else BackendError: the package changed since the plan was made)."""

    def module() -> Any:
        trt = load(name).trt
        if str(trt.__version__) != version:
            raise BackendError(f"{name} is {trt.__version__} now, but this build was planned with {version}",
                               hint="run the command again")
        return trt

    return Backend(name, module, version)


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


def make_progress_monitor(backend: Backend, report: Callable[[str], None],
                          keep_going: Callable[[], bool] = lambda: True) -> Any | None:
    """A `trt.IProgressMonitor` that reports the innermost running build phase with its step count
    ('Building engine: 3/7'), and cancels the build when `keep_going()` turns false (Ctrl-C). None when the
    backend has no progress monitor (TensorRT before 10)."""
    trt = backend.trt
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class PipelineMonitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.phases: dict[str, list[int]] = {}  # phase -> [done, total], in start order

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.phases[phase_name] = [0, num_steps]
            self._report()

        def step_complete(self, phase_name: str, step: int) -> bool:
            if phase_name in self.phases:
                self.phases[phase_name][0] = step + 1
                self._report()
            return keep_going()

        def phase_finish(self, phase_name: str) -> None:
            self.phases.pop(phase_name, None)
            self._report()

        def _report(self) -> None:
            if self.phases:
                name, (done, total) = next(reversed(self.phases.items()))
                report(f"{name}: {done}/{total}")
            else:
                report("")

    return PipelineMonitor()


def make_stream_writer(backend: Backend, sink: Callable[[bytes], object]) -> Any | None:
    """A `trt.IStreamWriter` that hands each chunk of the engine, as TensorRT serializes it, to `sink` (e.g. a
    staged file that hashes as it writes). An exception in `sink` cannot cross TensorRT: it is kept in the
    writer's `error` and the chunk reported unwritten, which fails the build; the caller raises it after. None
    when the backend cannot stream an engine (no `IStreamWriter` or no `build_serialized_network_to_stream`)."""
    trt = backend.trt
    if not hasattr(trt, "IStreamWriter") or not hasattr(trt.Builder, "build_serialized_network_to_stream"):
        return None

    class PipelineStreamWriter(trt.IStreamWriter):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IStreamWriter.__init__(self)
            self.error: BaseException | None = None

        def write(self, data: bytes, size: int | None = None) -> int:
            if self.error is not None:
                return 0
            try:
                sink(data)
            except BaseException as error:  # noqa: BLE001 - kept, and raised by the caller once TensorRT returns
                self.error = error
                return 0
            return len(data)

    return PipelineStreamWriter()
