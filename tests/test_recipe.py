"""recipe: load, validate (every problem at once, FILE:LINE:COL), apply defaults, freeze."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from models.make_models import MODELS
from pipeline import recipe as recipes
from pipeline.errors import RecipeError
from pipeline.recipe import Tolerance, ValidateSpec, check_model_io
from pipeline.stages.graph_cleanup import CleanupSpec
from pipeline.stages.memory_pool import PoolSpec
from pipeline.stages.network_flag import FlagSpec
from pipeline.stages.parse import ParseSpec, describe
from pipeline.stages.serialize import SerializeSpec
from pipeline.units import size_bytes

REPO = Path(__file__).resolve().parent.parent
ORDER = "parse -> graph-cleanup (optional) -> precision (optional) -> network-flag -> memory-pool -> serialize"

WriteRecipe = Callable[..., Path]

# A valid recipe; tests replace one line to make exactly one problem, so line numbers stay readable.
GOOD = """\
name: tiny
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
        - x: {min: [1, 4], opt: [8, 4], max: [64, 4]}
"""


def problems_of(path: Path) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        recipes.load(path)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def edited(old: str, new: str) -> str:
    assert GOOD.count(old) == 1, old
    return GOOD.replace(old, new)


# ---------------------------------------------------------------- one problem each, exact text


def test_good_recipe_loads(write_recipe: WriteRecipe, models_dir: Path) -> None:
    recipe = recipes.load(write_recipe(GOOD))
    assert (recipe.name, recipe.version, recipe.backend, recipe.targets) == ("tiny", "1.0.0", "tensorrt-rtx", ("sm89",))
    assert list(recipe.stages) == ["parse", "network-flag", "memory-pool", "serialize"]
    assert recipe.model_path == models_dir / "tiny.onnx"


def test_bad_size(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("{workspace: 64MiB}", "{workspace: lots}"))
    assert problems_of(path) == [
        f"{path}:9:30: stages[2].memory-pool.workspace: expected a size like '1GiB', '512MiB' or a number of bytes, "
        "got 'lots'"]


def test_negative_size(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("{workspace: 64MiB}", "{workspace: -1}"))
    assert problems_of(path) == [
        f"{path}:9:30: stages[2].memory-pool.workspace: expected a size like '1GiB', '512MiB' or a number of bytes, "
        "got -1"]


def test_unknown_key_with_did_you_mean(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("{check: true}", "{chek: true}"))
    assert problems_of(path) == [
        f"{path}:7:13: stages[0].parse.chek: unknown key (did you mean 'check'?); expected one of check, infer_shapes"]


def test_unknown_key_without_close_match(write_recipe: WriteRecipe) -> None:
    path = write_recipe(GOOD + "colour: red\n")
    assert problems_of(path) == [
        f"{path}:13:1: colour: unknown key; expected one of backend, description, model, name, stages, targets, "
        "validate, version"]


def test_missing_required_key(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("targets: [sm89]\n", ""))
    assert problems_of(path) == [f"{path}:1:1: targets: required key is missing"]


def test_missing_nested_required_key(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("model: {path: {models}/tiny.onnx}", "model: {}"))
    assert problems_of(path) == [f"{path}:3:8: model.path: required key is missing"]


def test_wrong_type(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("targets: [sm89]", "targets: sm89"))
    assert problems_of(path) == [f"{path}:5:10: targets: expected a list, got 'sm89'"]


def test_wrong_type_boolean(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("{check: true}", "{check: yes please}"))
    assert problems_of(path) == [f"{path}:7:20: stages[0].parse.check: expected true or false, got 'yes please'"]


def test_bad_enum(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("backend: tensorrt-rtx", "backend: trt"))
    assert problems_of(path) == [f"{path}:4:10: backend: expected one of 'auto', 'tensorrt', 'tensorrt-rtx', got 'trt'"]


def test_bad_target(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("targets: [sm89]", "targets: [sm89, gpu0]"))
    assert problems_of(path) == [f"{path}:5:17: targets[1]: expected a compute capability like 'sm89', or 'local', "
                                 "got 'gpu0'"]


def test_out_of_range(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("      profiles:", "      builder_optimization_level: 9\n      profiles:"))
    assert problems_of(path) == [f"{path}:11:35: stages[3].serialize.builder_optimization_level: "
                                 "expected a number <= 5, got 9"]


def test_duplicate_key(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("targets: [sm89]\n", "targets: [sm89]\ntargets: [sm86]\n"))
    assert problems_of(path) == [f"{path}:6:1: targets: duplicate key"]


def test_invalid_yaml(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("model: {path: {models}/tiny.onnx}", "model: {path: {models}/tiny.onnx"))
    assert problems_of(path) == [f"{path}:4:8: invalid YAML: expected ',' or '}}', but got ':'"]


def test_top_level_not_a_mapping(write_recipe: WriteRecipe) -> None:
    path = write_recipe("- parse\n- serialize\n")
    assert problems_of(path) == [f"{path}:1:1: (top): expected a mapping with name, version, model, targets, stages"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert problems_of(path) == [f"{path}: cannot read recipe: No such file or directory"]


def test_wrong_stage_order(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("  - network-flag: {strongly_typed: true}\n  - memory-pool: {workspace: 64MiB}\n",
                               "  - memory-pool: {workspace: 64MiB}\n  - network-flag: {strongly_typed: true}\n"))
    assert problems_of(path) == [
        f"{path}:8:5: stages[1]: expected stage 'network-flag' here, got 'memory-pool'; order is {ORDER}"]


def test_duplicated_stage(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("  - parse: {check: true}\n", "  - parse: {check: true}\n  - parse: {}\n"))
    assert problems_of(path) == [f"{path}:8:5: stages[1]: stage 'parse' appears twice; each stage runs once"]


def test_missing_stage(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("  - memory-pool: {workspace: 64MiB}\n", ""))
    assert problems_of(path) == [f"{path}:6:1: stages: missing stage(s) memory-pool; order is {ORDER}"]


def test_unknown_stage(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("  - parse: {check: true}\n", "  - parse: {check: true}\n  - optimize: {}\n"))
    assert problems_of(path) == [f"{path}:8:5: stages[1].optimize: unknown key; expected one of graph-cleanup, "
                                 "memory-pool, network-flag, parse, precision, serialize"]


def test_profile_min_greater_than_opt(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("min: [1, 4], opt: [8, 4]", "min: [16, 4], opt: [8, 4]"))
    assert problems_of(path) == [f"{path}:12:14: stages[3].serialize.profiles[0].x: expected min <= opt <= max in "
                                 "every dimension, got min [16, 4], opt [8, 4], max [64, 4]"]


def test_profile_rank_mismatch(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("opt: [8, 4]", "opt: [8, 4, 1]"))
    assert problems_of(path) == [f"{path}:12:14: stages[3].serialize.profiles[0].x: min, opt and max must have the "
                                 "same rank, got 2, 3, 2"]


def test_several_problems_at_once(write_recipe: WriteRecipe) -> None:
    body = (edited("{check: true}", "{chek: true}")
            .replace("{workspace: 64MiB}", "{workspace: lots}")
            .replace("backend: tensorrt-rtx", "backend: trt")
            .replace("version: 1.0.0", "version: 1.0"))
    path = write_recipe(body)
    assert problems_of(path) == [
        f"{path}:2:10: version: expected a version like '1.0.0', got 1.0",
        f"{path}:4:10: backend: expected one of 'auto', 'tensorrt', 'tensorrt-rtx', got 'trt'",
        f"{path}:7:13: stages[0].parse.chek: unknown key (did you mean 'check'?); expected one of check, infer_shapes",
        f"{path}:9:30: stages[2].memory-pool.workspace: expected a size like '1GiB', '512MiB' or a number of bytes, "
        "got 'lots'",
    ]


def test_several_profile_problems_at_once(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("        - x: {min: [1, 4], opt: [8, 4], max: [64, 4]}\n",
                               "        - x: {min: [1, 4], opt: [8, 4], max: [4, 4]}\n"
                               "          z: {min: [1], opt: [1, 1], max: [1]}\n"))
    assert problems_of(path) == [
        f"{path}:12:14: stages[3].serialize.profiles[0].x: expected min <= opt <= max in every dimension, "
        "got min [1, 4], opt [8, 4], max [4, 4]",
        f"{path}:13:14: stages[3].serialize.profiles[0].z: min, opt and max must have the same rank, got 1, 2, 1",
    ]


# ---------------------------------------------------------------- sizes, defaults, freezing, paths


@pytest.mark.parametrize(("written", "nbytes"), [
    ("2GiB", 2 * 1024**3), ("48KiB", 48 * 1024), ("1048576", 1048576), ("1.5GB", 1_500_000_000),
    ("512 MiB", 512 * 1024**2), ("'100B'", 100),
])
def test_sizes(write_recipe: WriteRecipe, written: str, nbytes: int) -> None:
    recipe = recipes.load(write_recipe(edited("{workspace: 64MiB}", f"{{workspace: {written}}}")))
    assert recipe.spec("memory-pool").limits == {"workspace": nbytes}
    assert isinstance(recipe.spec("memory-pool").limits["workspace"], int)


def test_size_bytes_function() -> None:
    assert size_bytes(7) == 7
    assert size_bytes("1TiB") == 1024**4
    assert size_bytes("3kB") == 3000


def test_defaults_applied(write_recipe: WriteRecipe) -> None:
    recipe = recipes.load(write_recipe("""\
        name: tiny
        version: 1.0.0
        model: {path: tiny.onnx}
        targets: [sm89]
        stages:
          - parse:
          - network-flag: {}
          - memory-pool:
          - serialize: {}
        validate:
          atol: 0.5
          outputs:
            y: {rtol: 0.25}
        """))
    assert recipe.backend == "auto"
    assert recipe.model_sha256 is None
    assert recipe.spec("parse") == ParseSpec(check=True, infer_shapes=True)
    assert recipe.spec("graph-cleanup") == CleanupSpec()
    assert recipe.spec("graph-cleanup").passes == ("cleanup", "toposort")
    assert recipe.spec("graph-cleanup").fold_constants is True
    assert recipe.spec("network-flag") == FlagSpec(explicit_batch=True, strongly_typed=False)
    assert recipe.spec("memory-pool") == PoolSpec()
    serialize = recipe.spec("serialize")
    assert (serialize.builder_optimization_level, serialize.profiles, serialize.flags,
            serialize.hardware_compatibility, serialize.timing_cache) == (3, (), (), "none", None)
    validate = recipe.validate
    assert validate is not None
    assert (validate.reference, validate.shapes, validate.seed, validate.rtol) == ("onnxruntime", ("opt",), 0, 1e-3)
    assert validate.tolerance("y") == Tolerance(atol=0.5, rtol=0.25)  # unset atol inherits the recipe-wide one
    assert validate.tolerance("other") == Tolerance(atol=0.5, rtol=1e-3)


def test_no_validate_section(write_recipe: WriteRecipe) -> None:
    assert recipes.load(write_recipe(GOOD)).validate is None


SPEC_TYPES: dict[str, type] = {"parse": ParseSpec, "graph-cleanup": CleanupSpec, "network-flag": FlagSpec,
                               "serialize": SerializeSpec, "validate": ValidateSpec}


@pytest.mark.parametrize("section", sorted(SPEC_TYPES))
def test_schema_defaults_match_frozen_defaults(section: str) -> None:
    """The schema documents the defaults; the frozen types apply them. They must say the same thing."""
    properties = recipes.schema()["$defs"][section]["properties"]
    fields = {f.name: f for f in dataclasses.fields(SPEC_TYPES[section])}
    documented = {key: prop["default"] for key, prop in properties.items() if "default" in prop}
    assert documented, section
    for key, default in documented.items():
        field = fields[key]
        factory: Any = field.default_factory
        applied = factory() if field.default is dataclasses.MISSING else field.default
        assert (list(applied) if isinstance(applied, tuple) else applied) == default, f"{section}.{key}"


def test_backend_default_in_schema_matches_loader(write_recipe: WriteRecipe) -> None:
    recipe = recipes.load(write_recipe(edited("backend: tensorrt-rtx\n", "")))
    assert recipe.backend == recipes.schema()["properties"]["backend"]["default"] == "auto"


def test_objects_are_frozen(write_recipe: WriteRecipe) -> None:
    cleanup = "  - parse: {check: true}\n  - graph-cleanup: {freeze_inputs: {x: [1]}}\n"
    recipe = recipes.load(write_recipe(edited("  - parse: {check: true}\n", cleanup)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.spec("serialize").builder_optimization_level = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.spec("serialize").profiles[0][0].min = (2, 4)  # type: ignore[misc]
    with pytest.raises(TypeError):
        recipe.stages["parse"] = ParseSpec()  # type: ignore[index]
    with pytest.raises(TypeError):
        recipe.spec("memory-pool").limits["workspace"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        recipe.spec("graph-cleanup").freeze_inputs["x"] = 2  # type: ignore[index]
    assert recipe.spec("graph-cleanup").freeze_inputs["x"] == (1,)
    assert isinstance(recipe.targets, tuple)
    assert isinstance(recipe.spec("serialize").profiles[0][0].max, tuple)


def test_relative_model_path_is_resolved_against_the_recipe_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "project" / "recipes").mkdir(parents=True)
    path = tmp_path / "project" / "recipes" / "r.yaml"
    path.write_text(GOOD.replace("{models}/tiny.onnx", "../models/tiny.onnx")
                    .replace("      profiles:", "      timing_cache: {path: caches/t.cache}\n      profiles:"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = recipes.load(Path("..") / "project" / "recipes" / "r.yaml")
    assert recipe.model_path == tmp_path / "project" / "models" / "tiny.onnx"
    assert recipe.model_path.is_absolute()
    timing_cache = recipe.spec("serialize").timing_cache
    assert timing_cache is not None and timing_cache.path == tmp_path / "project" / "recipes" / "caches" / "t.cache"


def test_absolute_model_path_is_kept(write_recipe: WriteRecipe, models_dir: Path) -> None:
    assert recipes.load(write_recipe(GOOD)).model_path == models_dir / "tiny.onnx"


def test_recipe_sha256_is_of_the_file_bytes(write_recipe: WriteRecipe) -> None:
    path = write_recipe(GOOD)
    assert recipes.load(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_where_points_at_the_closest_marked_key(write_recipe: WriteRecipe) -> None:
    path = write_recipe(GOOD)
    recipe = recipes.load(path)
    assert recipe.where(("stages", 2, "memory-pool", "workspace")) == f"{path}:9:30"
    assert recipe.where(("stages", 2, "memory-pool", "tactic_dram")) == f"{path}:9:18"
    assert recipe.problem(("model", "sha256"), "m") == f"{path}:3:8: model.sha256: m"


@pytest.mark.parametrize("shipped", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load_and_match_their_models(shipped: Path) -> None:
    recipe = recipes.load(shipped)
    assert recipe.model_path.parent == REPO / "models"
    if recipe.model_path.stem == "resnet50":
        return  # 100 MB to generate: its I/O is checked by the README build test in test_cli.py
    info = describe(MODELS[recipe.model_path.stem]())
    shapes = lambda io: {name: v["shape"] for name, v in io.items()}  # noqa: E731
    assert check_model_io(recipe, shapes(info["inputs"]), shapes(info["outputs"])) == []


def test_readme_recipe_is_the_shipped_resnet50() -> None:
    """The README's example recipe and recipes/resnet50.yaml say the same thing (comments aside)."""
    import yaml

    readme = (REPO / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(example) == yaml.safe_load((REPO / "recipes" / "resnet50.yaml").read_text())


# ---------------------------------------------------------------- check_model_io


IO_RECIPE = """\
name: two
version: 1.0.0
model: {path: two_input.onnx}
targets: [sm89]
stages:
  - parse: {}
  - graph-cleanup:
      freeze_inputs: {scal: 1.0}
      override_shapes: {imgae: [1, 3, 8, 8]}
  - network-flag: {}
  - memory-pool: {}
  - serialize:
      profiles:
        - imag: {min: [1, 3, 8, 8], opt: [1, 3, 8, 8], max: [1, 3, 8, 8]}
          scale: {min: [1], opt: [1], max: [1]}
validate:
  outputs:
    heatmp: {atol: 0.1}
"""

TWO_INPUTS = {"image": ["batch", 3, "height", "width"], "scale": ["batch", 1]}
TWO_OUTPUTS = {"features": ["batch", 8], "heatmap": ["batch", 1, "height", "width"]}


def test_check_model_io_problems(write_recipe: WriteRecipe) -> None:
    path = write_recipe(IO_RECIPE)
    assert check_model_io(recipes.load(path), TWO_INPUTS, TWO_OUTPUTS) == [
        f"{path}:14:17: stages[4].serialize.profiles[0].imag: model has no input 'imag' (did you mean 'image'?); "
        "its inputs are image, scale",
        f"{path}:15:18: stages[4].serialize.profiles[0].scale: input 'scale' has rank 2 ['batch', 1], "
        "profile shapes have rank 1",
        f"{path}:8:29: stages[1].graph-cleanup.freeze_inputs.scal: model has no input 'scal' "
        "(did you mean 'scale'?); its inputs are image, scale",
        f"{path}:9:32: stages[1].graph-cleanup.override_shapes.imgae: model has no input 'imgae' "
        "(did you mean 'image'?); its inputs are image, scale",
        f"{path}:18:13: validate.outputs.heatmp: model has no output 'heatmp' (did you mean 'heatmap'?); "
        "its outputs are features, heatmap",
    ]


def test_tensor_names_written_as_numbers_are_names(write_recipe: WriteRecipe) -> None:
    """ONNX tensors are often named '7': `7:` as a key names one, where YAML alone would make it the int 7."""
    numbered = IO_RECIPE.replace("scal: 1.0", "1: 1.0").replace("imgae:", "2:").replace("- imag:", "- 7:") \
        .replace("heatmp:", "5:")
    path = write_recipe(numbered)
    recipe = recipes.load(path)
    assert list(recipe.spec("graph-cleanup").freeze_inputs) == ["1"]
    assert [item.name for item in recipe.spec("serialize").profiles[0]][0] == "7"
    assert list(recipe.validate.outputs) == ["5"]
    inputs = {"7": ["batch", 3, 8, 8], "1": [1], "2": [1, 3, 8, 8], "scale": ["batch", 1]}
    outputs = {"5": ["batch", 8]}
    assert check_model_io(recipe, inputs, outputs) == [
        f"{path}:15:18: stages[4].serialize.profiles[0].scale: input 'scale' has rank 2 ['batch', 1], "
        "profile shapes have rank 1"]
    assert check_model_io(recipe, TWO_INPUTS, TWO_OUTPUTS)[0] == \
        f"{path}:14:14: stages[4].serialize.profiles[0].7: model has no input '7'; its inputs are image, scale"


def test_check_model_io_no_close_match(write_recipe: WriteRecipe) -> None:
    path = write_recipe(GOOD.replace("- x:", "- tokens:"))
    assert check_model_io(recipes.load(path), {"x": ["batch", 4]}, {"y": ["batch", 8]}) == [
        f"{path}:12:19: stages[3].serialize.profiles[0].tokens: model has no input 'tokens'; its inputs are x"]


def test_check_model_io_clean(write_recipe: WriteRecipe) -> None:
    assert check_model_io(recipes.load(write_recipe(GOOD)), {"x": ["batch", 4]}, {"y": ["batch", 8]}) == []


def test_check_model_io_dynamic_input_without_profile(write_recipe: WriteRecipe) -> None:
    path = write_recipe(GOOD)
    inputs = {"x": ["batch", 4], "mask": ["batch", "seq"]}
    assert check_model_io(recipes.load(path), inputs, {"y": ["batch", 8]}) == [
        f"{path}:12:9: stages[3].serialize.profiles: input(s) mask ['batch', 'seq'] have dynamic dimensions but no "
        "optimization profile; add '- NAME: {min: [...], opt: [...], max: [...]}'"]


def test_check_model_io_profile_against_a_static_or_overridden_shape(write_recipe: WriteRecipe) -> None:
    path = write_recipe(GOOD)
    assert check_model_io(recipes.load(path), {"x": [2, 4]}, {"y": [2, 8]}) == [
        f"{path}:12:14: stages[3].serialize.profiles[0].x: input 'x' has static shape [2, 4]: dimension 0 is 2, "
        "but the profile gives min [1, 4], opt [8, 4], max [64, 4]"]


def test_check_model_io_a_partly_dynamic_shape_is_not_called_static(write_recipe: WriteRecipe) -> None:
    path = write_recipe(GOOD)
    assert check_model_io(recipes.load(path), {"x": [2, "width"]}, {"y": [2, 8]}) == [
        f"{path}:12:14: stages[3].serialize.profiles[0].x: input 'x' has shape [2, 'width'], dynamic in 'width' "
        "only: dimension 0 is 2, but the profile gives min [1, 4], opt [8, 4], max [64, 4]"]


def test_check_model_io_profile_for_a_frozen_input(write_recipe: WriteRecipe) -> None:
    body = GOOD.replace("  - parse: {check: true}\n", "  - parse: {check: true}\n  - graph-cleanup: {freeze_inputs: {x: 1}}\n")
    path = write_recipe(body)
    problems = check_model_io(recipes.load(path), {"x": ["batch", 4]}, {"y": ["batch", 8]})
    assert problems == [f"{path}:13:14: stages[4].serialize.profiles[0].x: input 'x' is frozen by "
                        "graph-cleanup.freeze_inputs; it needs no profile"]


def test_a_character_yaml_does_not_allow_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "control.yaml"
    path.write_bytes(b"name: tiny\x07\n")
    with pytest.raises(RecipeError) as caught:
        recipes.load(path)
    assert caught.value.problems == [f"{path}:1:11: invalid YAML: unacceptable character #x0007: special characters "
                                     "are not allowed"]  # was two lines: '... in "<unicode string>", position 10'


def test_load_checked_reads_any_yaml_against_a_schema_with_every_problem(tmp_path: Path) -> None:
    """The loader shared with nightly.yaml: marks, schema problems worded as in recipes, an empty file."""
    from pipeline.recipe import load_checked

    schema_ = {"type": "object", "additionalProperties": False,
               "properties": {"size": {"type": "integer", "minimum": 1}, "name": {"type": "string"}}}
    path = tmp_path / "c.yaml"
    path.write_text("size: 3\nname: x\n")
    data, marks, raw = load_checked(path, schema_, "config")
    assert (data, marks[("name",)], raw) == ({"size": 3, "name": "x"}, (2, 7), b"size: 3\nname: x\n")
    path.write_text("")
    assert load_checked(path, schema_)[0] == {}
    path.write_text("size: 0\nnaem: x\nname: y\nname: z\n")
    with pytest.raises(RecipeError) as caught:
        load_checked(path, schema_)
    assert caught.value.problems == [
        f"{path}:1:7: size: expected a number >= 1, got 0",  # sorted by line
        f"{path}:2:1: naem: unknown key (did you mean 'name'?); expected one of name, size",
        f"{path}:4:1: name: duplicate key",
    ]
    with pytest.raises(RecipeError) as caught:
        load_checked(tmp_path / "missing.yaml", schema_, "config")
    assert caught.value.problems == [f"{tmp_path / 'missing.yaml'}: cannot read config: No such file or directory"]


# ---------------------------------------------------------------- schema_checked (build.plan.remembered_plan)


def test_schema_checked_skips_only_the_json_schema_check(write_recipe: WriteRecipe) -> None:
    path = write_recipe(edited("name: tiny\n", "name: Tiny\n"))
    assert problems_of(path) == [f"{path}:1:7: name: expected a lower-case name like 'resnet50' (letters, digits, "
                                 "'.', '_', '-'), got 'Tiny'"]
    assert recipes.load(path, schema_checked=True).name == "Tiny"
    order = write_recipe(edited("  - network-flag: {strongly_typed: true}\n  - memory-pool: {workspace: 64MiB}\n",
                                "  - memory-pool: {workspace: 64MiB}\n  - network-flag: {strongly_typed: true}\n"),
                         "order.yaml")
    with pytest.raises(RecipeError) as caught:  # the stage order is not the schema's: still checked
        recipes.load(order, schema_checked=True)
    assert caught.value.problems == [
        f"{order}:8:5: stages[1]: expected stage 'network-flag' here, got 'memory-pool'; order is {ORDER}"]
    profile = write_recipe(edited("{min: [1, 4], opt: [8, 4]", "{min: [9, 4], opt: [8, 4]"), "profile.yaml")
    with pytest.raises(RecipeError):  # nor are the profile checks
        recipes.load(profile, schema_checked=True)


def test_schema_checked_freezes_an_equal_recipe(write_recipe: WriteRecipe) -> None:
    cleanup = "  - parse: {check: true}\n  - graph-cleanup: {freeze_inputs: {x: [1]}}\n"
    body = edited("  - parse: {check: true}\n", cleanup).replace("targets: [sm89]", "targets: [sm86, sm89]")
    path = write_recipe(body + "validate: {atol: 0.01, outputs: {y: {rtol: 0.1}}}\n")
    checked, unchecked = recipes.load(path), recipes.load(path, schema_checked=True)
    assert unchecked == checked
    assert (unchecked.sha256, unchecked.stages, unchecked.validate) == (checked.sha256, checked.stages,
                                                                        checked.validate)


def test_schema_checked_does_not_import_jsonschema(write_recipe: WriteRecipe) -> None:
    import subprocess
    import sys

    code = (f"import sys; from pipeline import recipe; recipe.load({str(write_recipe(GOOD))!r}, schema_checked=True); "
            "print('jsonschema' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "False\n", "")


# ---------------------------------------------------------------- hostile input: refused whole, quickly, one line


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))


