"""target: recipe targets -> concrete build targets and their GPU tags."""

from __future__ import annotations

import dataclasses
import types

import pytest
import tensorrt_rtx

from pipeline.errors import BackendError
from pipeline.trt.backend import Backend
from pipeline.trt.gpu import Gpu, Probe
from pipeline.trt.target import (
    Tag,
    Target,
    compute_capability,
    parse_tag,
    resolve,
    short_version,
    sm,
    tag,
)

RTX_VERSION = ".".join(tensorrt_rtx.__version__.split(".")[:3])
NO_GPU = Probe(False, (), "no CUDA driver on this machine (libcuda.so.1 cannot be loaded)")
H100 = Probe(True, (Gpu("NVIDIA H100 80GB HBM3", "9.0"),), None)
RTX4090 = Probe(True, (Gpu("NVIDIA GeForce RTX 4090", "8.9"),), None)


def full_tensorrt(version: str = "11.4.0.106") -> Backend:
    """Full TensorRT cannot be installed on these machines (its libraries come from NVIDIA's index), and it
    builds only for the GPU it runs on, which none of them has. Target naming only reads the backend's name and
    version, so a stand-in module with just a version exercises exactly that logic and nothing else."""
    return Backend("tensorrt", types.SimpleNamespace(__version__=version))


@pytest.mark.parametrize(("sm", "cc"), [("sm75", "7.5"), ("sm89", "8.9"), ("sm90", "9.0"), ("sm120", "12.0")])
def test_compute_capability(sm: str, cc: str) -> None:
    assert compute_capability(sm) == cc


def test_rtx_target_tag(rtx_backend: Backend) -> None:
    assert resolve("sm89", rtx_backend, NO_GPU) == Target("sm89", f"sm89.rtx-{RTX_VERSION}", "8.9", None, "sm89")
    assert resolve("sm120", rtx_backend, NO_GPU).tag == f"sm120.rtx-{RTX_VERSION}"


def test_rtx_tag_has_three_version_parts(rtx_backend: Backend) -> None:
    assert tensorrt_rtx.__version__.startswith(RTX_VERSION + ".")  # 1.7.1.116 -> 1.7.1
    assert resolve("sm86", rtx_backend, NO_GPU).tag.split(".rtx-")[1].count(".") == 2


def test_local_without_a_gpu(rtx_backend: Backend) -> None:
    with pytest.raises(BackendError) as caught:
        resolve("local", rtx_backend, NO_GPU)
    assert str(caught.value) == ("target 'local' means the GPU of this machine, but no CUDA driver on this machine "
                                 "(libcuda.so.1 cannot be loaded)")
    assert caught.value.hint == "name the targets instead, e.g. targets: [sm86, sm89]"


def test_local_with_an_rtx_gpu(rtx_backend: Backend) -> None:
    assert resolve("local", rtx_backend, RTX4090) == Target("local", f"sm89.rtx-{RTX_VERSION}", "8.9", None, "sm89")


def test_sm_the_backend_lacks_lists_the_supported_ones(rtx_backend: Backend) -> None:
    supported = ", ".join(sorted((m.lower() for m in tensorrt_rtx.ComputeCapability.__members__ if m.startswith("SM")),
                                 key=lambda m: int(m[2:])))
    assert "sm89" in supported and "sm90" not in supported
    with pytest.raises(BackendError) as caught:
        resolve("sm90", rtx_backend, NO_GPU)
    assert str(caught.value) == (f"tensorrt-rtx {tensorrt_rtx.__version__} cannot build for sm90; "
                                 f"it supports {supported}")


def test_local_hopper_on_rtx_is_refused(rtx_backend: Backend) -> None:
    with pytest.raises(BackendError, match="cannot build for sm90"):
        resolve("local", rtx_backend, H100)


def test_full_tensorrt_tag_names_the_local_gpu() -> None:
    expected = Target("local", "nvidia-h100-80gb-hbm3.sm90.trt-11.4.0", "9.0", "NVIDIA H100 80GB HBM3", "sm90")
    assert resolve("local", full_tensorrt(), H100) == expected
    assert resolve("sm90", full_tensorrt(), H100) == dataclasses.replace(expected, name="sm90")
    assert resolve("local", full_tensorrt("10.13.3.9"), H100).tag == "nvidia-h100-80gb-hbm3.sm90.trt-10.13.3"


def test_full_tensorrt_cannot_cross_build() -> None:
    with pytest.raises(BackendError) as caught:
        resolve("sm89", full_tensorrt(), H100)
    assert str(caught.value) == ("full TensorRT builds for the GPU it runs on; target sm89 is not buildable here: "
                                 "this machine's GPU is NVIDIA H100 80GB HBM3 (sm90)")
    assert caught.value.hint == "build on a machine with that GPU, or use targets: [local]"


def test_full_tensorrt_without_a_gpu() -> None:
    with pytest.raises(BackendError) as caught:
        resolve("sm90", full_tensorrt(), NO_GPU)
    assert str(caught.value) == ("full TensorRT builds for the GPU it runs on; target sm90 is not buildable here: "
                                 "no CUDA driver on this machine (libcuda.so.1 cannot be loaded)")


# ---------------------------------------------------------------- the one place tags are built and read


@pytest.mark.parametrize(("cc", "sm_"), [("7.5", "sm75"), ("8.9", "sm89"), ("9.0", "sm90"), ("12.0", "sm120")])
def test_sm_and_compute_capability_are_inverse(cc: str, sm_: str) -> None:
    assert (sm(cc), compute_capability(sm_)) == (sm_, cc)
    assert Gpu("any", cc).sm == sm_


def test_short_version() -> None:
    assert short_version("1.7.1.116") == "1.7.1" == short_version("1.7.1")
    assert full_tensorrt("10.9.0.34").short_version == "10.9.0"


@pytest.mark.parametrize(("built", "parsed"), [
    (tag("sm89", "tensorrt-rtx", "1.7.1.116"), Tag("sm89.rtx-1.7.1", "sm89", "tensorrt-rtx", "1.7.1", None)),
    (tag("sm80", "tensorrt", "10.9.0.34", "nvidia-a100-sxm4-80gb"),
     Tag("nvidia-a100-sxm4-80gb.sm80.trt-10.9.0", "sm80", "tensorrt", "10.9.0", "nvidia-a100-sxm4-80gb"))])
def test_a_built_tag_parses_back(built: str, parsed: Tag) -> None:
    assert parse_tag(built) == parsed
    assert parsed.compute_capability == compute_capability(parsed.sm)


def test_resolved_targets_use_the_tag_builder(rtx_backend: Backend) -> None:
    target = resolve("sm86", rtx_backend, NO_GPU)
    assert target.tag == tag("sm86", "tensorrt-rtx", rtx_backend.version)
    assert parse_tag(target.tag).sm == target.sm
    h100 = resolve("local", full_tensorrt(), H100)
    assert parse_tag(h100.tag) == Tag("nvidia-h100-80gb-hbm3.sm90.trt-11.4.0", "sm90", "tensorrt", "11.4.0",
                                      "nvidia-h100-80gb-hbm3")
