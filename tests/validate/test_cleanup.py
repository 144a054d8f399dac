"""pipeline.validate.cleanup: what reaches the terminal while the cleanup check runs ONNX Runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parents[2]


def warning_model(path: Path) -> Path:
    """Declares output y as [1, 4] while it is [batch, 4]: ONNX Runtime warns 'VerifyOutputSizes' on each run. An
    unused initializer gives graph-cleanup something to drop, so the cleanup check runs."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    unused = helper.make_tensor("unused", TensorProto.FLOAT, [1], [0.0])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y], [unused])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_runtime_warnings_reach_the_terminal_only_with_verbose(tmp_path: Path) -> None:
    recipe = tmp_path / "warn.yaml"
    recipe.write_text(f"name: warn\nversion: 1.0.0\nmodel: {{path: {warning_model(tmp_path / 'warn.onnx')}}}\n"
                      "targets: [sm89]\nstages:\n  - parse: {}\n  - graph-cleanup: {}\n  - network-flag: {}\n"
                      "  - memory-pool: {workspace: 64MiB}\n  - serialize:\n      profiles:\n"
                      "        - x: {min: [1, 4], opt: [2, 4], max: [4, 4]}\n")

    def build(*flags: str) -> str:
        done = subprocess.run([sys.executable, "-m", "pipeline", *flags, "--store", str(tmp_path / "store"), "build",
                               str(recipe), "--force"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert "onnxruntime" not in build()
    assert "VerifyOutputSizes" in build("-v")