def one_problem_quickly(path: Path, seconds: float = 2.0) -> str:
    """The one problem loading `path` gives, within `seconds`."""
    import time

    started = time.perf_counter()
    problems = problems_of(path)
    assert time.perf_counter() - started < seconds
    assert len(problems) == 1, problems
    return problems[0]


def test_an_alias_bomb_is_refused_at_its_first_anchor(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    assert one_problem_quickly(path) == (f"{path}:1:4: a: expected a value, got an anchor '&a'; recipes do not use "
                                         "YAML anchors and aliases: write the value out")


@pytest.mark.parametrize(("old", "new", "where", "problem"), [
    ("targets: [sm89]", "targets: &t [sm89]", "5:10: targets", "an anchor '&t'"),
    ("{workspace: 64MiB}", "{workspace: *size}", "9:30: stages[2].memory-pool.workspace", "an alias '*size'"),
    ("name: tiny", "name: &n tiny", "1:7: name", "an anchor '&n'"),
])
def test_anchors_and_aliases_are_refused(write_recipe: WriteRecipe, old: str, new: str, where: str,
                                         problem: str) -> None:
    path = write_recipe(edited(old, new))
    assert one_problem_quickly(path) == (f"{path}:{where}: expected a value, got {problem}; recipes do not use YAML "
                                         "anchors and aliases: write the value out")


DEPTH_PROBLEM = "expected lists and mappings nested at most 64 deep, got deeper; a recipe needs fewer than 10 levels"


def test_deep_nesting_is_refused_where_it_gets_too_deep(tmp_path: Path) -> None:
    lists, maps = tmp_path / "lists.yaml", tmp_path / "maps.yaml"
    lists.write_text("[" * 10_000 + "]" * 10_000 + "\n")  # was a RecursionError: a crash, exit 3
    maps.write_text("{k: " * 3_000 + "1" + "}" * 3_000 + "\n")
    assert one_problem_quickly(lists) == f"{lists}:1:65: {'[0]' * 64}: {DEPTH_PROBLEM}"
    assert one_problem_quickly(maps) == f"{maps}:1:257: {'.'.join(['k'] * 64)}: {DEPTH_PROBLEM}"


def test_nesting_up_to_the_bound_is_fine(write_recipe: WriteRecipe) -> None:
    tensor = "[" * 59 + "1" + "]" * 59  # a frozen input's value: 64 levels with the 5 collections around it
    cleanup = f"  - parse: {{check: true}}\n  - graph-cleanup: {{freeze_inputs: {{x: {tensor}}}}}\n"
    recipe = recipes.load(write_recipe(edited("  - parse: {check: true}\n", cleanup)))
    value = recipe.spec("graph-cleanup").freeze_inputs["x"]
    for _ in range(59):
        (value,) = value
    assert value == 1


@pytest.mark.parametrize("filler", ["flow list", "comment"])
def test_a_file_over_1_mib_is_not_parsed(tmp_path: Path, filler: str) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("w") as handle:
        handle.write("x: [" + "1," * 25_000_000 + "1]\n" if filler == "flow list" else "#" + "c" * 50_000_000 + "\n")
    size = path.stat().st_size
    assert one_problem_quickly(path) == (f"{path}: expected a recipe of at most 1 MiB (1048576 bytes), got {size} "
                                         "bytes; a recipe is a few KiB: is this the right file?")


def test_a_file_of_10000_values_stops_there(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text("stages:\n" + "- 1\n" * 100_000)
    assert one_problem_quickly(path) == (f"{path}:9999:3: stages[9997]: expected at most 10000 values in a file, "
                                         "got more; a recipe has about 50")


@pytest.mark.parametrize(("make", "kind"), [
    (lambda path: os.mkfifo(path), "a named pipe (FIFO)"),
    (lambda path: path.mkdir(), "a directory"),
    (lambda path: path.symlink_to("/dev/zero"), "a character device"),
])
def test_a_recipe_that_is_not_a_regular_file_is_not_read(tmp_path: Path, make: Callable[[Path], None],
                                                         kind: str) -> None:
    path = tmp_path / "odd.yaml"
    make(path)
    assert one_problem_quickly(path) == f"{path}: cannot read recipe: expected a regular file, got {kind}"


def test_many_mixed_list_items_are_checked_in_linear_time(write_recipe: WriteRecipe) -> None:
    """jsonschema's own uniqueItems compares every pair when items do not sort: ~10 s for these 6000."""
    items = ", ".join(f"{i}, '{i}'" for i in range(3000))
    path = write_recipe(edited("targets: [sm89]", f"targets: [{items}]"))
    import time

    started = time.perf_counter()
    problems = problems_of(path)
    assert time.perf_counter() - started < 2.0
    assert problems[0] == f"{path}:5:11: targets[0]: expected a compute capability like 'sm89', or 'local', got 0"
    duplicates = write_recipe(edited("targets: [sm89]", "targets: [sm89, {a: 1}, sm89]"), "dup.yaml")
    assert problems_of(duplicates)[0] == f"{duplicates}:5:10: targets: expected unique items, got ['sm89', {{'a': 1}}, 'sm89']"


# ---------------------------------------------------------------- patterns match the whole string


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("name: tiny", 'name: "tiny\\n"', "1:7: name: expected a lower-case name like 'resnet50' (letters, digits, '.', "
                                      "'_', '-'), got 'tiny\\n'"),
    ("version: 1.0.0", 'version: "1.0.0\\n"', "2:10: version: expected a version like '1.0.0', got '1.0.0\\n'"),
    ("targets: [sm89]", 'targets: ["sm89\\n"]', "5:11: targets[0]: expected a compute capability like 'sm89', or "
                                                "'local', got 'sm89\\n'"),
    ("{workspace: 64MiB}", '{workspace: "64MiB\\n"}', "9:30: stages[2].memory-pool.workspace: expected a size like "
                                                      "'1GiB', '512MiB' or a number of bytes, got '64MiB\\n'"),
])
def test_a_trailing_newline_does_not_pass_a_pattern(write_recipe: WriteRecipe, old: str, new: str,
                                                    problem: str) -> None:
    path = write_recipe(edited(old, new))
    assert problems_of(path) == [f"{path}:{problem}"]


