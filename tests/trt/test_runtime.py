"""pipeline.trt.runtime: can this machine run an artifact, and the inference path.

The probe and the decision run for real on this CPU-only machine. The binding logic (profiles, input shapes,
set_tensor_address for every tensor, copies, execute_async_v3, synchronize) runs against a small stand-in for
the GPU side (device memory and an execution context); the real path runs in the `gpu` tests, which skip here
with the probe's reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline import cli
from pipeline.errors import CannotRunHere, PipelineError
from pipeline.manifest import Manifest
from pipeline.trt import backend as backends
from pipeline.trt import gpu
from pipeline.trt import runtime as engine
from pipeline.trt.gpu import Gpu, Probe
from tests.needs_gpu import needs_gpu
from tests.test_manifest import sample

RTX_4090 = Gpu("NVIDIA GeForce RTX 4090", "8.9")
H100 = Gpu("NVIDIA H100 80GB HBM3", "9.0")


def manifest(backend: str = "tensorrt-rtx", cc: str = "8.9", tag: str = "sm89.rtx-1.7.1",
             version: str = "1.7.1.116") -> Manifest:
    data = sample()
    data["backend"] = {"name": backend, "version": version}
    data["target"].update(tag=tag, compute_capability=cc)
    return Manifest.from_dict(data, Path("manifest.json"))


def with_gpu(*gpus: Gpu) -> Probe:
    return Probe(True, gpus, None)


# ---------------------------------------------------------------- the probe and the decision


def test_probe_on_this_machine_says_no_cuda_driver() -> None:
    probe = gpu.probe()
    if probe.driver:
        pytest.skip("this machine has a CUDA driver; the gpu tests cover it")
    assert probe.reason is not None and "no CUDA driver" in probe.reason
    with pytest.raises(CannotRunHere) as caught:
        engine.runnable_gpu(manifest(), probe)
    assert str(caught.value) == f"cannot run tiny@1.0.0+1 [sm89.rtx-1.7.1] here: {probe.reason}"
    assert caught.value.exit_code == 2
    assert caught.value.reason == probe.reason  # the why alone, as validation records it


def test_no_driver_is_reported_first() -> None:
    def no_driver() -> None:
        raise OSError("libcuda.so.1: cannot open shared object file")

    probe = gpu.probe(load_driver=no_driver)
    assert engine.why_not("tensorrt-rtx", "8.9", probe) == \
        "no CUDA driver on this machine (libcuda.so.1 cannot be loaded)"


def test_driver_without_a_visible_gpu() -> None:
    probe = gpu.probe(load_driver=lambda: None, query=lambda: "")
    assert engine.why_not("tensorrt-rtx", "8.9", probe) == "CUDA driver found but no GPU is visible"


def test_rtx_refuses_hopper() -> None:
    reason = engine.why_not("tensorrt-rtx", "9.0", with_gpu(H100))
    assert reason is not None
    assert reason.startswith("TensorRT-RTX does not support this GPU, NVIDIA H100 80GB HBM3 (compute capability 9.0)")


def test_rtx_needs_the_tags_compute_capability() -> None:
    assert engine.why_not("tensorrt-rtx", "8.6", with_gpu(RTX_4090)) == \
        "the engine is for compute capability 8.6, but this GPU, NVIDIA GeForce RTX 4090, is 8.9"


def test_full_tensorrt_needs_the_same_gpu_generation() -> None:
    assert engine.why_not("tensorrt", "9.0", with_gpu(H100)) is None
    assert "compute capability 9.0" in engine.why_not("tensorrt", "9.0", with_gpu(RTX_4090))


def test_runnable_gpu_returns_gpu_zero() -> None:
    assert engine.runnable_gpu(manifest(), with_gpu(RTX_4090, H100)) == RTX_4090
    with pytest.raises(CannotRunHere, match="NVIDIA H100"):
        engine.runnable_gpu(manifest(), with_gpu(H100, RTX_4090))


def test_runtime_backend_must_be_the_version_that_built_the_engine(rtx: backends.Backend) -> None:
    assert engine.runtime_backend(manifest(version=rtx.version)).name == "tensorrt-rtx"
    with pytest.raises(CannotRunHere, match=r"built with tensorrt-rtx 1\.6\.0\.1 and this machine has 1\.7") as caught:
        engine.runtime_backend(manifest(version="1.6.0.1"))
    assert caught.value.reason.startswith("it was built with tensorrt-rtx 1.6.0.1 and this machine has 1.7")


def test_runtime_backend_missing_is_cannot_run_here() -> None:
    def importer(name: str) -> Any:
        raise ImportError(f"No module named '{name}'")

    with pytest.raises(CannotRunHere, match="backend 'tensorrt' cannot be imported") as caught:
        engine.runtime_backend(manifest(backend="tensorrt"), load=lambda name: backends.load(name, importer))
    assert caught.value.reason.startswith("backend 'tensorrt' cannot be imported")


# ---------------------------------------------------------------- the real TensorRT-RTX runtime on this machine


@pytest.fixture(scope="module")
def rtx() -> backends.Backend:
    return backends.load("tensorrt-rtx")


@pytest.fixture
def tiny_plan(tiny_recipe: Path, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    assert cli.main(["-q", "--store", str(store), "build", str(tiny_recipe)], environ={}) == 0
    (plan,) = store.glob("tiny/1.0.0/*/engine.plan")
    return plan


def test_deserializing_without_a_gpu_is_one_clear_error(rtx: backends.Backend, tiny_plan: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real path on this machine: Polygraphy pointed at TensorRT-RTX, Runtime, deserialize_cuda_engine."""
    import polygraphy.config

    if gpu.probe().driver:
        pytest.skip("this machine has a CUDA driver")
    monkeypatch.setattr(polygraphy.config, "USE_TENSORRT_RTX", polygraphy.config.USE_TENSORRT_RTX)
    environ: dict[str, str] = {}
    with pytest.raises(PipelineError) as caught:
        with engine.open_session(rtx, tiny_plan, environ, logging.getLogger("test")):
            pytest.fail("deserialized an engine without a GPU")
    message = str(caught.value)
    assert message.startswith(f"{rtx.label()} could not deserialize the engine: ")
    assert "cudaError 35" in message and "\n" not in message
    assert environ == {"POLYGRAPHY_USE_TENSORRT_RTX": "1"}


