"""Nightlies on a real Ray cluster on this machine: a head and two worker nodes (separate `ray start`
processes), one offering sm89 (plain `ray start --resources`), one sm120 (`trt-pipeline worker`). There is no
GPU here, so validations record `skipped`; the node that ran each one proves the routing."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.digest import file_sha256
from pipeline.nightly import run as nightly
from pipeline.nightly.farm import Farm
from pipeline.nightly.task import Task
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


def building_node(cluster: LocalCluster, store: Path) -> str | None:
    """The node whose task is building in the store's handover directory (a box is named after the task
    process's pid; that process descends from the node's `ray start`)."""
    nodes = {node.process.pid: name for name, node in cluster.nodes.items()}
    for log in store.glob(".staging/handover-*/*/store/.staging/*/build.log"):
        pid = int(log.relative_to(store / ".staging").parts[1].split("-")[0])
        with contextlib.suppress(OSError, ValueError):
            while pid > 1 and pid not in nodes:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if pid in nodes:
            return nodes[pid]
    return None


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
    assert f"{found['two', 'sm89']['artifact']} (on {found['two', 'sm89']['built_on']} by path, validated on w89)" \
        in summary
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
    # every node here sees the driver's files: models used in place, artifacts handed over by path
    assert {(p["transport"], p["model_from"]) for p in remote["pairs"]} == {("path", "path")}
    assert manifest["build"]["transport"] == "path" and remote["cluster"]["transport"] == "auto"
    assert "used in place" in log and "fetched" not in log and "by path" in log


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
            victim = building_node(cluster, store.root)
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
    assert pair["built_on"] not in (victim, "head") and pair["transport"] == "path"
    assert [(a.ref, a.tag) for a in store.artifacts()] == [("resnet@1.0.0+1", "sm89.rtx-1.7.1")]  # once
    assert list((store.root / ".staging").iterdir()) == []


INTERRUPTED = """\
import sys
from pipeline.cli import main
from pipeline.digest import file_sha256
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


# ---------------------------------------------------------------- build --cluster, validate --cluster


def manifests(store: Path) -> dict[str, dict]:
    return {a.tag: a.manifest().to_dict() for a in Store(store).artifacts()}


def test_build_cluster_publishes_what_a_local_build_does_and_records_the_nodes(
        cluster: LocalCluster, tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture) -> None:
    recipes = tmp_path / "recipes"
    write(recipes, "two", models_dir / "two_input.onnx", TWO_INPUT_PROFILE, "[sm89, sm120]",
          "validate: {atol: 1.0e-3, rtol: 1.0e-3}\n")
    recipe = str(recipes / "two.yaml")
    assert main(["--store", str(tmp_path / "local"), "build", recipe]) == 0
    capsys.readouterr()
    assert main(["--store", str(tmp_path / "farm"), "--json", "build", recipe, "--cluster", cluster.address]) == 0
    out, err = capsys.readouterr()
    rows = {row["tag"]: row for row in json.loads(out)}
    local, remote = manifests(tmp_path / "local"), manifests(tmp_path / "farm")
    assert sorted(remote) == sorted(local) == ["sm120.rtx-1.7.1", "sm89.rtx-1.7.1"]
    for tag, manifest in remote.items():
        assert manifest["build"]["key"] == local[tag]["build"]["key"]  # the same build, made elsewhere
        assert manifest["engine"]["bytes"] == local[tag]["engine"]["bytes"]
        assert manifest["build"]["node"] == rows[tag]["built_on"] in ("w89", "w120")
        assert manifest["recipe"]["path"] == local[tag]["recipe"]["path"] == str((recipes / "two.yaml").resolve())
        assert manifest["model"] == local[tag]["model"]  # the driver's paths and hashes, as a local build records
        assert rows[tag]["ref"] == "two@1.0.0+1" and not rows[tag]["reused"]
    # each validation ran on the node offering the engine's GPU: skipped there (no GPU), as it is here
    assert remote["sm89.rtx-1.7.1"]["validation"]["node"] == rows["sm89.rtx-1.7.1"]["validated_on"] == "w89"
    assert remote["sm120.rtx-1.7.1"]["validation"]["node"] == "w120"
    assert {m["validation"]["status"] for m in remote.values()} == {"skipped"} == \
        {m["validation"]["status"] for m in local.values()}
    assert re.search(r"^\[built[^\]]*\] sm89 two@1\.0\.0\+1  on w(89|120) by path, validated on w89", err, re.M), err
    assert list((tmp_path / "farm" / ".staging").iterdir()) == []
    # unchanged: reused by source key, and nothing is sent to the cluster
    assert main(["--store", str(tmp_path / "farm"), "--json", "build", recipe, "--cluster", cluster.address]) == 0
    assert [row["reused"] for row in json.loads(capsys.readouterr().out)] == [True, True]
    assert [a.ref for a in Store(tmp_path / "farm").artifacts()] == ["two@1.0.0+1"] * 2