# ---------------------------------------------------------------- what the build would refuse


@pytest.mark.parametrize("written", ["1000000TiB", "1025TiB", str(2**50 + 1), "9" * 400])
def test_an_absurd_size_is_refused(write_recipe: WriteRecipe, written: str) -> None:
    path = write_recipe(edited("{workspace: 64MiB}", f"{{workspace: {written}}}"))
    shown = repr(int(written) if written.isdigit() else written)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    assert problems_of(path) == [f"{path}:9:30: stages[2].memory-pool.workspace: expected a size of at most 1024TiB "
                                 f"(1125899906842624 bytes), got {shown}"]


def test_the_largest_size_is_1024_tib(write_recipe: WriteRecipe) -> None:
    recipe = recipes.load(write_recipe(edited("{workspace: 64MiB}", "{workspace: 1024TiB}")))
    assert recipe.spec("memory-pool").limits == {"workspace": 2**50}


@pytest.mark.parametrize("dim", [10**12, 2**31])
def test_a_profile_dimension_beyond_int32_is_refused(write_recipe: WriteRecipe, dim: int) -> None:
    path = write_recipe(edited("max: [64, 4]", f"max: [{dim}, 4]"))
    assert problems_of(path) == [f"{path}:12:47: stages[3].serialize.profiles[0].x.max[0]: expected a dimension "
                                 f"from 0 to 2147483647 (TensorRT's limit), got {dim}"]