# ---------------------------------------------------------------- binding logic, against a GPU stand-in


class FakeArray:
    """Device memory stand-in: polygraphy.cuda.DeviceArray's interface over a numpy array."""

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: Any) -> None:
        self.ptr, self.dtype, self.data, self.freed = ptr, np.dtype(dtype), np.zeros(shape, dtype), False

    def resize(self, shape: tuple[int, ...]) -> FakeArray:
        self.data = np.zeros(shape, self.dtype)
        return self

    def copy_from(self, host: np.ndarray, stream: Any = None) -> FakeArray:
        self.data = host.copy()
        return self

    def copy_to(self, host: np.ndarray, stream: Any = None) -> np.ndarray:
        host[...] = self.data
        return host

    def free(self) -> None:
        self.freed = True


class FakeStream:
    ptr = 0x5EED

    def __init__(self) -> None:
        self.syncs, self.freed = 0, False

    def synchronize(self) -> None:
        self.syncs += 1

    def free(self) -> None:
        self.freed = True


class FakeDevice:
    def __init__(self) -> None:
        self.arrays: dict[int, FakeArray] = {}
        self.streams: list[FakeStream] = []

    def array(self, shape: tuple[int, ...], dtype: Any) -> FakeArray:
        array = FakeArray(0x1000 + 0x100 * len(self.arrays), shape, dtype)
        self.arrays[array.ptr] = array
        return array

    def stream(self) -> FakeStream:
        self.streams.append(FakeStream())
        return self.streams[-1]


PROFILES = [((1, 4), (8, 4), (64, 4)), ((65, 4), (128, 4), (256, 4))]


class FakeContext:
    """IExecutionContext's interface; 'runs' y = 2 * x + active profile by reading the bound addresses."""

    def __init__(self, device: FakeDevice, trt: Any) -> None:
        self.device, self.trt = device, trt
        self.active_optimization_profile = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.calls: list[str] = []

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self.calls.append(f"profile {index}")
        self.active_optimization_profile = index
        self.shapes.clear()
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        low, _, high = PROFILES[self.active_optimization_profile]
        ok = all(a <= d <= b for a, d, b in zip(low, shape, high)) and len(shape) == 2
        if ok:
            self.shapes[name] = tuple(shape)
        return ok

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes.get("x", (-1, 4))

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        self.calls.append("execute")
        x, y = (self.device.arrays[self.addresses[name]] for name in ("x", "y"))
        y.data = 2 * x.data + self.active_optimization_profile
        return True


