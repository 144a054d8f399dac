"""Run an engine with TensorRT's own Python API, and decide first whether this machine can run it at all.

The path is the one NVIDIA documents: Runtime -> deserialize_cuda_engine -> create_execution_context, an input
shape for every dynamic input, a device buffer and `set_tensor_address` for every I/O tensor, `execute_async_v3`
on a CUDA stream, copies in and out, synchronize. Device memory and streams come from `polygraphy.cuda`.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Protocol,
)

from pipeline.errors import BackendError, CannotRunHere, PipelineError
from pipeline.ref import ref
from pipeline.trt import backend as backends
from pipeline.trt.backend import Backend, make_logger
from pipeline.trt.gpu import Gpu, Probe
from pipeline.trt.polygraphy import quiet, use_polygraphy
from pipeline.trt.target import short_version

if TYPE_CHECKING:  # for annotations only: the manifest's layer sits above trt/
    from pipeline.manifest import Manifest

# Compute capabilities the TensorRT-RTX runtime accepts (it refuses data-centre parts such as Hopper, 9.0).
RTX_RUNS_ON = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")


# ---------------------------------------------------------------- can this machine run it?


def why_not(backend_name: str, compute_capability: str, probe: Probe) -> str | None:
    """Why an engine for this backend and compute capability cannot run here, or None when it can.
    Cheapest first: driver, a visible GPU, then GPU 0's compute capability (the device CUDA uses by default)."""
    gpu = probe.gpu
    if gpu is None:
        return probe.reason or "no GPU is visible"
    if backend_name == "tensorrt-rtx" and gpu.compute_capability not in RTX_RUNS_ON:
        return (f"TensorRT-RTX does not support this GPU, {gpu.name} (compute capability {gpu.compute_capability}); "
                f"it runs on compute capability {', '.join(RTX_RUNS_ON)}")
    if gpu.compute_capability != compute_capability:
        return (f"the engine is for compute capability {compute_capability}, but this GPU, {gpu.name}, "
                f"is {gpu.compute_capability}")
    return None


def runnable_gpu(manifest: Manifest, probe: Probe) -> Gpu:
    """The GPU that will run this artifact, or CannotRunHere (exit code 2) saying what is missing."""
    reason = why_not(manifest.backend.name, manifest.target.compute_capability, probe)
    if reason:
        raise CannotRunHere(f"cannot run {describe(manifest)} here: {reason}", reason=reason)
    assert probe.gpu is not None
    return probe.gpu


def runtime_backend(manifest: Manifest, load: Callable[[str], Backend] = backends.load) -> Backend:
    """The installed TensorRT that can deserialize this engine: same backend, same version as the build."""
    name, built = manifest.backend.name, manifest.backend.version
    try:
        backend = load(name)
    except BackendError as error:
        raise CannotRunHere(f"cannot run {describe(manifest)} here: {error}", reason=str(error)) from None
    if backend.short_version != short_version(built):
        reason = (f"it was built with {name} {built} and this machine has {backend.version}; an engine runs only "
                  "on the TensorRT version that built it")
        raise CannotRunHere(f"cannot run {describe(manifest)} here: {reason}", reason=reason)
    return backend


def describe(manifest: Manifest) -> str:
    recipe = manifest.recipe
    return f"{ref(recipe.name, recipe.version, manifest.build.number or 1)} [{manifest.target.tag}]"


# ---------------------------------------------------------------- device memory and streams


class Device(Protocol):
    """Where device buffers and streams come from: polygraphy.cuda on a GPU, a test double elsewhere."""

    def array(self, shape: tuple[int, ...], dtype: Any) -> Any: ...

    def stream(self) -> Any: ...