def test_a_float_is_not_an_integer(write_recipe: WriteRecipe) -> None:
    """JSON Schema counts 2.0 as an integer; the freezers do not (size_bytes(0.0) was an AttributeError)."""
    path = write_recipe(edited("{workspace: 64MiB}", "{workspace: 0.0}").replace("max: [64, 4]", "max: [64.0, 4]"))
    assert problems_of(path) == [
        f"{path}:9:30: stages[2].memory-pool.workspace: expected a size like '1GiB', '512MiB' or a number of bytes, "
        "got 0.0",
        f"{path}:12:47: stages[3].serialize.profiles[0].x.max[0]: expected a dimension from 0 to 2147483647 "
        "(TensorRT's limit), got 64.0"]


def test_odd_keys_are_named_on_one_line(write_recipe: WriteRecipe) -> None:
    """A key with a newline made a problem of two lines; a number as an unknown key crashed difflib."""
    path = write_recipe(GOOD + '"a\\nb": 1\n7: 1\n')
    known = "backend, description, model, name, stages, targets, validate, version"
    assert problems_of(path) == [f"{path}:13:1: 'a\\nb': unknown key; expected one of {known}",
                                 f"{path}:14:1: 7: unknown key; expected one of {known}"]


def test_a_path_with_a_nul_byte_is_refused(write_recipe: WriteRecipe) -> None:
    """It made Path.resolve raise ValueError (exit 3)."""
    path = write_recipe(edited("model: {path: {models}/tiny.onnx}", 'model: {path: "tiny\\0.onnx"}'))
    assert problems_of(path) == [f"{path}:3:15: model.path: expected a file path (relative to the recipe's folder, "
                                 "or absolute), got 'tiny\\x00.onnx'"]


