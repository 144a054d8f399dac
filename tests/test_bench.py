"""bench/run.py runs on the tiny model (--quick) and writes valid results. The real benchmark is `make bench`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


needs_polygraphy = pytest.mark.skipif(
    not (Path(sys.executable).parent / "polygraphy").is_file() and not shutil.which("polygraphy"),
    reason="the polygraphy command is not installed next to this Python or on PATH")


@needs_polygraphy
def test_quick_bench_writes_results(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--no-chart",
                           "--output", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["runs"] == 1
    assert {"cpu", "cores", "memory_bytes", "python", "packages"} <= set(results["machine"])
    assert [case["name"] for case in results["cases"]] == ["tiny-cold", "tiny-rebuild"]
    for case in results["cases"]:
        for tool in ("pipeline", "polygraphy"):
            assert case[tool]["median_wall_s"] > 0 and case[tool]["median_peak_rss_mib"] > 0
        assert case["ratio"]["wall"] > 0 and set(case["met"]) == {"wall", "peak_rss"}
    assert set(results["cases"][0]["pipeline"]["median_stage_s"]) == {
        "parse", "graph-cleanup", "network-flag", "memory-pool", "serialize"}
    assert not list(tmp_path.glob("*.png"))  # --no-chart


@needs_polygraphy
def test_quick_floor_times_every_mandatory_step(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "floor.py"), "--quick"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary, *steps = done.stdout.splitlines()
    assert summary.startswith("tiny MatMul model, cold build: floor ") and "ratio" in summary
    assert [line.split("  ")[1].strip() for line in steps] == [
        "imports", "read + sha256 model", "parse + checker", "graphsurgeon passes + export",
        "serialize + write + sha256 cleaned", "TensorRT parse + build", "write + sha256 engine"]
    assert list(tmp_path.iterdir()) == []  # the child's cleaned model and engine lived in a temporary directory


def test_quick_precision_bench_reports_time_size_and_accuracy_per_precision() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "precision.py"), "--quick"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)["precisions"]
    assert list(results) == ["fp32", "fp16", "int8"]
    for mode, row in results.items():
        assert row["build_s"] > 0 and row["engine_bytes"] > 0
        assert (row["convert_s"] > 0) == (mode != "fp32")
        assert set(row["accuracy_delta"]) == (set() if mode == "fp32" else {"y"})
    assert results["int8"]["calibration"]["source"] == "random"


def test_capacity_bisection_finds_the_boundary() -> None:
    """bench/capacity.py's bisection on a real predicate: every size up to 37 'builds'. The ends are probed first,
    then at most `steps` sizes in between; the answer brackets the boundary as tightly as the steps allow."""
    sys.path.insert(0, str(ROOT / "bench"))
    from capacity import bisect

    probed: list[int] = []

    def builds(size: int) -> bool:
        probed.append(size)
        return size <= 37

    assert bisect(8, 96, 10, builds) == (37, 38)
    assert probed[:2] == [8, 96] and len(probed) <= 12
    probed.clear()
    good, bad = bisect(8, 96, 2, builds)
    assert good is not None and bad is not None and good <= 37 < bad and len(probed) == 4
    assert bisect(8, 96, 4, lambda size: False) == (None, 8)
    assert bisect(8, 96, 4, lambda size: True) == (96, None)


@needs_polygraphy
def test_capacity_smoke_run_writes_results(tmp_path: Path) -> None:
    """Both tools on the matmul chain at a tiny width (1 and 2 layers of 64 x 64): every probe builds."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "capacity.py"), "--width", "64", "--min-layers", "1",
                           "--max-layers", "2", "--steps", "1", "--output", str(tmp_path), "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "capacity.json").read_text())
    assert [(p["tool"], p["layers"], p["ok"]) for p in results["probes"]] == [
        ("pipeline", 1, True), ("pipeline", 2, True), ("polygraphy", 1, True), ("polygraphy", 2, True)]
    assert results["tools"]["pipeline"]["largest_ok_bytes"] == 2 * 64 * 64 * 4 and results["ratio"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capacity.json"]  # models and stores deleted
