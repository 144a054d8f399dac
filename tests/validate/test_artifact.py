"""pipeline.validate.artifact: Polygraphy's Comparator wiring, tolerances, per-output overrides, the cleanup check and the
validation record. Everything here runs for real on CPU with ONNX Runtime on both sides; only the engine run
itself (TrtRunner on a GPU) is replaced, where a test needs a GPU verdict, by ONNX Runtime on a model file."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline import cli
from pipeline import recipe as recipes
from pipeline.build import runner
from pipeline.errors import BackendError, BuildError, PipelineError
from pipeline.manifest import Manifest
from pipeline.recipe import Tolerance, ValidateSpec
from pipeline.stages import REGISTRY, graph_cleanup
from pipeline.store import MANIFEST, Store
from pipeline.trt import backend as backends
from pipeline.trt import gpu
from pipeline.trt import polygraphy as adapter
from pipeline.trt.gpu import Gpu, Probe
from pipeline.validate import artifact as validate
from pipeline.validate import cleanup, compare
from tests.needs_gpu import needs_gpu

LOG = logging.getLogger("test.validate")
RTX_4090 = Probe(True, (Gpu("NVIDIA GeForce RTX 4090", "8.9"),), None)  # stands in for a GPU where one is needed

TWO_INPUT = """\
name: two-input
version: 1.0.0
model: {path: {models}/two_input.onnx}
backend: tensorrt-rtx
targets: [sm89]
stages:
  - parse: {}
  - graph-cleanup: {}
  - network-flag: {strongly_typed: true}
  - memory-pool: {workspace: 64MiB}
  - serialize:
      profiles:
        - image: {min: [1, 3, 8, 8], opt: [2, 3, 16, 16], max: [4, 3, 24, 24]}
          scale: {min: [1, 1], opt: [2, 1], max: [4, 1]}
"""
CLEANUP_NEEDED = """\
name: cleanup-needed
version: 1.0.0
model: {path: {models}/cleanup_needed.onnx}
backend: tensorrt-rtx
targets: [sm89]
stages:
  - parse: {}
  - graph-cleanup: {freeze_inputs: {mode: MODE}}
  - network-flag: {strongly_typed: true}
  - memory-pool: {workspace: 64MiB}
  - serialize:
      profiles:
        - x: {min: [1, 16], opt: [8, 16], max: [64, 16]}
validate: {atol: 1.0e-4, rtol: 1.0e-4, shapes: [min, opt, max], seed: 3}
"""


@pytest.fixture(autouse=True)
def _restore_polygraphy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds run in-process with os.environ; whatever they set is undone after each test."""
    monkeypatch.delenv(adapter.RTX_ENV, raising=False)


@pytest.fixture(scope="module")
def rtx() -> backends.Backend:
    return backends.load("tensorrt-rtx")


def cleaned(recipe_path: Path, rtx: backends.Backend, scratch: Path) -> dict:
    """Run the real parse and graph-cleanup stages; the record of the cleanup check graph-cleanup starts."""
    scratch.mkdir(parents=True, exist_ok=True)
    ctx = runner.context(recipes.load(recipe_path), rtx, scratch, LOG, environ={})
    REGISTRY["parse"].run(ctx)
    REGISTRY["graph-cleanup"].run(ctx)
    return ctx.background.wait()[graph_cleanup.CHECK]


def shift_constant(name: str, delta: float) -> Callable[[Any, Any], Any]:
    """A deliberately wrong cleanup pass: toposort, and quietly add `delta` to one weight."""

    def wrong(graph: Any, spec: Any) -> Any:
        graph = graph.toposort()
        tensor = graph.tensors()[name]
        tensor.values = np.asarray(tensor.values) + np.float32(delta)
        return graph

    return wrong


# ---------------------------------------------------------------- shapes, inputs, Polygraphy set-up