def test_the_largest_profile_dimension_is_int32_max(write_recipe: WriteRecipe) -> None:
    recipe = recipes.load(write_recipe(edited("max: [64, 4]", "max: [2147483647, 4]")))
    assert recipe.spec("serialize").profiles[0][0].max == (2**31 - 1, 4)


# ---------------------------------------------------------------- property: any input is a Recipe or one PipelineError

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pipeline.errors import PipelineError  # noqa: E402

PROPERTY = settings(max_examples=150, deadline=2000, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KEYS = ["name", "version", "model", "path", "sha256", "backend", "targets", "stages", "parse", "graph-cleanup",
        "network-flag", "memory-pool", "serialize", "workspace", "profiles", "min", "opt", "max", "validate",
        "freeze_inputs", "override_shapes", "timing_cache", "plugins", "check", "outputs", "atol"]
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
           | st.sampled_from(["1.0.0", "tiny", "sm89", "64MiB", "1024TiB", "1025TiB", "tiny.onnx", "tiny\n"]))
NESTED = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=4),
                      max_leaves=25)
# Text YAML gives meaning to, for edits to a good recipe.
PIECES = st.sampled_from(["[", "]", "{", "}", ":", ": ", ",", "- ", "&a ", "*a", "!!binary ", "!!set ", "? ", "<<: ",
                          "|", ">", "'", '"', "#", "\t", "\n", "  ", "---\n", "...\n", "%YAML 1.1\n", "\\", "\x00",
                          "\ufeff", "1e400", ".nan", "-1", "2147483648", "~", "null", "yes"]) | st.text(max_size=6)


