"""Nightlies on a real Ray cluster on this machine: a head and two worker nodes (separate `ray start`
processes), one offering sm89 (plain `ray start --resources`), one sm120 (`trt-pipeline worker`). There is no
GPU here, so validations record `skipped`; the node that ran each one proves the routing."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.nightly import run as nightly
from pipeline.nightly.farm import Farm
from pipeline.store import Store
from tests.nightly.cluster import ROOT, LocalCluster
from tests.nightly.test_run import NO_GPU, TINY_PROFILE, TWO_INPUT_PROFILE, recipe_text

pytest.importorskip("ray", reason="the cluster tests need Ray: pip install 'trt-pipeline[cluster]'")

RESNET_PROFILE = "        - input: {min: [1, 3, 224, 224], opt: [1, 3, 224, 224], max: [2, 3, 224, 224]}\n"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    farm = LocalCluster()
    try:
        farm.start_head(cpus=0)  # the head coordinates and holds the driver's objects; it builds nothing
        farm.add_ray_node("w89", {"sm89": 1})
        farm.add_worker("w120", {"sm120": 1})
        farm.wait_for(3)
        yield farm
    finally:
        farm.stop()


def write(folder: Path, name: str, model: Path, profiles: str, targets: str, extra: str = "") -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(recipe_text(name, model, profiles, extra=extra)
                                         .replace("targets: [sm86, sm89]", f"targets: {targets}"))


def pairs(report: dict) -> dict[tuple[str, str], dict]:
    return {(p["recipe"], p["target"]): p for p in report["pairs"]}


def jobs_left(cluster: LocalCluster) -> list[Path]:
    return [p for node in cluster.nodes.values() for p in (node.scratch / "jobs").glob("*")]


@contextlib.contextmanager
def driver_log() -> Iterator[list[str]]:
    """The farm driver's log messages (INFO), whatever the CLI tests did to the 'pipeline' logger."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    farm_log = logging.getLogger("pipeline.nightly.farm")
    level, farm_log.level = farm_log.level, logging.INFO
    farm_log.addHandler(handler)
    try:
        yield lines
    finally:
        farm_log.removeHandler(handler)
        farm_log.setLevel(level)


def test_builds_spread_validations_follow_the_gpu_resource_and_results_equal_the_local_executors(
        cluster: LocalCluster, tmp_path: Path, models_dir: Path) -> None:
    recipes = tmp_path / "recipes"
    validate = "validate: {atol: 1.0e-3, rtol: 1.0e-3}\n"
    write(recipes, "tiny", models_dir / "tiny.onnx", TINY_PROFILE, "[sm89, sm120]")
    write(recipes, "two", models_dir / "two_input.onnx", TWO_INPUT_PROFILE, "[sm89, sm120]", validate)
    write(recipes, "small", models_dir / "tiny.onnx", "        - x: {min: [1, 4], opt: [2, 4], max: [4, 4]}\n",
          "[sm89, sm120]")
    local = nightly.run(recipes, Store(tmp_path / "local"), jobs=2, probe=NO_GPU)
    with Farm.connect(cluster.address, unschedulable_after=5) as farm, driver_log() as lines:
        remote = nightly.run(recipes, Store(tmp_path / "farm"), probe=NO_GPU, executor=farm)

    def same(report: dict) -> dict:
        return {k: (p["status"], p.get("artifact"), p.get("tag"), p.get("build_key"), p.get("engine_bytes"),
                    (p.get("validation") or {}).get("status")) for k, p in pairs(report).items()}

    assert same(remote) == same(local)
    assert [p["status"] for p in remote["pairs"]].count("built") == 6 and remote["summary"]["ok"]
    # tiny's engines are byte-identical build after build (see test_serial_and_parallel_nights_...)
    assert [p["engine_sha256"] for p in remote["pairs"] if p["recipe"] == "tiny"] == \
           [p["engine_sha256"] for p in local["pairs"] if p["recipe"] == "tiny"]
    found = pairs(remote)
    assert {p["built_on"] for p in remote["pairs"]} == {"w89", "w120"}  # spread over both worker nodes
    assert found["two", "sm89"]["validated_on"] == "w89" and found["two", "sm120"]["validated_on"] == "w120"
    assert found["two", "sm89"]["validation"]["status"] == "skipped"  # routed right, but no GPU to run it
    assert "validated_on" not in found["tiny", "sm89"]  # no validate: block, no validation
    artifact = Store(tmp_path / "farm").resolve(found["two", "sm120"]["path"])
    manifest = artifact.manifest().to_dict()
    assert manifest["build"]["node"] == found["two", "sm120"]["built_on"]
    assert manifest["validation"]["node"] == "w120" and manifest["validation"]["status"] == "skipped"
    assert (artifact.path / "validation.json").is_file()
    summary = Path(remote["files"]["summary.md"]).read_text()  # and the HTML report: the same cells
    assert f"{found['two', 'sm89']['artifact']} (on {found['two', 'sm89']['built_on']}, validated on w89)" in summary
    assert remote["cluster"]["address"] == cluster.address
    assert {n["name"] for n in remote["cluster"]["nodes"]} == {"head", "w89", "w120"}
    assert list((tmp_path / "farm" / ".staging").iterdir()) == []
    assert jobs_left(cluster) == []  # every node removed its scratch directories
    log = Path(found["two", "sm89"]["log"]).read_text()
    assert "validated on w89" in log and "validated on w120" in log
    # a node that cannot run the engine fetches neither the engine nor the model to say so
    assert log.count("model two_input.onnx") == 1
    puts = [line for line in lines if "into the object store" in line]
    assert len(puts) == 2 and sum("tiny.onnx" in line for line in puts) == 1  # tiny and small share one model