@dataclass(frozen=True)
class PolygraphyDevice:
    cuda: Any  # polygraphy.cuda
    datatype: Any  # polygraphy.datatype.DataType

    def array(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.cuda.DeviceArray(shape=shape, dtype=self.datatype.from_dtype(dtype))

    def stream(self) -> Any:
        return self.cuda.Stream()


def polygraphy_device() -> Device:
    from polygraphy import cuda
    from polygraphy.datatype import DataType

    return PolygraphyDevice(cuda, DataType)


# ---------------------------------------------------------------- a session: engine, context, buffers


@dataclass(frozen=True)
class Tensor:
    name: str
    is_input: bool
    dtype: Any  # numpy dtype
    shape: tuple[int, ...]  # as the engine declares it: -1 for a dynamic dimension


@dataclass
class Session:
    engine: Any
    context: Any
    device: Device
    stream: Any
    tensors: tuple[Tensor, ...]
    logger: Any = None
    buffers: dict[str, Any] = field(default_factory=dict)

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        return tuple(t for t in self.tensors if t.is_input)

    @property
    def outputs(self) -> tuple[Tensor, ...]:
        return tuple(t for t in self.tensors if not t.is_input)

    def trt_error(self, default: str) -> str:
        errors = getattr(self.logger, "errors", [])
        return errors[-1] if errors else default


def io_tensors(engine: Any, trt: Any) -> tuple[Tensor, ...]:
    import numpy as np

    found = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.is_shape_inference_io(name):
            raise PipelineError(f"engine tensor '{name}' is a shape tensor; infer and bench do not feed shape "
                                "tensors yet", hint="use `trt-pipeline validate` (Polygraphy handles them)")
        found.append(Tensor(name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                            np.dtype(trt.nptype(engine.get_tensor_dtype(name))), tuple(engine.get_tensor_shape(name))))
    return tuple(found)


def runtime_for(backend: Backend, logger: Any, libraries: Sequence[str] = ()) -> Any:
    """Runtime(logger) with the engine's plugin libraries loaded into its registry."""
    runtime = backend.trt.Runtime(logger)
    for library in libraries:
        if runtime.get_plugin_registry().load_library(library) is None:
            raise PipelineError(f"{backend.label()} cannot load plugin library {library}, which the engine was "
                                "built with")
    return runtime


def deserialize(backend: Backend, plan: bytes, logger: Any, libraries: Sequence[str] = ()) -> Any:
    """Runtime(logger).deserialize_cuda_engine, with TensorRT's own last error when it returns None."""
    runtime = runtime_for(backend, logger, libraries)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        detail = (getattr(logger, "errors", None) or ["no message from TensorRT"])[-1]
        raise PipelineError(f"{backend.label()} could not deserialize the engine: {detail.splitlines()[0]}")
    return engine


def session_for(engine: Any, trt: Any, device: Device, logger: Any = None) -> Session:
    context = engine.create_execution_context()
    if context is None:
        raise PipelineError("TensorRT could not create an execution context (out of device memory?)")
    return Session(engine, context, device, device.stream(), io_tensors(engine, trt), logger)


@contextlib.contextmanager
def open_session(backend: Backend, plan_path: Path, environ: MutableMapping[str, str], log: Any,
                 device: Device | None = None, libraries: Sequence[str] = ()) -> Iterator[Session]:
    """Deserialize the plan and make a context and a stream; buffers and stream are freed on exit.
    Polygraphy's CUDA errors (raised as PolygraphyException) become one-line PipelineErrors."""
    use_polygraphy(backend, environ)  # polygraphy.cuda comes from the same Polygraphy as validation
    from polygraphy.exception import PolygraphyException

    with quiet():
        try:
            logger = make_logger(backend, log.getChild("trt"))
            engine = deserialize(backend, Path(plan_path).read_bytes(), logger, libraries)
            session = session_for(engine, backend.trt, device or polygraphy_device(), logger)
            try:
                yield session
            finally:
                close(session)
        except PolygraphyException as error:
            first = (str(error).strip().splitlines() or ["unknown error"])[0]
            raise PipelineError(f"CUDA: {first}") from None


def close(session: Session) -> None:
    for buffer in session.buffers.values():
        buffer.free()
    session.buffers.clear()
    session.stream.free()


# ---------------------------------------------------------------- shapes and profiles


def profile_for(profiles: Sequence[Mapping[str, Mapping[str, Sequence[int]]]], shapes: Mapping[str, tuple]) -> int:
    """The first optimization profile whose min..max range holds every given input shape (0 when none exist)."""
    if not profiles:
        return 0
    for index, profile in enumerate(profiles):
        if all(_within(shapes[name], ranges) for name, ranges in profile.items() if name in shapes):
            return index
    wanted = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
    ranges = "; ".join(", ".join(f"{n} {list(r['min'])}..{list(r['max'])}" for n, r in p.items()) for p in profiles)
    raise PipelineError(f"no optimization profile accepts the input shapes {wanted}; the profiles are {ranges}")


def _within(shape: Sequence[int], ranges: Mapping[str, Sequence[int]]) -> bool:
    return len(shape) == len(ranges["min"]) and all(
        lo <= dim <= hi for dim, lo, hi in zip(shape, ranges["min"], ranges["max"]))


def opt_shapes(session: Session, profile: int) -> dict[str, tuple[int, ...]]:
    """Each input's shape at the profile's opt point (static inputs keep their shape)."""
    shapes = {}
    for tensor in session.inputs:
        dynamic = any(dim < 0 for dim in tensor.shape)
        shapes[tensor.name] = (tuple(session.engine.get_tensor_profile_shape(tensor.name, profile)[1]) if dynamic
                               else tensor.shape)
    return shapes


def set_input_shapes(session: Session, shapes: Mapping[str, tuple[int, ...]], profile: int) -> None:
    """Select the profile (on the session's stream) and give every input its shape."""
    context = session.context
    if session.engine.num_optimization_profiles > 1 and context.active_optimization_profile != profile:
        if not context.set_optimization_profile_async(profile, session.stream.ptr):
            raise PipelineError(f"cannot select optimization profile {profile}: {session.trt_error('no detail')}")
    for tensor in session.inputs:
        if tensor.name not in shapes:
            raise PipelineError(f"no value for engine input '{tensor.name}'")
        if not context.set_input_shape(tensor.name, tuple(shapes[tensor.name])):
            raise PipelineError(f"input '{tensor.name}' cannot have shape {list(shapes[tensor.name])} in profile "
                                f"{profile}: {session.trt_error('outside the profile')}")


def bind(session: Session) -> dict[str, tuple[int, ...]]:
    """A device buffer for every I/O tensor at its current shape, and its address given to the context."""
    shapes = {}
    for tensor in session.tensors:
        shape = tuple(session.context.get_tensor_shape(tensor.name))
        if any(dim < 0 for dim in shape):
            raise PipelineError(f"output '{tensor.name}' has a data-dependent shape {list(shape)}; infer and bench "
                                "need shapes known from the inputs")
        buffer = session.buffers.get(tensor.name)
        if buffer is None:
            buffer = session.buffers[tensor.name] = session.device.array(shape, tensor.dtype)
        buffer.resize(shape)
        if not session.context.set_tensor_address(tensor.name, buffer.ptr):
            raise PipelineError(f"cannot bind '{tensor.name}': {session.trt_error('set_tensor_address failed')}")
        shapes[tensor.name] = shape
    return shapes


def execute(session: Session) -> None:
    if not session.context.execute_async_v3(session.stream.ptr):
        raise PipelineError(f"execute_async_v3 failed: {session.trt_error('no message from TensorRT')}")


# ---------------------------------------------------------------- inference and benchmarking


def infer(session: Session, feed: Mapping[str, Any], profile: int = 0) -> dict[str, Any]:
    """Copy the inputs in, run once, copy every output back; returns name -> numpy array."""
    import numpy as np

    host = {t.name: np.ascontiguousarray(feed[t.name], dtype=t.dtype) for t in session.inputs if t.name in feed}
    set_input_shapes(session, {name: array.shape for name, array in host.items()}, profile)
    shapes = bind(session)
    for name, array in host.items():
        session.buffers[name].copy_from(array, session.stream)
    execute(session)
    outputs = {t.name: np.empty(shapes[t.name], dtype=t.dtype) for t in session.outputs}
    for name, array in outputs.items():
        session.buffers[name].copy_to(array, session.stream)
    session.stream.synchronize()
    return outputs


def random_inputs(session: Session, shapes: Mapping[str, tuple[int, ...]], seed: int = 0) -> dict[str, Any]:
    """Seeded inputs in [0, 1): values do not change an engine's speed, only its shapes and types do."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {t.name: (rng.random(shapes[t.name]) if t.dtype.kind == "f" else rng.integers(0, 2, shapes[t.name]))
            .astype(t.dtype) for t in session.inputs}


def bench(session: Session, profile: int, iterations: int, warmup: int,
          clock: Callable[[], float] = time.perf_counter) -> dict:
    """Latency of execute + synchronize at the profile's opt shapes (inputs stay on the device), after warm-up."""
    shapes = opt_shapes(session, profile)
    infer(session, random_inputs(session, shapes), profile)  # shapes set, buffers bound, inputs copied once
    for _ in range(warmup):
        execute(session)
        session.stream.synchronize()
    times = []
    for _ in range(iterations):
        start = clock()
        execute(session)
        session.stream.synchronize()
        times.append(clock() - start)
    return {"profile": profile, "shapes": {name: list(shape) for name, shape in shapes.items()},
            "warmup": warmup, **latency_stats(times)}


def latency_stats(seconds: Sequence[float]) -> dict:
    """p50/p90/p99/mean/min/max in milliseconds and throughput in inferences per second."""
    import numpy as np

    if not seconds:
        raise PipelineError("bench needs at least one timed iteration (--iterations >= 1)")
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p90, p99 = (float(round(v, 4)) for v in np.percentile(ms, [50, 90, 99]))
    return {"iterations": len(ms), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
            "mean_ms": round(float(ms.mean()), 4), "min_ms": round(float(ms.min()), 4),
            "max_ms": round(float(ms.max()), 4), "throughput_qps": round(1000.0 * len(ms) / float(ms.sum()), 2)}


# ---------------------------------------------------------------- files in and out


def read_inputs(pairs: Sequence[str], engine_inputs: Mapping[str, dict]) -> dict[str, Any]:
    """`name=file.npy` pairs -> arrays, checked against the engine's inputs (names and ranks) before any CUDA."""
    import numpy as np

    feed = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise PipelineError(f"--input {pair!r}: expected NAME=FILE.npy")
        if name not in engine_inputs:
            raise PipelineError(f"--input {name}: the engine has no input '{name}'; its inputs are "
                                f"{', '.join(engine_inputs)}")
        try:
            feed[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise PipelineError(f"--input {name}: cannot read {path} as a .npy array: {error}") from None
        rank = len(engine_inputs[name]["shape"])
        if feed[name].ndim != rank:
            raise PipelineError(f"--input {name}: {path} has shape {list(feed[name].shape)}; the engine input has "
                                f"rank {rank} {engine_inputs[name]['shape']}")
    missing = [name for name in engine_inputs if name not in feed]
    if missing:
        raise PipelineError(f"missing --input for {', '.join(missing)}", hint="pass --input NAME=FILE.npy for each")
    return feed


def write_outputs(outputs: Mapping[str, Any], directory: Path) -> dict[str, Path]:
    """One `<output>.npy` per output (names made file-safe); returns name -> path."""
    import numpy as np

    directory = Path(directory)
    written = {}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, array in outputs.items():
            path = directory / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.npy"
            np.save(path, array, allow_pickle=False)
            written[name] = path
    except OSError as error:
        raise PipelineError(f"--output-dir {directory}: cannot write outputs: {error.strerror}") from None
    return written