def loads_or_refuses(path: Path) -> None:
    """The property: a Recipe, or a PipelineError with one line per problem; never another exception."""
    try:
        recipe = recipes.load(path)
    except PipelineError as error:
        problems = getattr(error, "problems", [str(error)])
        assert problems and all(problem and "\n" not in problem for problem in problems), problems
        return
    assert isinstance(recipe, recipes.Recipe)


def written(folder: Path, content: str | bytes) -> Path:
    path = folder / "recipe.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return path


@PROPERTY
@given(document=st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), NESTED, max_size=8) | NESTED)
def test_property_any_yaml_document_loads_or_is_refused(tmp_path_factory: pytest.TempPathFactory,
                                                        document: Any) -> None:
    import yaml

    loads_or_refuses(written(tmp_path_factory.getbasetemp(), yaml.safe_dump(document)))


@PROPERTY
@given(edits=st.lists(st.tuples(st.integers(0, len(GOOD)), st.integers(0, 8), PIECES), min_size=1, max_size=4))
def test_property_an_edited_good_recipe_loads_or_is_refused(tmp_path_factory: pytest.TempPathFactory,
                                                            models_dir: Path, edits: list) -> None:
    text = GOOD.replace("{models}", str(models_dir))
    for at, cut, piece in edits:  # replace `cut` characters at `at` with `piece`
        text = text[:at] + piece + text[at + cut:]
    loads_or_refuses(written(tmp_path_factory.getbasetemp(), text))


