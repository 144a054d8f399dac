"""What a node offers, from its GPU probe, and the `trt-pipeline worker` command that advertises it."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.nightly.farm import _feasible, build_needs, pair_needs, validation_needs
from pipeline.nightly.resources import offered, parse_resources, ray_start
from pipeline.trt.backend import Backend
from pipeline.trt.gpu import Gpu, Probe
from pipeline.trt.target import resolve


def test_each_gpu_offers_its_compute_capability_gpu_and_with_full_tensorrt_its_tag() -> None:
    two = Probe(True, (Gpu("NVIDIA L4", "8.9"), Gpu("NVIDIA L4", "8.9"), Gpu("NVIDIA A100-SXM4-80GB", "8.0")), None)
    assert offered(two) == {"sm89": 2, "gpu": 3, "sm80": 1}
    assert offered(two, "10.9.0.34") == {"sm89": 2, "gpu": 3, "sm80": 1, "nvidia-l4.sm89.trt-10.9.0": 2,
                                         "nvidia-a100-sxm4-80gb.sm80.trt-10.9.0": 1}
    assert offered(Probe(False, (), "no CUDA driver")) == {}  # a CPU node builds TensorRT-RTX engines


def test_what_builds_and_validations_ask_for() -> None:
    rtx = Backend("tensorrt-rtx", lambda: None, "1.7.1.116")
    full = Backend("tensorrt", lambda: None, "10.9.0.34")
    assert build_needs(rtx, "sm89") == {} and build_needs(rtx, "local") == {"gpu": 1}
    assert build_needs(full, "sm80") == {"sm80": 1}
    assert validation_needs({"target": {"tag": "sm89.rtx-1.7.1"}}) == {"sm89": 1}
    assert validation_needs({"target": {"tag": "nvidia-a100-sxm4-80gb.sm80.trt-10.9.0"}}) == \
        {"nvidia-a100-sxm4-80gb.sm80.trt-10.9.0": 1}


def test_full_tensorrt_pairs_ask_for_the_gpu_they_build_on_and_its_validation_for_the_full_tag() -> None:
    """Full TensorRT builds for the GPU it runs on: 'local' needs a node with a GPU, 'sm80' one with an sm80 GPU,
    and the engine's validation the node whose GPU model and TensorRT match the tag. Each request is met by what
    `trt-pipeline worker` offers on such a node, and by no node without that GPU."""
    full = Backend("tensorrt", lambda: None, "10.9.0.34")
    a100 = Probe(True, (Gpu("NVIDIA A100-SXM4-80GB", "8.0"),), None)
    l4 = Probe(True, (Gpu("NVIDIA L4", "8.9"),), None)
    nodes = {name: {"Resources": {"CPU": 4, "memory": 16 << 30, **offered(probe, full.version)}}
             for name, probe in (("a100", a100), ("l4", l4))}
    nodes["cpu"] = {"Resources": {"CPU": 8, "memory": 32 << 30, **offered(Probe(False, (), "none"))}}

    def fits(needs: dict) -> set[str]:
        return {name for name, node in nodes.items() if _feasible(needs, [node])}

    local, sm80 = pair_needs(full, "local", 1 << 30), pair_needs(full, "sm80", 1 << 30)
    assert local == {"CPU": 1, "memory": 1 << 30, "gpu": 1} and sm80 == {"CPU": 1, "memory": 1 << 30, "sm80": 1}
    assert fits(local) == {"a100", "l4"} and fits(sm80) == {"a100"}
    for probe, node in ((a100, "a100"), (l4, "l4")):  # 'local' as the node that built it resolves it
        check = validation_needs({"target": {"tag": resolve("local", full, probe).tag}})
        assert check == {f"{probe.gpus[0].slug}.{probe.gpus[0].sm}.trt-10.9.0": 1} and fits(check) == {node}
    assert fits(pair_needs(Backend("tensorrt-rtx", lambda: None, "1.7.1.116"), "sm80", 1 << 30)) == set(nodes)


def test_resources_and_the_ray_start_command() -> None:
    assert parse_resources('{"sm89": 1, "x": 0.5}') == {"sm89": 1.0, "x": 0.5}
    with pytest.raises(PipelineError, match=r"--resources: expected a JSON object"):
        parse_resources("sm89=1")
    with pytest.raises(PipelineError, match=r"--resources: expected names mapped to amounts >= 0"):
        parse_resources('{"sm89": "one"}')
    command = ray_start("10.0.0.1:6379", {"sm89": 1.0}, 4, "gpu-1", True, ("--object-store-memory=1000000",))
    assert command[1:] == ["start", "--address=10.0.0.1:6379", '--resources={"sm89": 1.0}', "--num-cpus=4",
                           "--node-name=gpu-1", "--block", "--object-store-memory=1000000"]


def test_worker_dry_run_shows_what_it_would_offer(capsys: pytest.CaptureFixture) -> None:
    assert main(["--json", "worker", "--address", "127.0.0.1:6379", "--resources", '{"sm120": 1}', "--name", "n1",
                 "--scratch", "/tmp/s", "--dry-run", "--", "--object-store-memory=100000000"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["resources"]["sm120"] == 1 and shown["scratch"] == "/tmp/s"
    assert shown["command"][1:] == ["start", "--address=127.0.0.1:6379", '--resources={"sm120": 1.0}',
                                    "--node-name=n1", "--object-store-memory=100000000"]
