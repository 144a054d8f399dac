"""The validate, infer and bench commands, and build's validate step, through the real CLI entry point."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline import cli
from pipeline.stages import graph_cleanup
from pipeline.trt import gpu
from pipeline.trt import polygraphy as adapter
from pipeline.trt.gpu import Gpu, Probe
from pipeline.validate import artifact as validate
from tests.needs_gpu import needs_gpu
from tests.validate.test_artifact import CLEANUP_NEEDED, TWO_INPUT, shift_constant

NO_DRIVER = gpu.probe().driver is False
here_only = pytest.mark.skipif(not NO_DRIVER, reason="this machine has a CUDA driver; the gpu tests cover it")


@pytest.fixture(autouse=True)
def _restore_polygraphy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(adapter.RTX_ENV, raising=False)


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """run(*argv) -> (exit code, stdout, stderr), with a temp store."""

    def call(*argv: str) -> tuple[int, str, str]:
        code = cli.main(["--store", str(tmp_path / "store"), *argv], environ={})
        out, err = capsys.readouterr()
        return code, out, err

    return call


@pytest.fixture
def built(run: Callable[..., tuple[int, str, str]], write_recipe: Callable[..., Path]) -> Path:
    code, out, err = run("build", str(write_recipe(CLEANUP_NEEDED.replace("MODE", "1"))))
    assert code == 0, err
    return Path(out.strip())


@here_only
def test_build_with_a_validate_block_records_skipped_and_exits_0(run: Callable[..., tuple[int, str, str]],
                                                                  write_recipe: Callable[..., Path]) -> None:
    code, out, err = run("build", str(write_recipe(CLEANUP_NEEDED.replace("MODE", "1"))))
    assert code == 0
    (line,) = out.splitlines()  # stdout holds only the artifact directories
    manifest = json.loads((Path(line) / "manifest.json").read_text())
    assert manifest["cleanup_check"]["status"] == "passed"
    assert manifest["validation"]["status"] == "skipped" and "no CUDA driver" in manifest["validation"]["reason"]
    assert (Path(line) / "validation.json").is_file()
    assert f"[validate] sm89.rtx-1.7.1 skipped: {gpu.probe().reason}" in err


def test_build_exits_1_when_validation_ran_and_failed(run: Callable[..., tuple[int, str, str]],
                                                      write_recipe: Callable[..., Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU stand-in (probe and engine run) whose outputs differ: the build publishes, then exits 1."""
    def differs(artifact: Any, manifest: dict, spec: Any, environ: Any, log: Any,
                model: Any = None) -> list[dict]:
        row = {"max_abs": 0.5, "max_rel": 0.9, "atol": spec.atol, "rtol": spec.rtol, "passed": False}
        return [{"profile": 0, "shape": "opt", "inputs": {"x": [8, 16]}, "outputs": {"y": row}, "passed": False}]

    monkeypatch.setattr(gpu, "probe", lambda: Probe(True, (Gpu("NVIDIA GeForce RTX 4090", "8.9"),), None))
    monkeypatch.setattr(validate, "_engine_rows", differs)
    code, out, err = run("build", str(write_recipe(CLEANUP_NEEDED.replace("MODE", "1"))))
    assert code == 1
    (line,) = out.splitlines()
    assert json.loads((Path(line) / "manifest.json").read_text())["validation"]["status"] == "failed"
    assert "[validate] sm89.rtx-1.7.1 failed: output(s) y differ from ONNX Runtime" in err


def test_a_numerics_changing_cleanup_fails_the_build(run: Callable[..., tuple[int, str, str]],
                                                     write_recipe: Callable[..., Path],
                                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(graph_cleanup.PASSES, "toposort", shift_constant("head.bias", 0.5))
    code, out, err = run("-q", "build", str(write_recipe(TWO_INPUT)))
    assert (code, out) == (1, "")
    first, hint = err.splitlines()
    assert first.startswith("error: graph-cleanup: the cleaned graph changes the numerics of output(s) heatmap: ")
    assert hint.startswith("hint: a cleanup pass changed what the model computes")
    assert not list((tmp_path / "store").glob("two-input/*"))  # nothing published


@here_only
@pytest.mark.parametrize("command", [["validate"], ["bench"], ["infer", "--input", "x=X", "--output-dir", "OUT"]])
def test_gpu_commands_exit_2_here_with_one_line(command: list[str], built: Path,
                                                run: Callable[..., tuple[int, str, str]], tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((2, 16), np.float32))
    argv = [a.replace("X", str(tmp_path / "x.npy")).replace("OUT", str(tmp_path / "out")) for a in command]
    code, out, err = run(argv[0], "cleanup-needed@1.0.0", *argv[1:])
    verb = "validate" if argv[0] == "validate" else "run"
    suffix = " (recorded as skipped)" if argv[0] == "validate" else ""
    assert (code, out) == (2, "")
    assert err == f"error: cannot {verb} cleanup-needed@1.0.0+1 [sm89.rtx-1.7.1] here: {gpu.probe().reason}{suffix}\n"
    assert not (tmp_path / "out").exists()


@here_only
def test_validate_json_reports_skipped(built: Path, run: Callable[..., tuple[int, str, str]]) -> None:
    code, out, err = run("validate", str(built), "--json")
    report = json.loads(out)
    assert code == 2 and len(err.splitlines()) == 1
    assert (report["status"], report["path"], report["shapes"]) == ("skipped", str(built), ["min", "opt", "max"])
    assert report["tolerances"] == {"atol": 1e-4, "rtol": 1e-4, "outputs": {}}


def test_infer_checks_inputs_before_the_gpu(built: Path, run: Callable[..., tuple[int, str, str]],
                                            tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((2, 16), np.float32))
    code, out, err = run("infer", "cleanup-needed@1.0.0", "--input", f"mode={tmp_path / 'x.npy'}",
                         "--output-dir", str(tmp_path / "out"))
    assert (code, out, err) == (1, "", "error: --input mode: the engine has no input 'mode'; its inputs are x\n")


def test_bench_rejects_zero_iterations(built: Path, run: Callable[..., tuple[int, str, str]]) -> None:
    assert run("bench", "cleanup-needed@1.0.0", "--iterations", "0")[::2] == \
        (1, "error: --iterations must be >= 1 and --warmup >= 0\n")


# ---------------------------------------------------------------- on a GPU runner


@pytest.fixture
def built_here(run: Callable[..., tuple[int, str, str]], write_recipe: Callable[..., Path]) -> Path:
    recipe = CLEANUP_NEEDED.replace("MODE", "1").replace("backend: tensorrt-rtx", "backend: auto")
    code, out, err = run("build", str(write_recipe(recipe.replace("targets: [sm89]", "targets: [local]"))))
    assert code == 0, err
    return Path(out.strip())


@needs_gpu
def test_validate_infer_bench_on_the_gpu(built_here: Path, run: Callable[..., tuple[int, str, str]],
                                         tmp_path: Path) -> None:
    assert run("validate", str(built_here))[0] == 0
    np.save(tmp_path / "x.npy", np.ones((2, 16), np.float32))
    code, out, _ = run("infer", str(built_here), "--input", f"x={tmp_path / 'x.npy'}", "--output-dir",
                       str(tmp_path / "out"))
    assert code == 0 and np.load(out.strip()).shape == (2, 4, 4)
    code, out, _ = run("bench", str(built_here), "--iterations", "10", "--warmup", "2", "--json")
    assert code == 0 and json.loads(out)["results"][0]["shapes"] == {"x": [8, 16]}
