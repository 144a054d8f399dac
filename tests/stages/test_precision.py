"""precision: fp16/bf16 conversion and int8/fp8 quantization with real converters and real TensorRT-RTX builds on
CPU; the numerics check against the FP32 original; calibration data checked before any work; keys and manifest."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.make_models import resnet50_calibration, write_arrays, write_model
from pipeline import recipe as recipes
from pipeline.build import capability
from pipeline.build.cache import build_key, build_key_inputs
from pipeline.errors import BuildError, RecipeError
from pipeline.stages import KEY_STAGES, ORDER
from pipeline.store import Store
from pipeline.trt.backend import Backend
from pipeline.trt.target import Target
from tests._lifecycle import NO_GPU, build

Recipe = Callable[..., Path]

RTX = Backend("tensorrt-rtx", SimpleNamespace(__version__="1.7.1.116"))
T_SM89 = Target("sm89", "sm89.rtx-1.7.1", "8.9", None, "sm89")
CLEANED = "ab" * 32

TINY = """\
name: tiny
version: 1.0.0
model: {{path: {{models}}/tiny.onnx}}
backend: tensorrt-rtx
targets: [{targets}]
stages:
  - parse: {{}}
  - precision:
{precision}
  - network-flag: {{strongly_typed: true}}
  - memory-pool: {{workspace: 64MiB}}
  - serialize:
      profiles:
        - x: {{min: [1, 4], opt: [8, 4], max: [64, 4]}}
