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
