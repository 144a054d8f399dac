"""gpu: what GPU this machine has, from the driver library and nvidia-smi, without touching CUDA memory."""

from __future__ import annotations

import ctypes
import subprocess

import pytest

from pipeline.trt import gpu
from pipeline.trt.gpu import Gpu, Probe


def driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def loads() -> None:
    """A driver library that loads."""


def test_probe_on_this_machine_reports_no_driver() -> None:
    if driver_present():
        pytest.skip("this machine has a CUDA driver; the test is for the CPU-only build machines")
    assert gpu.probe() == Probe(False, (), "no CUDA driver on this machine (libcuda.so.1 cannot be loaded)")
    assert gpu.probe().gpu is None


def test_probe_parses_nvidia_smi_csv() -> None:
    csv = "NVIDIA H100 80GB HBM3, 9.0\nNVIDIA GeForce RTX 4090, 8.9\n\n"
    found = gpu.probe(load_driver=loads, query=lambda: csv)
    assert found == Probe(True, (Gpu("NVIDIA H100 80GB HBM3", "9.0"), Gpu("NVIDIA GeForce RTX 4090", "8.9")), None)
    assert found.gpu == Gpu("NVIDIA H100 80GB HBM3", "9.0")


def test_gpu_sm_and_slug() -> None:
    assert (Gpu("NVIDIA H100 80GB HBM3", "9.0").sm, Gpu("NVIDIA H100 80GB HBM3", "9.0").slug) == \
        ("sm90", "nvidia-h100-80gb-hbm3")
    assert Gpu("NVIDIA GeForce RTX 5090", "12.0").sm == "sm120"
    assert Gpu("NVIDIA RTX A6000 (ada)", "8.9").slug == "nvidia-rtx-a6000-ada"


def test_driver_load_failure_is_a_reason_not_an_exception() -> None:
    def no_driver() -> None:
        raise OSError("libcuda.so.1: cannot open shared object file")

    def never() -> str:
        raise AssertionError("nvidia-smi must not be asked when there is no driver")

    assert gpu.probe(load_driver=no_driver, query=never).reason == \
        "no CUDA driver on this machine (libcuda.so.1 cannot be loaded)"


def test_nvidia_smi_missing() -> None:
    def missing() -> str:
        raise FileNotFoundError("nvidia-smi")

    assert gpu.probe(load_driver=loads, query=missing) == \
        Probe(True, (), "CUDA driver found but no GPU could be listed (nvidia-smi)")


def test_nvidia_smi_failing() -> None:
    def failing() -> str:
        raise subprocess.CalledProcessError(9, ["nvidia-smi"])

    found = gpu.probe(load_driver=loads, query=failing)
    assert (found.driver, found.gpus) == (True, ())
    assert found.reason is not None and found.reason.startswith("CUDA driver found but no GPU could be listed (")


def test_no_gpu_visible() -> None:
    assert gpu.probe(load_driver=loads, query=lambda: "") == Probe(True, (), "CUDA driver found but no GPU is visible")


def test_a_gpu_without_a_compute_capability_is_reported_not_crashed() -> None:
    probe = gpu.probe(load_driver=lambda: None, query=lambda: "NVIDIA Mystery, [N/A]\n")
    assert probe == Probe(True, (), "CUDA driver found but no GPU reports a compute capability "
                                    "(nvidia-smi: NVIDIA Mystery, [N/A])")