def test_validate_cluster_runs_on_the_node_offering_the_engines_gpu_and_says_which(
        cluster: LocalCluster, tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture) -> None:
    recipes = tmp_path / "recipes"
    write(recipes, "two", models_dir / "two_input.onnx", TWO_INPUT_PROFILE, "[sm86, sm120]",
          "validate: {atol: 1.0e-3, rtol: 1.0e-3}\n")
    store = str(tmp_path / "store")
    assert main(["--store", store, "build", str(recipes / "two.yaml")]) == 0  # here; validation skipped here
    capsys.readouterr()
    code = main(["--store", store, "--json", "validate", "two@1.0.0", "--tag", "sm120.rtx-1.7.1",
                 "--cluster", cluster.address])
    out, err = capsys.readouterr()
    assert code == 2  # the node runs no engine either (no GPU here): skipped, recorded, as without --cluster
    assert json.loads(out)["node"] == "w120"
    assert err.strip() == ("error: cannot validate two@1.0.0+1 [sm120.rtx-1.7.1] on w120: no CUDA driver on this "
                           "machine "
                           "(libcuda.so.1 cannot be loaded) (recorded as skipped)")
    recorded = manifests(tmp_path / "store")["sm120.rtx-1.7.1"]["validation"]
    assert recorded["node"] == "w120" and recorded["status"] == "skipped"
    # no node offers sm86: one line, after the bounded wait, and nothing recorded
    code = main(["--store", store, "validate", "two@1.0.0", "--tag", "sm86.rtx-1.7.1", "--cluster", cluster.address,
                 "--unschedulable-after", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[0].startswith("error: cannot validate two@1.0.0+1 [sm86.rtx-1.7.1] on the cluster: no node of the "
                             "cluster offers CPU=1, sm86=1 (waited 1s)")
    assert "node" not in manifests(tmp_path / "store")["sm86.rtx-1.7.1"]["validation"]


def test_plugin_libraries_travel_to_the_node_that_builds(cluster: LocalCluster, tmp_path: Path, models_dir: Path,
                                                         not_a_plugin: Path, capsys: pytest.CaptureFixture) -> None:
    """No plugin library can be built here (no TensorRT headers): a real library TensorRT loads and then refuses
    proves the bytes arrived whole and were handed to TensorRT on the node, which refuses them as it does here."""
    recipes = tmp_path / "recipes"
    (recipes / "lib").mkdir(parents=True)
    shutil.copy(not_a_plugin, recipes / "lib" / "libnoop.so")
    write(recipes, "plug", models_dir / "tiny.onnx", TINY_PROFILE, "[sm89]", "      plugins: [lib/libnoop.so]\n")
    recipe = str(recipes / "plug.yaml")
    assert main(["--store", str(tmp_path / "local"), "build", recipe]) == 1
    here = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("error: "))
    assert main(["--store", str(tmp_path / "farm"), "build", recipe, "--cluster", cluster.address]) == 1
    there = capsys.readouterr().err.strip().splitlines()[-1]
    found = re.fullmatch(r"failed: plug sm89: (network-flag: tensorrt-rtx \S+ cannot load plugin library "
                         r"(/\S+/jobs/[^/]+/files/plugins/0/libnoop.so): .*) \(log: \S+\)", there)
    assert found, there
    # TensorRT's own words about the node's copy, as about the original here
    assert found[1].replace(found[2], "LIB") == here[len("error: "):].replace(str(recipes / "lib" / "libnoop.so"), "LIB")
    log = Path(there.rsplit("(log: ", 1)[1].rstrip(")"))
    assert log.parent == tmp_path / "farm" / "_failed" and "cannot load plugin library" in log.read_text()


def test_a_timing_cache_travels_and_what_the_build_added_comes_back_through_the_driver(
        cluster: LocalCluster, tmp_path: Path, models_dir: Path) -> None:
    """TensorRT-RTX cannot time tactics without a GPU, so no build here grows a cache: the node's part (the
    cache fetched beside the build, what the build wrote read back) runs as on a node, with the growth written
    by hand, and the driver's part writes it back, or drops it when the file changed here meanwhile."""
    import ray

    from pipeline.build.plan import load_recipe
    from pipeline.nightly.farm import Flight
    from pipeline.nightly.node import USER_FILES, BuildJob, _grown_cache, with_user_files

    recipes = tmp_path / "recipes"
    write(recipes, "timed", models_dir / "tiny.onnx", TINY_PROFILE, "[sm89]",
          "      timing_cache: {path: caches/t.cache}\n")
    cache = recipes / "caches" / "t.cache"
    cache.parent.mkdir()
    cache.write_bytes(b"first night")
    recipe, _ = load_recipe(recipes / "timed.yaml")
    task = Task(str(recipes / "timed.yaml"), "timed", ("sm89",), str(tmp_path / "store"), False, NO_GPU,
                str(tmp_path), str(cache))
    with Farm.connect(cluster.address) as farm:
        for night, (grown, meanwhile) in enumerate([(b"second night", None), (b"third night", b"edited here")]):
            flight = Flight(task, recipe, {}, {})
            job = BuildJob(task, task.recipe_file, b"", None, {}, farm._user_files(flight))  # type: ignore[arg-type]
            work = tmp_path / f"node-{night}"
            there = with_user_files(recipe, work / USER_FILES, job.files, ray.get).spec("serialize").timing_cache
            assert there.path.read_bytes() == cache.read_bytes() and there.path.is_relative_to(work)
            assert _grown_cache(job, work) is None  # unchanged: nothing goes back
            there.path.write_bytes(grown)  # what TensorRT's save_timing_cache does on a GPU node
            if meanwhile:
                cache.write_bytes(meanwhile)
            record = farm._timing_cache(flight, _grown_cache(job, work))
            assert cache.read_bytes() == (meanwhile or grown)
            assert (record["before"], record["after"]) == (flight.user["timing_cache/t.cache"], file_sha256(cache))
            assert ("dropped" in record["line"]) == bool(meanwhile)


def test_files_go_through_the_object_store_when_forced_or_when_the_token_does_not_match(
        cluster: LocalCluster, tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture) -> None:
    recipes = tmp_path / "recipes"
    write(recipes, "two", models_dir / "two_input.onnx", TWO_INPUT_PROFILE, "[sm89, sm120]",
          "validate: {atol: 1.0e-3, rtol: 1.0e-3}\n")
    write(recipes, "tiny", models_dir / "tiny.onnx", TINY_PROFILE, "[sm89]")
    local = nightly.run(recipes, Store(tmp_path / "local"), jobs=2, probe=NO_GPU)
    # forced, as a user forces it
    code = main(["--store", str(tmp_path / "forced"), "--json", "nightly", str(recipes), "--cluster", cluster.address,
                 "--transport", "object-store"])
    forced = json.loads(capsys.readouterr().out)
    assert code == 0 and forced["cluster"]["transport"] == "object-store"
    # a directory at the handover's path, but not the driver's token: the nodes must not use it
    store = Store(tmp_path / "mismatch")
    with Farm.connect(cluster.address) as farm:
        handover = farm.handover(store.root)
        assert handover is not None and Path(handover.path).parent == store.root / ".staging"
        (Path(handover.path) / "token").write_text("0" * 32)
        mismatch = nightly.run(recipes, store, probe=NO_GPU, executor=farm)
    assert list((store.root / ".staging").iterdir()) == []  # the handover directory goes with the connection

    def same(report: dict) -> dict:
        return {k: (p["status"], p.get("artifact"), p.get("tag"), p.get("build_key"), p.get("engine_bytes"),
                    (p.get("validation") or {}).get("status")) for k, p in pairs(report).items()}

    assert same(forced) == same(mismatch) == same(local)
    assert pairs(forced)["tiny", "sm89"]["engine_sha256"] == pairs(mismatch)["tiny", "sm89"]["engine_sha256"] == \
        pairs(local)["tiny", "sm89"]["engine_sha256"]  # a tiny engine is byte-identical build after build
    assert {p["transport"] for p in forced["pairs"] + mismatch["pairs"]} == {"object-store"}
    assert {p["model_from"] for p in forced["pairs"]} <= {"object-store", "cache"}  # no stamps were sent
    # with a wrong token, the model's path is trusted only after its sha256 matched the driver's
    assert {p["model_from"] for p in mismatch["pairs"]} == {"path"}
    assert {a.manifest().to_dict()["build"]["transport"] for a in store.artifacts()} == {"object-store"}
    assert "not seen here" in Path(pairs(mismatch)["tiny", "sm89"]["log"]).read_text()
    with pytest.raises(SystemExit):
        main(["nightly", "--help"])
    assert "object-store: always through the object store" in " ".join(capsys.readouterr().out.split())