def replaced(document: Any, path: list[int], value: Any) -> Any:
    """`document` with the value `path` leads to (indices taken modulo each level's size) replaced by `value`."""
    if not path or not isinstance(document, (dict, list)) or not document:
        return value
    keys = list(document) if isinstance(document, dict) else list(range(len(document)))
    key = keys[path[0] % len(keys)]
    copy = dict(document) if isinstance(document, dict) else list(document)
    copy[key] = replaced(document[key], path[1:], value)
    return copy


@PROPERTY
@given(changes=st.lists(st.tuples(st.lists(st.integers(0, 20), max_size=6), NESTED), min_size=1, max_size=3))
def test_property_a_good_recipe_with_values_replaced_loads_or_is_refused(
        tmp_path_factory: pytest.TempPathFactory, models_dir: Path, changes: list) -> None:
    """Mostly well-formed recipes: the checks after the schema (stage order, profiles, freezing) see these."""
    import yaml

    document = yaml.safe_load(GOOD.replace("{models}", str(models_dir)))
    for path, value in changes:
        document = replaced(document, path, value)
    loads_or_refuses(written(tmp_path_factory.getbasetemp(), yaml.safe_dump(document)))


@PROPERTY
@given(data=st.binary(max_size=2000))
def test_property_any_bytes_load_or_are_refused(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    loads_or_refuses(written(tmp_path_factory.getbasetemp(), data))