class FakeEngine:
    """ICudaEngine's interface for x float32 [-1, 4] -> y float32 [-1, 4], with two profiles."""

    num_optimization_profiles = len(PROFILES)
    num_io_tensors = 2

    def __init__(self, trt: Any, device: FakeDevice, shape_tensor: bool = False) -> None:
        self.trt, self.device, self.shape_tensor = trt, device, shape_tensor

    def get_tensor_name(self, index: int) -> str:
        return ("x", "y")[index]

    def get_tensor_mode(self, name: str) -> Any:
        return self.trt.TensorIOMode.INPUT if name == "x" else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> Any:
        return self.trt.DataType.FLOAT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, 4)

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple:
        return PROFILES[profile]

    def is_shape_inference_io(self, name: str) -> bool:
        return self.shape_tensor

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self.device, self.trt)


@pytest.fixture
def session(rtx: backends.Backend) -> engine.Session:
    device = FakeDevice()
    return engine.session_for(FakeEngine(rtx.trt, device), rtx.trt, device)


def test_io_tensors_use_tensorrts_own_types(session: engine.Session) -> None:
    assert session.tensors == (engine.Tensor("x", True, np.dtype("float32"), (-1, 4)),
                               engine.Tensor("y", False, np.dtype("float32"), (-1, 4)))


def test_infer_binds_every_tensor_and_copies_out(session: engine.Session) -> None:
    x = np.arange(12, dtype=np.float64).reshape(3, 4)  # cast to the engine's dtype on the way in
    outputs = engine.infer(session, {"x": x})
    np.testing.assert_array_equal(outputs["y"], 2 * x)
    assert outputs["y"].dtype == np.float32
    assert set(session.context.addresses) == {"x", "y"}
    assert session.context.calls == ["execute"]  # profile 0 is already active
    assert session.stream.syncs == 1


def test_infer_selects_the_profile(session: engine.Session) -> None:
    x = np.ones((100, 4), np.float32)
    outputs = engine.infer(session, {"x": x}, profile=engine.profile_for(
        [{"x": {"min": list(p[0]), "opt": list(p[1]), "max": list(p[2])}} for p in PROFILES], {"x": x.shape}))
    assert session.context.calls == ["profile 1", "execute"]
    np.testing.assert_array_equal(outputs["y"], 2 * x + 1)


def test_infer_rejects_a_shape_outside_the_profile(session: engine.Session) -> None:
    with pytest.raises(PipelineError, match=r"input 'x' cannot have shape \[100, 4\] in profile 0"):
        engine.infer(session, {"x": np.ones((100, 4), np.float32)})


def test_infer_needs_every_input(session: engine.Session) -> None:
    with pytest.raises(PipelineError, match="no value for engine input 'x'"):
        engine.infer(session, {})


def test_shape_tensor_inputs_are_refused(rtx: backends.Backend) -> None:
    device = FakeDevice()
    with pytest.raises(PipelineError, match="'x' is a shape tensor"):
        engine.session_for(FakeEngine(rtx.trt, device, shape_tensor=True), rtx.trt, device)


def test_bench_times_execute_and_sync_after_warmup(session: engine.Session) -> None:
    ticks = iter(range(1000))
    result = engine.bench(session, profile=1, iterations=5, warmup=3, clock=lambda: next(ticks) * 0.001)
    assert result["shapes"] == {"x": [128, 4]}  # profile 1's opt shape
    assert session.context.calls.count("execute") == 1 + 3 + 5
    assert result["iterations"] == 5 and result["p50_ms"] == pytest.approx(1.0)
    assert result["throughput_qps"] == pytest.approx(1000.0)


def test_close_frees_buffers_and_stream(session: engine.Session) -> None:
    engine.infer(session, {"x": np.ones((2, 4), np.float32)})
    arrays, stream = list(session.buffers.values()), session.stream
    engine.close(session)
    assert all(a.freed for a in arrays) and stream.freed and not session.buffers


# ---------------------------------------------------------------- pure helpers


def test_profile_for_picks_the_first_profile_that_holds_the_shapes() -> None:
    profiles = [{"x": {"min": [1, 4], "opt": [8, 4], "max": [64, 4]}},
                {"x": {"min": [32, 4], "opt": [128, 4], "max": [256, 4]}}]
    assert engine.profile_for(profiles, {"x": (32, 4)}) == 0
    assert engine.profile_for(profiles, {"x": (65, 4)}) == 1
    assert engine.profile_for([], {"x": (3, 4)}) == 0
    with pytest.raises(PipelineError, match=r"no optimization profile accepts the input shapes x \[300, 4\]"):
        engine.profile_for(profiles, {"x": (300, 4)})