def test_shape_sets_follow_profiles_and_requested_points() -> None:
    profiles = [{"x": {"min": [1, 4], "opt": [8, 4], "max": [64, 4]}},
                {"x": {"min": [65, 4], "opt": [100, 4], "max": [128, 4]}}]
    inputs = {"x": {"shape": ["batch", 4]}, "k": {"shape": [3]}}
    sets = compare.shape_sets(profiles, ("min", "max"), inputs)
    assert [(s.profile, s.label, dict(s.shapes)) for s in sets] == [
        (0, "min", {"x": (1, 4), "k": (3,)}), (0, "max", {"x": (64, 4), "k": (3,)}),
        (1, "min", {"x": (65, 4), "k": (3,)}), (1, "max", {"x": (128, 4), "k": (3,)})]


def test_without_profiles_the_declared_shapes_are_used_with_dynamic_dims_as_one() -> None:
    (only,) = compare.shape_sets([], ("opt",), {"x": {"shape": ["batch", 4]}, "y": {"shape": [-1, 2]}})
    assert (only.profile, only.label, dict(only.shapes)) == (None, "static", {"x": (1, 4), "y": (1, 2)})


def test_frozen_feed_matches_graph_cleanups_freeze() -> None:
    inputs = {"mode": {"dtype": "int64", "shape": []}, "w": {"dtype": "float32", "shape": [2, 3]},
              "v": {"dtype": "float32", "shape": ["n"]}}
    feed = compare.frozen_feed({"mode": 1, "w": 0.5, "v": [1, 2]}, inputs)
    assert feed["mode"].dtype == np.int64 and feed["mode"].shape == () and feed["mode"] == 1
    np.testing.assert_array_equal(feed["w"], np.full((2, 3), 0.5, np.float32))
    np.testing.assert_array_equal(feed["v"], np.array([1, 2], np.float32))


def test_seeded_feed_is_reproducible() -> None:
    (shapes,) = compare.shape_sets([], ("opt",), {"x": {"shape": [2, 4]}, "i": {"shape": [3]}})
    dtypes = {"x": "float32", "i": "int64"}
    first, again, other = (compare.seeded_feed(shapes, dtypes, seed) for seed in (0, 0, 1))
    np.testing.assert_array_equal(first["x"], again["x"])
    assert first["x"].dtype == np.float32 and first["i"].dtype == np.int64
    assert not np.array_equal(first["x"], other["x"])