"""


def tiny(write_recipe: Recipe, precision: str, targets: str = "sm89", name: str = "recipe.yaml") -> Path:
    return write_recipe(TINY.format(precision=precision, targets=targets), name)


def problems_of(path: Path) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        recipes.load(path)
    return caught.value.problems


# ---------------------------------------------------------------- the recipe


def test_the_stage_sits_between_graph_cleanup_and_network_flag() -> None:
    assert ORDER == ("parse", "graph-cleanup", "precision", "network-flag", "memory-pool", "serialize")
    assert KEY_STAGES == ("precision", "network-flag", "memory-pool", "serialize")


def test_schema_errors_are_located(write_recipe: Recipe) -> None:
    path = tiny(write_recipe, "      mode: fp12\n      exclude: {op_type: [Softmax]}")
    assert problems_of(path) == [
        f"{path}:9:13: stages[1].precision.mode: expected one of 'fp16', 'bf16', 'int8', 'fp8', got 'fp12'",
        f"{path}:10:17: stages[1].precision.exclude.op_type: unknown key (did you mean 'op_types'?); expected one "
        "of nodes, op_types"]


def test_int8_without_calibration_data_is_one_clear_error(write_recipe: Recipe) -> None:
    path = tiny(write_recipe, "      mode: int8")
    assert problems_of(path) == [
        f"{path}:9:13: stages[1].precision.mode: int8 quantization needs calibration data: add 'calibration: "
        "{data: FILE.npz}' (one array per model input, or a directory of INPUT.npy files), or 'calibration: "
        "{random: {samples: 8}}' for seeded random data (warned about: scales fitted to noise)"]


def test_options_that_do_not_fit_the_mode(write_recipe: Recipe) -> None:
    path = tiny(write_recipe, "      mode: int8\n      io_types: convert\n      calibration: {method: entropy}")
    assert problems_of(path) == [
        f"{path}:10:17: stages[1].precision.io_types: int8 keeps FP32 inputs and outputs (quantization happens "
        "inside the graph); remove io_types",  # sorted by line
        f"{path}:11:20: stages[1].precision.calibration: give calibration data as exactly one of 'data: FILE' and "
        "'random: {samples: N, seed: S}'"]


def test_calibration_data_is_checked_against_the_model_before_any_work(write_recipe: Recipe, tmp_path: Path) -> None:
    """Wrong input names, shapes and dtypes, and uneven sample counts: every problem at once, located, from the
    .npy headers, when the plan is made (check, build)."""
    from pipeline.build import plan as plans
    from pipeline.trt import backend as backends

    write_arrays({"input": np.zeros((4, 4), np.float32)}, tmp_path / "names.npz")
    write_arrays({"x": np.zeros((4, 5), np.float64)}, tmp_path / "shapes.npz")
    (tmp_path / "dir").mkdir()
    np.save(tmp_path / "dir" / "x.npy", np.zeros((3, 4, 1), np.float32))
    found = {}
    for data in ("names.npz", "shapes.npz", "dir", "missing.npz"):
        path = tiny(write_recipe, f"      mode: int8\n      calibration: {{data: {tmp_path / data}}}",
                    name=f"{data}.yaml")
        with pytest.raises(RecipeError) as caught:
            plans.make_plan(recipes.load(path), backends.load("tensorrt-rtx"), NO_GPU)
        found[data] = [problem.split(": ", 2)[2] for problem in caught.value.problems]
        assert [problem.split(": ", 2)[:2] for problem in caught.value.problems] == \
            [[f"{path}:10:27", "stages[1].precision.calibration.data"]] * len(caught.value.problems)
    assert found == {
        "names.npz": ["calibration data names.npz has arrays input, but the model's inputs are x (missing x; "
                      "unexpected input)"],
        "shapes.npz": ["calibration data shapes.npz: array 'x' is float64, but input 'x' is float32",
                       "calibration data shapes.npz: array 'x' has shape [4, 5]: dimension 1 is 5, but input 'x' "
                       "['batch', 4] has 4"],
        "dir": ["calibration data dir: array 'x' has shape [3, 4, 1], but input 'x' has rank 2 ['batch', 4] "
                "(axis 0 of the array is the input's batch dimension)"],
        "missing.npz": [f"calibration data not found: {tmp_path / 'missing.npz'} (paths are relative to the recipe)"],
    }


def test_check_limits_name_outputs_the_model_has(write_recipe: Recipe) -> None:
    from pipeline.stages.parse import preflight

    path = tiny(write_recipe, "      mode: fp16\n      check: {outputs: {logits: {min_top1: 0.9}}}")
    assert preflight(recipes.load(path)) == [
        f"{path}:10:33: stages[1].precision.check.outputs.logits: model has no output 'logits'; its outputs are y"]


def test_build_key_changes_with_calibration_data_not_with_check_limits(write_recipe: Recipe, tmp_path: Path) -> None:
    data = tmp_path / "calibration.npz"
    write_arrays({"x": np.ones((8, 4), np.float32)}, data)
    body = f"      mode: int8\n      calibration: {{data: {data}}}"
    recipe = recipes.load(tiny(write_recipe, body))
    inputs = build_key_inputs(recipe, CLEANED, RTX, T_SM89)
    assert inputs["settings"]["precision"]["calibration"] == {
        "data": hashlib.sha256(data.read_bytes()).hexdigest(), "method": "minmax", "percentile": 99.999,
        "random": None}
    assert inputs["settings"]["precision"]["converter"]["name"] == "onnxruntime"
    key = build_key(recipe, CLEANED, RTX, T_SM89)
    write_arrays({"x": np.full((8, 4), 2, np.float32)}, data)
    assert build_key(recipe, CLEANED, RTX, T_SM89) != key
    again = build_key(recipe, CLEANED, RTX, T_SM89)
    relaxed = recipes.load(tiny(write_recipe, body + "\n      check: {min_cosine: 0.5}", name="relaxed.yaml"))
    assert build_key(relaxed, CLEANED, RTX, T_SM89) == again
    seeded = lambda seed: recipes.load(tiny(write_recipe, f"      mode: int8\n      calibration: "  # noqa: E731
                                            f"{{random: {{seed: {seed}}}}}", name=f"seed{seed}.yaml"))
    assert build_key(seeded(0), CLEANED, RTX, T_SM89) != build_key(seeded(1), CLEANED, RTX, T_SM89)
    fp16 = recipes.load(tiny(write_recipe, "      mode: fp16", name="fp16.yaml"))
    assert build_key(fp16, CLEANED, RTX, T_SM89) not in (key, again)


def test_precision_builder_flags_are_refused_version_aware(write_recipe: Recipe, rtx_backend: Backend) -> None:
    path = write_recipe(TINY.format(precision="      mode: fp16", targets="sm89").replace(
        "  - serialize:\n", "  - serialize:\n      flags: [fp16]\n"))
    assert capability.problems(recipes.load(path), rtx_backend, NO_GPU) == [
        f"{path}:13:15: stages[4].serialize.flags[0]: tensorrt-rtx {rtx_backend.version} has no builder flag FP16: "
        "TensorRT-RTX is strongly typed and takes precision from the ONNX graph's types; add a precision stage after "
        "graph-cleanup: '- precision: {mode: fp16}'"]


def fake_trt(version: str, flags: tuple[str, ...]) -> Backend:
    enum = lambda *names: SimpleNamespace(**{n: i for i, n in enumerate(names)})  # noqa: E731
    return Backend("tensorrt", SimpleNamespace(__version__=version, BuilderFlag=enum(*flags),
                                               DataType=enum("FLOAT", "HALF", "BF16", "INT8", "FP8"),
                                               MemoryPoolType=enum("WORKSPACE"),
                                               NetworkDefinitionCreationFlag=enum("STRONGLY_TYPED")))


def test_weakly_typed_full_tensorrt_needs_the_builder_flag(write_recipe: Recipe) -> None:
    from pipeline.stages.precision import target_problems

    trt10 = fake_trt("10.9.0.34", ("FP16", "BF16", "INT8"))
    weak = tiny(write_recipe, "      mode: fp16").read_text().replace("{strongly_typed: true}", "{}")
    path = write_recipe(weak, "weak.yaml")
    assert target_problems(recipes.load(path), trt10, []) == [
        f"{path}:9:13: stages[1].precision.mode: a weakly typed tensorrt 10.9.0.34 network runs fp16 layers only "
        "with the builder flag: set network-flag.strongly_typed: true (precision from the graph's types), or add "
        "'fp16' to serialize.flags"]
    flagged = write_recipe(weak.replace("  - serialize:\n", "  - serialize:\n      flags: [fp16]\n"), "flagged.yaml")
    assert target_problems(recipes.load(flagged), trt10, []) == []
    recipe = recipes.load(write_recipe(weak.replace("  - serialize:\n", "  - serialize:\n      flags: [fp16]\n")
                                       .replace("  - precision:\n      mode: fp16\n", ""), "flags-only.yaml"))
    assert capability.problems(recipe, trt10, NO_GPU) == []  # full TensorRT's FP16 flag, as before
    trt11 = fake_trt("11.4.0.106", ("TF32",))
    assert capability.problems(recipe, trt11, NO_GPU) == [
        f"{recipe.path}:11:15: stages[3].serialize.flags[0]: tensorrt 11.4.0.106 has no builder flag FP16: "
        "TensorRT 11 is strongly typed and takes precision from the ONNX graph's types; add a precision stage after "
        "graph-cleanup: '- precision: {mode: fp16}'"]


def test_types_older_gpus_lack_are_refused_per_target(write_recipe: Recipe, rtx_backend: Backend) -> None:
    from pipeline.build import plan as plans

    for mode, targets, bad in (("bf16", "sm75, sm86", "sm75 is 7.5"), ("fp8", "sm86, sm89", "sm86 is 8.6")):
        path = tiny(write_recipe, f"      mode: {mode}\n      calibration: {{random: {{samples: 2}}}}"
                    if mode == "fp8" else f"      mode: {mode}", targets, name=f"{mode}.yaml")
        with pytest.raises(RecipeError) as caught:
            plans.make_plan(recipes.load(path), rtx_backend, NO_GPU)
        need = {"bf16": "8.0", "fp8": "8.9"}[mode]
        assert caught.value.problems == [
            f"{path}:9:13: stages[1].precision.mode: {mode} needs compute capability >= {need}; target {bad} "
            f"(TensorRT-RTX refuses {mode} types for it); build it in another precision"]


# ---------------------------------------------------------------- real conversions and builds


def test_fp16_builds_for_turing_which_refuses_fp32_gemm(write_recipe: Recipe, store: Store) -> None:
    """'FP32 GEMM is not supported' on sm75 (TensorRT-RTX 1.7, measured): the fp16 graph builds."""
    fp32 = write_recipe(TINY.format(precision="", targets="sm75").replace("  - precision:\n\n", ""), "fp32.yaml")
    with pytest.raises(BuildError, match="FP32 GEMM is not supported"):
        build(fp32, store)
    [artifact] = build(tiny(write_recipe, "      mode: fp16", "sm75"), store)
    manifest = artifact.manifest().to_dict()
    assert manifest["network"]["inputs"]["x"]["dtype"] == "float"  # io_types: keep
    assert manifest["precision"]["mode"] == "fp16"
    assert manifest["precision"]["calibration"] == {"source": "random", "seed": 0, "samples": 4,
                                                    "used_for": "the numerics check only"}
    assert manifest["precision"]["check"]["status"] == "passed"
    assert (artifact.path / "model.fp16.onnx").is_file()


def test_fp16_inputs_and_outputs_when_asked(write_recipe: Recipe, store: Store) -> None:
    [artifact] = build(tiny(write_recipe, "      mode: fp16\n      io_types: convert"), store)
    network = artifact.manifest().to_dict()["network"]
    assert network["inputs"]["x"]["dtype"] == network["outputs"]["y"]["dtype"] == "half"
    assert artifact.manifest().to_dict()["precision"]["check"]["status"] == "passed"


def overflow_model(path: Path) -> Path:
    """h = x @ W (|h| ~ 50 for x in [0, 1)), y = h * 1e4 (past FP16's 65504: inf in FP16), z = Relu(h): only y
    overflows."""
    w = numpy_helper.from_array(np.full((4, 8), 25.0, np.float32), "W")
    k = numpy_helper.from_array(np.array(1e4, np.float32), "K")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="project"),
         helper.make_node("Mul", ["h", "K"], ["y"], name="amplify"),
         helper.make_node("Relu", ["h"], ["z"], name="relu")],
        "overflow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 8])], [w, k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_model(model, path)
    return path


def test_fp16_overflow_fails_naming_the_output_and_builds_once_the_op_is_kept(write_recipe: Recipe, store: Store,
                                                                               tmp_path: Path) -> None:
    model = overflow_model(tmp_path / "overflow.onnx")
    body = TINY.format(precision="      mode: fp16", targets="sm89").replace("{models}/tiny.onnx", str(model))
    with pytest.raises(BuildError) as caught:
        build(write_recipe(body), store)
    assert str(caught.value) == ("precision: the fp16 graph differs from the FP32 original beyond the limits on "
                                 "output(s) y: y: NaN or infinite values (overflow)")
    assert caught.value.hint.startswith("keep amplify in FP32 (their FP32 values exceed FP16's range (65504)): add "
                                        "them to precision.exclude.nodes; ")
    kept = body.replace("      mode: fp16\n", "      mode: fp16\n      exclude: {nodes: [amplify]}\n")
    [artifact] = build(write_recipe(kept, "kept.yaml"), store)
    check = artifact.manifest().to_dict()["precision"]["check"]
    assert check["status"] == "passed" and set(check["outputs"]) == {"y", "z"}
    assert artifact.manifest().to_dict()["precision"]["exclude"] == {"nodes": ["amplify"], "op_types": []}


def test_int8_failure_names_the_quantized_nodes_nearest_the_output(write_recipe: Recipe, store: Store,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """Limits no int8 graph meets; onnxruntime's entropy calibrator prints its progress, which goes to the log."""
    path = tiny(write_recipe, "      mode: int8\n      calibration: {random: {samples: 4}, method: entropy}\n"
                              "      check: {max_abs: 0}")
    with pytest.raises(BuildError) as caught:
        build(path, store)
    assert str(caught.value).startswith("precision: the int8 graph differs from the FP32 original beyond the limits "
                                        "on output(s) y: y: cosine ")
    assert "max abs error" in str(caught.value) and "(max 0)" in str(caught.value)
    assert caught.value.hint.startswith("keep matmul_out in FP32 (they are the converted nodes nearest to the failing "
                                        "output(s)): add them to precision.exclude.nodes")
    assert "entropy" not in capfd.readouterr().out


def test_an_excluded_node_must_exist(write_recipe: Recipe, store: Store) -> None:
    path = tiny(write_recipe, "      mode: fp16\n      exclude: {nodes: [add_ou]}")
    with pytest.raises(BuildError) as caught:
        build(path, store)
    assert str(caught.value) == (f"{path}:10:24: stages[1].precision.exclude.nodes: the graph has no node 'add_ou' "
                                 "(did you mean 'add_out'?)")


@pytest.mark.parametrize(("mode", "extra"), [("bf16", ""), ("fp8", "\n      calibration: {random: {samples: 4}}")])
def test_bf16_and_fp8_build_where_the_target_has_them(write_recipe: Recipe, store: Store, mode: str,
                                                      extra: str) -> None:
    [artifact] = build(tiny(write_recipe, f"      mode: {mode}{extra}"), store)
    precision = artifact.manifest().to_dict()["precision"]
    types = {init.data_type for init in onnx.load(str(artifact.path / f"model.{mode}.onnx")).graph.initializer}
    assert {"bf16": TensorProto.BFLOAT16, "fp8": TensorProto.FLOAT8E4M3FN}[mode] in types
    assert precision["check"]["status"] == "passed"
    assert precision["check"]["emulated"] is (mode == "bf16")


def test_int8_calibration_from_a_directory_of_npy(write_recipe: Recipe, store: Store, tmp_path: Path) -> None:
    (tmp_path / "calibration").mkdir()
    np.save(tmp_path / "calibration" / "x.npy", np.random.default_rng(0).random((6, 4), dtype=np.float32))
    [artifact] = build(tiny(write_recipe, f"      mode: int8\n      calibration: {{data: {tmp_path / 'calibration'}, "
                                          "method: percentile}"), store)
    precision = artifact.manifest().to_dict()["precision"]
    assert precision["calibration"]["samples"] == 6
    assert precision["calibration"]["method"] == "percentile"
    assert precision["nodes"]["QuantizeLinear"] >= 1
    assert set(precision["check"]["outputs"]["y"]) >= {"max_abs", "max_rel", "cosine", "top1"}


@pytest.mark.slow
def test_resnet50_fp16_and_int8_are_smaller_by_the_expected_factor(write_recipe: Recipe, store: Store,
                                                                   resnet50_path: Path, tmp_path: Path) -> None:
    """Measured (TensorRT-RTX 1.7.1, sm89): FP32 engine 102.7 MB, about the model's weights; fp16 0.51x, int8 0.33x."""
    data = tmp_path / "calibration.npz"
    write_arrays(resnet50_calibration(samples=2), data)
    shipped = Path(__file__).resolve().parents[2] / "recipes"
    bodies = {name: (shipped / f"resnet50-{name}.yaml").read_text().replace("../models/resnet50.onnx",
                                                                            str(resnet50_path))
              .replace("../models/resnet50_calibration.npz", str(data)) for name in ("fp16", "int8")}
    model_bytes = resnet50_path.stat().st_size
    ratios = {}
    for name, body in bodies.items():
        [artifact] = build(write_recipe(body, f"{name}.yaml"), store, ("sm89",))
        manifest = artifact.manifest().to_dict()
        ratios[name] = manifest["engine"]["bytes"] / model_bytes
        assert manifest["precision"]["check"]["status"] == "passed"
    assert 0.47 < ratios["fp16"] < 0.55 and 0.29 < ratios["int8"] < 0.37, ratios
    calibration = manifest["precision"]["calibration"]
    assert calibration == {"source": "file", "path": str(data), "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
                           "samples": 2, "method": "minmax"}