def test_latency_stats() -> None:
    stats = engine.latency_stats([0.001] * 98 + [0.002, 0.010])
    assert (stats["p50_ms"], stats["max_ms"], stats["iterations"]) == (1.0, 10.0, 100)
    assert stats["p99_ms"] == pytest.approx(2.08)
    assert stats["throughput_qps"] == pytest.approx(100 / 0.110, rel=1e-3)
    with pytest.raises(PipelineError, match="at least one timed iteration"):
        engine.latency_stats([])


def test_read_inputs_checks_names_files_and_ranks(tmp_path: Path) -> None:
    inputs = {"x": {"dtype": "float", "shape": [-1, 4]}}
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    np.save(tmp_path / "bad.npy", np.ones(4, np.float32))
    assert engine.read_inputs([f"x={tmp_path / 'x.npy'}"], inputs)["x"].shape == (2, 4)
    cases = {f"y={tmp_path / 'x.npy'}": "the engine has no input 'y'; its inputs are x",
             "x": "expected NAME=FILE.npy",
             f"x={tmp_path / 'missing.npy'}": "cannot read",
             f"x={tmp_path / 'bad.npy'}": "the engine input has rank 2"}
    for pair, message in cases.items():
        with pytest.raises(PipelineError, match=message):
            engine.read_inputs([pair], inputs)
    with pytest.raises(PipelineError, match="missing --input for x"):
        engine.read_inputs([], inputs)


def test_write_outputs_makes_file_safe_names(tmp_path: Path) -> None:
    written = engine.write_outputs({"out/0:1": np.arange(3)}, tmp_path / "out")
    assert written["out/0:1"].name == "out_0_1.npy"
    np.testing.assert_array_equal(np.load(written["out/0:1"]), np.arange(3))


# ---------------------------------------------------------------- the real path (GPU runners only)


@pytest.fixture
def local_plan(write_recipe: Callable[..., Path], tmp_path: Path) -> Path:
    """tiny, built for this machine's GPU with whichever TensorRT is installed."""
    recipe = write_recipe("name: tiny\nversion: 1.0.0\nmodel: {path: {models}/tiny.onnx}\nbackend: auto\n"
                          "targets: [local]\nstages:\n  - parse: {}\n  - network-flag: {}\n  - memory-pool: {}\n"
                          "  - serialize:\n      profiles:\n        - x: {min: [1, 4], opt: [8, 4], max: [64, 4]}\n")
    assert cli.main(["-q", "--store", str(tmp_path / "store"), "build", str(recipe)], environ={}) == 0
    (plan,) = (tmp_path / "store").glob("tiny/1.0.0/*/engine.plan")
    return plan


@needs_gpu
def test_infer_on_the_gpu_matches_onnxruntime(local_plan: Path, models_dir: Path) -> None:
    import onnxruntime

    backend = backends.load("auto")
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    with engine.open_session(backend, local_plan, {}, logging.getLogger("test")) as session:
        outputs = engine.infer(session, {"x": x})
    reference = onnxruntime.InferenceSession(str(models_dir / "tiny.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(outputs["y"], reference, atol=1e-3, rtol=1e-3)


@needs_gpu
def test_bench_on_the_gpu(local_plan: Path) -> None:
    with engine.open_session(backends.load("auto"), local_plan, {}, logging.getLogger("test")) as session:
        result = engine.bench(session, profile=0, iterations=20, warmup=5)
    assert result["shapes"] == {"x": [8, 4]} and 0 < result["p50_ms"] <= result["p99_ms"]



def test_the_runtime_loads_the_engines_plugin_libraries(not_a_plugin: Path) -> None:
    """Runtime() works without a GPU: loading a plugin library the engine was built with is exercised for real."""
    rtx = backends.load("tensorrt-rtx")
    logger = backends.make_logger(rtx, logging.getLogger("x"))
    with pytest.raises(PipelineError) as caught:
        engine.runtime_for(rtx, logger, [str(not_a_plugin)])
    assert str(caught.value) == (f"{rtx.label()} cannot load plugin library {not_a_plugin}, which the engine was "
                                 "built with")
    assert engine.runtime_for(rtx, logger) is not None


def test_an_unwritable_output_dir_is_one_line() -> None:
    with pytest.raises(PipelineError, match=r"^--output-dir /proc/no-outputs: cannot write outputs: "):
        engine.write_outputs({"y": np.zeros(2, np.float32)}, Path("/proc/no-outputs"))