def test_use_polygraphy_sets_the_rtx_switch_only_for_rtx(rtx: backends.Backend,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import polygraphy.config

    monkeypatch.setattr(polygraphy.config, "USE_TENSORRT_RTX", polygraphy.config.USE_TENSORRT_RTX)
    environ: dict[str, str] = {}
    assert adapter.use_polygraphy(rtx, environ).USE_TENSORRT_RTX is True
    assert environ == {adapter.RTX_ENV: "1"}
    full: dict[str, str] = {}
    assert adapter.use_polygraphy(backends.Backend("tensorrt", None), full).USE_TENSORRT_RTX is False
    assert full == {}


def test_use_polygraphy_refuses_to_rebind_a_loaded_trt_backend(rtx: backends.Backend,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import polygraphy.config

    monkeypatch.setattr(polygraphy.config, "USE_TENSORRT_RTX", False)
    monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", sys.modules["polygraphy.config"])
    with pytest.raises(BackendError, match="already bound to full TensorRT in this process"):
        adapter.use_polygraphy(rtx, {})


def test_compare_func_carries_per_output_overrides() -> None:
    spec = ValidateSpec(atol=1e-3, rtol=1e-2, outputs={"heatmap": Tolerance(0.05, 1e-2)})
    func = compare.compare_func(spec)
    assert (func.atol, func.rtol) == ({"": 1e-3, "heatmap": 0.05}, {"": 1e-2, "heatmap": 1e-2})


# ---------------------------------------------------------------- the cleanup check, for real


def test_cleanup_check_passes_and_feeds_the_frozen_input(write_recipe: Callable[..., Path], rtx: backends.Backend,
                                                         tmp_path: Path) -> None:
    check = cleaned(write_recipe(CLEANUP_NEEDED.replace("MODE", "1")), rtx, tmp_path)
    assert check["status"] == "passed" and check["frozen_inputs"] == {"mode": 1}
    # The recipe asks validation for min, opt and max; the CPU cleanup check runs once per profile, at its min
    # shape with every dimension raised to 2 where the profile allows (x: min [1, 16], max [16, 16]).
    assert [(row["shape"], row["inputs"]) for row in check["results"]] == [("small", {"x": [2, 16]})]
    assert check["tolerances"] == {"atol": 1e-4, "rtol": 1e-4, "outputs": {}}
    assert all(row["outputs"]["y"] == {"max_abs": 0.0, "max_rel": 0.0, "atol": 1e-4, "rtol": 1e-4, "passed": True}
               for row in check["results"])


def test_cleanup_check_uses_the_frozen_value_not_a_random_one(write_recipe: Callable[..., Path],
                                                              rtx: backends.Backend, tmp_path: Path) -> None:
    """mode 2 takes the other branch ([b, 2, 8]): the original model must be fed 2 as well."""
    check = cleaned(write_recipe(CLEANUP_NEEDED.replace("MODE", "2")), rtx, tmp_path)
    assert check["status"] == "passed"


def test_a_numerics_changing_pass_fails_the_build_naming_the_output(write_recipe: Callable[..., Path],
                                                                    rtx: backends.Backend, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(graph_cleanup.PASSES, "toposort", shift_constant("head.bias", 0.5))
    with pytest.raises(BuildError) as caught:
        cleaned(write_recipe(TWO_INPUT), rtx, tmp_path)
    message = str(caught.value)  # heatmap is multiplied by `scale` (in [0, 1]): the error is up to 0.5
    assert message == ("graph-cleanup: the cleaned graph changes the numerics of output(s) heatmap: heatmap at small "
                       "of profile 0 [image 2x3x8x8, scale 2x1]: max abs error 0.454 (atol 0.001), max rel error 177 "
                       "(rtol 0.001)")
    assert "features" not in message  # the other output is unchanged and not blamed


def test_per_output_tolerance_overrides_apply(write_recipe: Callable[..., Path], rtx: backends.Backend,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(graph_cleanup.PASSES, "toposort", shift_constant("head.bias", 0.01))  # x scale (< 0.91)
    with pytest.raises(BuildError, match=r"output\(s\) heatmap"):
        cleaned(write_recipe(TWO_INPUT + "validate: {atol: 1.0e-3, rtol: 1.0e-3}\n", "strict.yaml"), rtx,
                tmp_path / "a")
    loose = TWO_INPUT + "validate:\n  atol: 1.0e-3\n  rtol: 1.0e-3\n  outputs:\n    heatmap: {atol: 1.0e-2}\n"
    check = cleaned(write_recipe(loose, "loose.yaml"), rtx, tmp_path / "b")
    (row,) = check["results"]  # one small shape per profile
    assert check["status"] == "passed" and row["shape"] == "small"
    assert row["outputs"]["heatmap"]["atol"] == 1e-2 and row["outputs"]["features"]["atol"] == 1e-3
    assert 1e-3 < row["outputs"]["heatmap"]["max_abs"] <= 1e-2  # beyond the default atol, within the override
    assert row["outputs"]["features"]["max_abs"] == 0.0


def test_cleanup_check_without_profiles_or_validate_block(write_recipe: Callable[..., Path],
                                                          rtx: backends.Backend, tmp_path: Path) -> None:
    recipe = write_recipe("name: tiny\nversion: 1.0.0\nmodel: {path: {models}/tiny.onnx}\nbackend: tensorrt-rtx\n"
                          "targets: [sm89]\nstages:\n  - parse: {}\n  - graph-cleanup: {override_shapes: {x: [2, 4]}}\n"
                          "  - network-flag: {}\n  - memory-pool: {}\n  - serialize: {}\n")
    (row,) = cleaned(recipe, rtx, tmp_path)["results"]
    assert (row["profile"], row["shape"], row["inputs"], row["passed"]) == (None, "static", {"x": [2, 4]}, True)


# ---------------------------------------------------------------- validation records on published artifacts


@pytest.fixture
def artifact(write_recipe: Callable[..., Path], tmp_path: Path) -> tuple[Store, Any]:
    store = Store(tmp_path / "store")
    recipe = write_recipe(CLEANUP_NEEDED.replace("MODE", "1"))
    assert cli.main(["-q", "--store", str(store.root), "build", str(recipe)], environ={}) == 0
    (published,) = store.artifacts()
    return store, published


def onnxruntime_as_engine(model: Callable[[Any], str]) -> Callable[..., list[dict]]:
    """Stands in for TensorRT where a GPU verdict is needed: ONNX Runtime on `model(artifact)` plays the engine,
    with the same feeds, Comparator and tolerances as the real run."""

    def run(artifact: Any, manifest: Manifest, spec: ValidateSpec, environ: Any, log: Any) -> list[dict]:
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

        sets, feeds = validate.engine_feeds(manifest, spec)
        runners = lambda profile: [OnnxrtRunner(SessionFromOnnx(model(artifact)), name="tensorrt"),  # noqa: E731
                                   OnnxrtRunner(SessionFromOnnx(str(validate.original_model(manifest))),
                                                name="onnxruntime")]
        return compare.compare(runners, sets, feeds, list(manifest.model.outputs), spec, "stand-in")

    return run


def unchanged_except_validation(before: Manifest, after: Manifest) -> bool:
    return {k: v for k, v in before.to_dict().items() if k != "validation"} == \
        {k: v for k, v in after.to_dict().items() if k != "validation"}


def test_validation_here_is_skipped_with_the_probes_reason(artifact: tuple[Store, Any]) -> None:
    store, published = artifact
    probe = gpu.probe()
    if probe.driver:
        pytest.skip("this machine has a CUDA driver")
    before, engine_bytes = published.manifest(), (published.path / "engine.plan").read_bytes()
    spec = recipes.load(before.recipe.path).validate
    report = validate.validate_artifact(store, published, spec, probe, {}, LOG)
    after = published.manifest()
    assert report["status"] == "skipped" and report["reason"] == probe.reason and report["results"] == []
    assert "no CUDA driver" in report["reason"]
    assert after.to_dict()["validation"] == report == json.loads((published.path / validate.REPORT).read_text())
    assert unchanged_except_validation(before, after)
    assert (published.path / "engine.plan").read_bytes() == engine_bytes


def test_a_passing_gpu_run_is_recorded_per_output_and_shape(artifact: tuple[Store, Any]) -> None:
    store, published = artifact
    before = published.manifest()
    spec = ValidateSpec(atol=1e-4, rtol=1e-4, shapes=("min", "max"))
    stand_in = onnxruntime_as_engine(lambda a: str(a.path / "model.cleaned.onnx"))
    report = validate.validate_artifact(store, published, spec, RTX_4090, {}, LOG, run=stand_in)
    assert report["status"] == "passed" and report["reason"] is None and report["gpu"] == "NVIDIA GeForce RTX 4090"
    assert [(r["shape"], r["inputs"], r["outputs"]["y"]["passed"]) for r in report["results"]] == [
        ("min", {"x": [1, 16]}, True), ("max", {"x": [64, 16]}, True)]
    assert unchanged_except_validation(before, published.manifest())
    assert published.manifest().validation.status == "passed"


def test_a_failing_gpu_run_names_the_outputs(artifact: tuple[Store, Any], tmp_path: Path) -> None:
    import onnx

    store, published = artifact
    model = onnx.load(str(published.path / "model.cleaned.onnx"))
    bias = next(t for t in model.graph.initializer if t.name == "fc.bias")
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + np.float32(1.0), "fc.bias"))
    onnx.save(model, str(tmp_path / "wrong.onnx"))
    stand_in = onnxruntime_as_engine(lambda a: str(tmp_path / "wrong.onnx"))
    report = validate.validate_artifact(store, published, ValidateSpec(), RTX_4090, {}, LOG, run=stand_in)
    assert report["status"] == "failed"
    assert report["reason"].startswith("output(s) y differ from ONNX Runtime: y at opt of profile 0 [x 8x16]: ")
    assert validate.describe_report(report)[1].startswith("  FAIL y                opt    profile 0 max abs ")


def test_a_run_that_cannot_complete_is_failed_never_passed(artifact: tuple[Store, Any]) -> None:
    store, published = artifact

    def broken(*args: Any) -> list[dict]:
        raise PipelineError("tensorrt-rtx 1.7.1.116 could not deserialize the engine: bad plan")

    report = validate.validate_artifact(store, published, ValidateSpec(), RTX_4090, {}, LOG, run=broken)
    assert report["status"] == "failed"
    assert report["reason"] == "validation could not complete: tensorrt-rtx 1.7.1.116 could not deserialize " \
                               "the engine: bad plan"


def test_after_build_only_validates_when_the_recipe_asks(artifact: tuple[Store, Any]) -> None:
    store, published = artifact
    recipe = recipes.load(published.manifest().recipe.path)
    no_block = dataclasses.replace(recipe, validate=None)
    lines: list[str] = []
    assert validate.after_build(no_block, [published], store, RTX_4090, {}, LOG, lines.append) is True
    assert lines == [] and published.manifest().validation.status == "skipped"  # from the build itself


# ---------------------------------------------------------------- the real thing (GPU runners only)


@needs_gpu
def test_engine_validates_against_onnxruntime_on_the_gpu(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    recipe = write_recipe(CLEANUP_NEEDED.replace("MODE", "1").replace("backend: tensorrt-rtx", "backend: auto")
                          .replace("targets: [sm89]", "targets: [local]"))
    store = Store(tmp_path / "store")
    assert cli.main(["-q", "--store", str(store.root), "build", str(recipe)], environ={}) == 0
    (published,) = store.artifacts()
    report = published.manifest().validation
    assert report.status == "passed", report
    assert len(report.results) == 3


def test_the_settings_travel_with_the_manifest(artifact: tuple[Store, Any]) -> None:
    """Validation on another machine needs neither the recipe file nor the build machine's paths."""
    store, published = artifact
    manifest = published.manifest()
    recipe_file = manifest.recipe.path
    expected = recipes.load(recipe_file).validate
    recipe_file.unlink()
    assert validate.settings(manifest, LOG) == expected == ValidateSpec(
        atol=1e-4, rtol=1e-4, shapes=("min", "opt", "max"), seed=3)
    none = Manifest.from_dict({**manifest.to_dict(), "validate": None}, published.path / MANIFEST)
    assert validate.settings(none, LOG) == ValidateSpec()


def test_the_original_model_can_be_given_where_its_path_does_not_exist(artifact: tuple[Store, Any],
                                                                        tmp_path: Path, models_dir: Path) -> None:
    store, published = artifact
    data = published.manifest().to_dict()
    data["model"]["path"] = str(tmp_path / "gone.onnx")
    manifest = Manifest.from_dict(data, published.path / MANIFEST)
    with pytest.raises(PipelineError, match=r"gone.onnx is missing or is not the one the engine was built from"):
        validate.original_model(manifest)
    assert validate.original_model(manifest, models_dir / "cleanup_needed.onnx") == models_dir / "cleanup_needed.onnx"
    with pytest.raises(PipelineError, match=r"tiny.onnx is missing or is not the one"):
        validate.original_model(manifest, models_dir / "tiny.onnx")  # another model: wrong sha256


def test_a_run_that_compares_nothing_keeps_a_recorded_result(artifact: tuple[Store, Any]) -> None:
    store, published = artifact
    stand_in = onnxruntime_as_engine(lambda a: str(a.path / "model.cleaned.onnx"))
    passed = validate.validate_artifact(store, published, ValidateSpec(), RTX_4090, {}, LOG, run=stand_in)
    assert passed["status"] == "passed"
    no_gpu = Probe(False, (), "no CUDA driver on this machine (test)")
    again = validate.validate_artifact(store, published, ValidateSpec(), no_gpu, {}, LOG)
    assert (again["status"], again["recorded"], again["kept"]) == ("skipped", False, "passed")
    assert published.manifest().to_dict()["validation"] == passed


def test_a_stopping_build_makes_no_more_onnx_runtime_sessions(models_dir: Path) -> None:
    """Ctrl-C sets Background.stopping: the cleanup check ends at its next session instead of running on."""
    stopping = threading.Event()
    assert cleanup._beside_build(models_dir / "tiny.onnx", stopping).get_inputs()[0].name == "x"
    stopping.set()
    with pytest.raises(BuildError, match="^graph-cleanup: the cleanup check was stopped$"):
        cleanup._beside_build(models_dir / "tiny.onnx", stopping)