def test_a_target_no_node_can_run_is_reported_unschedulable_after_a_bounded_wait(
        cluster: LocalCluster, tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """'local' needs a node with a GPU (none here); sm86 builds anywhere, but no node offers sm86 to validate it."""
    recipes = tmp_path / "recipes"
    write(recipes, "two", models_dir / "two_input.onnx", TWO_INPUT_PROFILE, "[sm86, local]",
          "validate: {atol: 1.0e-3}\n")
    started = time.monotonic()
    code = main(["--store", str(tmp_path / "store"), "nightly", str(recipes), "--cluster", cluster.address,
                 "--unschedulable-after", "2"])
    assert time.monotonic() - started < 60
    out, err = capsys.readouterr()
    assert code == 1
    report = nightly.nights(Store(tmp_path / "store"))[-1]
    found = pairs(report)
    assert found["two", "local"]["status"] == "unschedulable"
    assert found["two", "local"]["error"].startswith("no node of the cluster offers CPU=1, gpu=1, memory=")
    assert found["two", "sm86"]["status"] == "built"
    assert found["two", "sm86"]["validation"]["status"] == "unschedulable"
    assert "sm86=1" in found["two", "sm86"]["validation"]["reason"]
    assert report["summary"]["unschedulable"] == 2 and not report["summary"]["ok"]
    assert "unschedulable" in err and "two local" in err


def test_a_node_killed_mid_build_costs_an_attempt_and_the_pair_is_published_once(
        cluster: LocalCluster, tmp_path: Path, resnet50_path: Path) -> None:
    recipes = tmp_path / "recipes"
    write(recipes, "resnet", resnet50_path, RESNET_PROFILE, "[sm89]")
    store = Store(tmp_path / "store")
    result: dict = {}

    def night() -> None:
        with Farm.connect(cluster.address, unschedulable_after=30) as farm:
            result["report"] = nightly.run(recipes, store, probe=NO_GPU, executor=farm)

    thread = threading.Thread(target=night)
    thread.start()
    victim = None
    try:
        deadline = time.monotonic() + 60
        while victim is None and time.monotonic() < deadline and thread.is_alive():
            victim = next((name for name, node in cluster.nodes.items()
                           if list((node.scratch / "jobs").glob("*/store/.staging/*/build.log"))), None)
            time.sleep(0.02)
        assert victim, "the build never started"
        cluster.kill(victim)  # mid-build: its shared stages are running
        thread.join(120)
        assert not thread.is_alive()
    finally:
        if victim:  # the module's later tests (and the teardown) expect both nodes
            cluster.add_ray_node(victim, {"sm89": 1}) if victim == "w89" else cluster.add_worker(victim, {"sm120": 1})
            cluster.wait_for(3)
    (pair,) = result["report"]["pairs"]
    assert pair["status"] == "built" and pair["retried"] is True
    assert [a["node"] for a in pair["attempts"]] == [victim]
    assert "NodeDiedError" in pair["attempts"][0]["error"]
    assert pair["built_on"] not in (victim, "head")
    assert [(a.ref, a.tag) for a in store.artifacts()] == [("resnet@1.0.0+1", "sm89.rtx-1.7.1")]  # once
    assert list((store.root / ".staging").iterdir()) == []


INTERRUPTED = """\
import sys
from pipeline.cli import main
sys.exit(main(["--store", sys.argv[1], "nightly", sys.argv[2], "--cluster", sys.argv[3]]))
"""


def test_ctrl_c_cancels_the_tasks_and_publishes_nothing(cluster: LocalCluster, tmp_path: Path,
                                                         resnet50_path: Path) -> None:
    recipes = tmp_path / "recipes"
    write(recipes, "resnet", resnet50_path, RESNET_PROFILE, "[sm89, sm120]")
    store = tmp_path / "store"
    before = set(jobs_left(cluster))  # a killed node's directory waits for the next task on that node
    driver = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(store), str(recipes), cluster.address],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not set(jobs_left(cluster)) - before and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
        assert set(jobs_left(cluster)) - before, driver.communicate()[1]
        os.killpg(driver.pid, signal.SIGINT)
        _, err = driver.communicate(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, err
    assert err.splitlines()[-1] == "interrupted: nothing was published by the interrupted step"
    assert list(Store(store).artifacts()) == []
    assert list((store / ".staging").glob("*")) == [] and list((store / "_nightly").iterdir()) == []
    deadline = time.monotonic() + 15
    while set(jobs_left(cluster)) - before and time.monotonic() < deadline:  # cancelled tasks unwind on their nodes
        time.sleep(0.1)
    assert set(jobs_left(cluster)) - before == set()
