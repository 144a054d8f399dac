"""plan: a recipe with several kinds of problem is reported whole in one run, sorted by line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.build import plan as plans
from pipeline.errors import RecipeError
from pipeline.trt.gpu import Probe

NO_GPU = Probe(False, (), "no CUDA driver on this machine (test)")
ORDER = "parse -> graph-cleanup (optional) -> precision (optional) -> network-flag -> memory-pool -> serialize"

FIVE_MISTAKES = """\
name: Bad Name
version: 1.0.0
model: {path: nowhere.onnx}
backend: tensorrt-rtx
targets: [sm89, sm90]
stages:
  - parse: {check: true}
  - memory-pool: {workspace: 64MiB}
  - network-flag: {strongly_typed: true}
  - serialize:
      profiles:
        - x: {min: [8, 4], opt: [1, 4], max: [64, 4]}
"""


def problems_of(path: Path, **options: object) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        plans.load_recipe(path, NO_GPU, **options)
    return caught.value.problems


def test_every_problem_in_one_run_sorted_by_line(tmp_path: Path) -> None:
    path = tmp_path / "five.yaml"
    path.write_text(FIVE_MISTAKES)
    assert problems_of(path) == [
        f"{path}:1:7: name: expected a lower-case name like 'resnet50' (letters, digits, '.', '_', '-'), got 'Bad Name'",
        f"{path}:3:15: model.path: model file not found: {tmp_path / 'nowhere.onnx'} (paths are relative to the "
        "recipe)",
        f"{path}:5:17: targets[1]: tensorrt-rtx 1.7.1.116 cannot build for sm90; it supports sm75, sm80, sm86, sm89, "
        "sm120, sm121",
        f"{path}:8:5: stages[1]: expected stage 'network-flag' here, got 'memory-pool'; order is {ORDER}",
        f"{path}:12:14: stages[3].serialize.profiles[0].x: expected min <= opt <= max in every dimension, got "
        "min [8, 4], opt [1, 4], max [64, 4]",
    ]


def test_without_a_probe_only_the_loader_problems(tmp_path: Path) -> None:
    path = tmp_path / "five.yaml"
    path.write_text(FIVE_MISTAKES)
    with pytest.raises(RecipeError) as caught:
        plans.load_recipe(path)
    assert [p.split(": ")[1] for p in caught.value.problems] == ["name", "stages[1]", "stages[3].serialize.profiles[0].x"]


def test_the_model_is_checked_against_the_profiles_past_a_bad_name(write_recipe: Callable[..., Path]) -> None:
    path = write_recipe("""\
name: Tiny
version: 1.0.0
model: {path: {models}/tiny.onnx}
backend: tensorrt-rtx
targets: [sm89]
stages:
  - parse: {check: true}
  - network-flag: {strongly_typed: true}
  - memory-pool: {workspace: 64MiB}
  - serialize:
      profiles:
        - y: {min: [1, 4], opt: [8, 4], max: [64, 4]}
""")
    problems = problems_of(path)
    assert [p.split(": ")[1] for p in problems] == ["name", "stages[3].serialize.profiles[0].y"]
    assert problems[1].endswith("model has no input 'y'; its inputs are x")


def test_damaged_stages_still_have_the_model_file_checked(write_recipe: Callable[..., Path]) -> None:
    path = write_recipe("""\
name: tiny
version: 1.0.0
model: {path: {models}/missing.onnx}
backend: tensorrt-rtx
targets: [sm89, sm90]
stages:
  - parse: {chek: true}
  - network-flag: {strongly_typed: true}
  - memory-pool: {workspace: lots}
  - serialize: {}
""")
    assert [p.split(": ")[1] for p in problems_of(path)] == ["model.path", "targets[1]", "stages[0].parse.chek",
                                                            "stages[2].memory-pool.workspace"]
    assert [p.split(": ")[1] for p in problems_of(path, check_model=False)] == [
        "targets[1]", "stages[0].parse.chek", "stages[2].memory-pool.workspace"]


def test_a_bad_backend_skips_the_backend_checks(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(FIVE_MISTAKES.replace("backend: tensorrt-rtx", "backend: trt"))
    assert [p.split(": ")[1] for p in problems_of(path)] == [
        "name", "model.path", "backend", "stages[1]", "stages[3].serialize.profiles[0].x"]


def test_targets_past_a_bad_target_keep_their_own_index(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(FIVE_MISTAKES.replace("targets: [sm89, sm90]", "targets: [bogus, sm999, local]"))
    problems = [p for p in problems_of(path) if ": targets[" in p]
    assert [p.split(": ")[:2] for p in problems] == [[f"{path}:5:11", "targets[0]"], [f"{path}:5:18", "targets[1]"],
                                                    [f"{path}:5:25", "targets[2]"]]
    assert "sm999" in problems[1] and "'local'" in problems[2]


DAMAGED = """\
name: tiny
version: 1.0.0
model: {path: {models}/tiny.onnx}
backend: tensorrt-rtx
targets: [sm89]
stages:
  - parse: {check: true}
  - network-flag: {strongly_typed: true}
  - memory-pool: {workspace: lots}
  - serialize:
      profiles:
        - x: {min: [8, 4], opt: [1, 4], max: [64, 4]}
"""


def test_a_damaged_stage_leaves_the_other_stages_checked(write_recipe: Callable[..., Path]) -> None:
    path = write_recipe(DAMAGED)
    assert [p.split(": ")[1] for p in problems_of(path)] == ["stages[2].memory-pool.workspace",
                                                            "stages[3].serialize.profiles[0].x"]
    renamed = write_recipe(DAMAGED.replace("opt: [1, 4]", "opt: [8, 4]").replace("- x:", "- y:"), "y.yaml")
    problems = problems_of(renamed)  # serialize is intact: the model is checked against its profiles
    assert [p.split(": ")[1] for p in problems] == ["stages[2].memory-pool.workspace",
                                                   "stages[3].serialize.profiles[0].y"]
    assert problems[1].endswith("model has no input 'y'; its inputs are x")


def test_a_stage_past_an_unknown_one_keeps_its_own_index(write_recipe: Callable[..., Path]) -> None:
    path = write_recipe(DAMAGED.replace("workspace: lots", "workspace: 64MiB").replace(
        "  - network-flag:", "  - frobnicate: {}\n  - network-flag:"))
    assert [p.split(": ")[1] for p in problems_of(path)] == ["stages[1].frobnicate",
                                                            "stages[4].serialize.profiles[0].x"]


def test_a_damaged_validate_block_leaves_the_inputs_checked(write_recipe: Callable[..., Path]) -> None:
    body = DAMAGED.replace("workspace: lots", "workspace: 64MiB").replace("opt: [1, 4]", "opt: [8, 4]")
    path = write_recipe(body.replace("- x:", "- y:") + "validate: {atol: -1}\n")
    problems = problems_of(path)
    assert [p.split(": ")[1] for p in problems] == ["stages[3].serialize.profiles[0].y", "validate.atol"]
    assert problems[0].endswith("model has no input 'y'; its inputs are x")


def test_a_corrupt_model_is_reported_past_a_schema_problem(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"\x0a\xff\xff\xff\xff not a model")
    path = write_recipe(DAMAGED.replace("{models}/tiny.onnx", "broken.onnx"))
    problems = problems_of(path)
    assert [p.split(": ")[1] for p in problems] == ["model.path", "stages[2].memory-pool.workspace",
                                                   "stages[3].serialize.profiles[0].x"]
    assert f"cannot read ONNX model {tmp_path / 'broken.onnx'}" in problems[0]
