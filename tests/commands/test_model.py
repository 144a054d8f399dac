"""`trt-pipeline inspect` and `trt-pipeline init`, through the CLI, on real models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import cli
from pipeline import recipe as recipes
from tests.build.test_support import custom_op_model


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_shows_io_with_dynamic_dims_by_name_and_parser_support(capsys, models_dir: Path) -> None:
    code, out, err = run(capsys, "inspect", str(models_dir / "two_input.onnx"))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"{models_dir / 'two_input.onnx'}: opset 17, 8 nodes, weights ")
    assert "  image                float32  [batch, 3, height, width]  dynamic: batch, height, width" in lines
    assert "  scale                float32  [batch, 1]  dynamic: batch" in lines
    assert lines[-1].startswith("parser support: tensorrt-rtx ") and lines[-1].endswith(" takes every node")


def test_inspect_json_and_exit_1_for_nodes_the_parser_refuses(capsys, tmp_path: Path) -> None:
    code, out, err = run(capsys, "--json", "inspect", str(custom_op_model(tmp_path / "custom.onnx")))
    found = json.loads(out)
    assert code == 1 and err == ""
    assert found["inputs"] == {"x": {"dtype": "float32", "shape": [1, 4]}}
    assert found["ops"] == {"Relu": 1, "com.microsoft::FastGelu": 1}
    assert [(n["name"], n["op"]) for n in found["unsupported"]] == [("gelu0", "com.microsoft::FastGelu")]
    assert found["domains"] == ["ai.onnx", "com.microsoft"]


def test_inspect_a_missing_model_is_one_line(capsys, tmp_path: Path) -> None:
    code, out, err = run(capsys, "inspect", str(tmp_path / "nope.onnx"))
    assert code == 1 and out == ""
    assert err.splitlines()[0] == f"error: model file not found: {tmp_path / 'nope.onnx'}"


def test_init_writes_a_recipe_that_check_accepts(capsys, models_dir: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "recipes" / "two.yaml"
    code, out, err = run(capsys, "init", str(models_dir / "two_input.onnx"), "-o", str(out_path), "--target", "sm89")
    assert (code, out, err) == (0, f"{out_path}\n", "")
    recipe = recipes.load(out_path)
    assert (recipe.name, recipe.targets, recipe.model_path) == ("two_input", ("sm89",), models_dir / "two_input.onnx")
    (profile,) = recipe.spec("serialize").profiles
    assert [(p.name, p.min, p.opt, p.max) for p in profile] == [
        ("image", (1, 3, 16, 16), (8, 3, 256, 256), (32, 3, 1024, 1024)), ("scale", (1, 1), (8, 1), (32, 1))]
    assert "# check the range of height, width" in out_path.read_text()
    code, out, err = run(capsys, "check", str(out_path))
    assert code == 0 and out.startswith(f"ok   {out_path} ("), err


def test_init_keeps_an_existing_recipe_unless_forced(capsys, models_dir: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "mine.yaml"
    out_path.write_text("# my own\n")
    code, out, err = run(capsys, "init", str(models_dir / "two_input.onnx"), "-o", str(out_path))
    assert (code, out) == (1, "") and err.startswith(f"error: {out_path} exists; not overwritten\nhint: pass --force")
    assert out_path.read_text() == "# my own\n"
    assert run(capsys, "init", str(models_dir / "two_input.onnx"), "-o", str(out_path), "--force")[0] == 0
    assert out_path.read_text().startswith("# Written by `trt-pipeline init ")


def test_init_names_the_default_recipe_after_the_model(capsys, models_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "init", str(models_dir / "cleanup_needed.onnx"))
    assert (code, out) == (0, "recipes/cleanup_needed.yaml\n")
    assert recipes.load(tmp_path / "recipes" / "cleanup_needed.yaml").name == "cleanup_needed"
