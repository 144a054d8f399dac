"""manifest: read and checked once; the JSON as read comes back byte for byte; a damaged manifest is one line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline import recipe as recipes
from pipeline.cli import main
from pipeline.errors import StoreError
from pipeline.files import json_bytes
from pipeline.manifest import ExternalData, Manifest, PromotedFrom, ValidationRecord
from pipeline.recipe import Tolerance, ValidateSpec
from pipeline.stages.parse import digests
from pipeline.store import MANIFEST, Artifact, Store
from tests.build.test_runner import RECIPE, build_with

SM89 = "sm89.rtx-1.7.1"
HERE = Path("/store/tiny/1.0.0/sm89.rtx-1.7.1/manifest.json")
VALIDATE = "validate: {atol: 1.0e-4, shapes: [min, opt], outputs: {y: {atol: 1.0e-2, rtol: 1.0e-3}}}\n"


def sample() -> dict[str, Any]:
    """A complete manifest as pipeline.build.record writes it (TensorRT-RTX, sm89, no graph-cleanup), fresh."""
    return {
        "schema": 1,
        "recipe": {"name": "tiny", "version": "1.0.0", "path": "/recipes/tiny.yaml", "sha256": "a" * 64},
        "model": {"path": "/models/tiny.onnx", "sha256": "b" * 64, "external_data": [], "bytes": 409,
                  "inputs": {"x": {"dtype": "float32", "shape": ["batch", 4]}},
                  "outputs": {"y": {"dtype": "float32", "shape": ["batch", 8]}}, "opset": 17,
                  "cleaned_sha256": "c" * 64, "cleaned_file": None},
        "cleanup": None,
        "cleanup_check": None,
        "backend": {"name": "tensorrt-rtx", "version": "1.7.1.116"},
        "target": {"name": "sm89", "tag": SM89, "compute_capability": "8.9", "gpu": None},
        "network": {"flags": ["STRONGLY_TYPED"], "plugins": [], "notes": [], "layers": 6,
                    "inputs": {"x": {"dtype": "float", "shape": [-1, 4]}},
                    "outputs": {"y": {"dtype": "float", "shape": [-1, 8]}}},
        "config": {"memory_pools": {"workspace": 67108864}, "builder_optimization_level": 3,
                   "profiles": [{"x": {"min": [1, 4], "opt": [8, 4], "max": [64, 4]}}], "flags": [],
                   "hardware_compatibility": "none", "compute_capabilities": ["8.9"], "timing_cache": None},
        "engine": {"file": "engine.plan", "sha256": "d" * 64, "bytes": 4},
        "build": {"number": 1, "key": "e" * 64, "source_key": "f" * 64, "created_at": "2025-01-01T00:00:00Z",
                  "duration_s": 1.5, "waited_s": 0.0, "host": "builder",
                  "tool": {"name": "trt-pipeline", "version": "0.1.0", "python": "3.11.7"}, "stages": []},
        "validate": None,
        "validation": {"status": "not-run", "reason": "no validation has run on this artifact yet"},
    }


def damaged(change: Callable[[dict], Any]) -> str:
    """The one error a sample manifest gets after `change`."""
    data = sample()
    change(data)
    with pytest.raises(StoreError) as caught:
        Manifest.from_dict(data, HERE)
    return str(caught.value)


# ---------------------------------------------------------------- a real manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Artifact:
    """tiny with graph-cleanup and a validate: block, really built for sm89 (never changed: copy it to edit)."""
    root = tmp_path_factory.mktemp("manifest")
    recipe = root / "tiny.yaml"
    recipe.write_text(RECIPE.replace("{models}", str(models_dir)) + VALIDATE)
    (outcome,) = build_with(recipe, Store(root / "store"), targets=("sm89",))
    return outcome.artifact


@pytest.fixture
def store(built: Artifact, tmp_path: Path) -> Store:
    shutil.copytree(built.path.parents[2], tmp_path / "store")
    return Store(tmp_path / "store")


def test_a_real_manifest_comes_back_byte_for_byte(built: Artifact, store: Store) -> None:
    written = (built.path / MANIFEST).read_bytes()
    assert json_bytes(built.manifest().to_dict()) == written
    artifact = store.resolve("tiny@1.0.0", SM89)
    store.update_manifest(artifact, lambda manifest: None)
    assert (artifact.path / MANIFEST).read_bytes() == written  # an update rewrites only what it changes


def test_a_real_manifest_typed(built: Artifact, models_dir: Path) -> None:
    manifest = built.manifest()
    recipe = recipes.load(manifest.recipe.path)
    assert (manifest.recipe.name, manifest.recipe.version, manifest.recipe.sha256) == ("tiny", "1.0.0", recipe.sha256)
    assert manifest.model.digests() == digests(models_dir / "tiny.onnx")
    assert (manifest.model.cleaned_file, manifest.model.inputs) == (
        "model.cleaned.onnx", {"x": {"dtype": "float32", "shape": ["batch", 4]}})
    assert (manifest.backend.name, manifest.target.tag, manifest.target.gpu) == ("tensorrt-rtx", SM89, None)
    assert (manifest.network.flags, manifest.network.plugins) == (("STRONGLY_TYPED",), ())
    assert manifest.network.inputs == {"x": {"dtype": "float", "shape": [-1, 4]}}
    assert manifest.config.profiles == ({"x": {"min": [1, 4], "opt": [8, 4], "max": [64, 4]}},)
    assert (manifest.config.compute_capabilities, manifest.config.hardware_compatibility) == (("8.9",), "none")
    assert (manifest.engine.file, manifest.engine.bytes) == ("engine.plan", (built.path / "engine.plan").stat().st_size)
    assert (manifest.build.number, len(manifest.build.key), len(manifest.build.source_key or "")) == (1, 64, 64)
    assert manifest.validation == ValidationRecord("not-run", "no validation has run on this artifact yet")
    assert manifest.validate == recipe.validate == ValidateSpec(
        atol=1e-4, shapes=("min", "opt"), outputs={"y": Tolerance(1e-2, 1e-3)})
    assert manifest.cleanup_check is not None and manifest.cleanup_check.frozen_inputs == {}
    assert manifest.promoted_from is None


def test_the_json_is_a_copy_both_ways() -> None:
    data = sample()
    manifest = Manifest.from_dict(data, HERE)
    data["engine"]["file"] = "changed.plan"
    manifest.to_dict()["engine"]["file"] = "changed.plan"
    assert manifest.engine.file == manifest.to_dict()["engine"]["file"] == "engine.plan"


# ---------------------------------------------------------------- older manifests: defaults in one place


def test_fields_older_manifests_lack_get_their_defaults() -> None:
    data = sample()
    for section, field in (("model", "cleaned_file"), ("target", "gpu"), ("network", "plugins"), ("build", "source_key"),
                           ("config", "hardware_compatibility"), ("config", "compute_capabilities")):
        del data[section][field]
    for field in ("validate", "validation", "cleanup_check"):
        del data[field]
    manifest = Manifest.from_dict(data, HERE)
    assert (manifest.model.cleaned_file, manifest.target.gpu, manifest.network.plugins, manifest.build.source_key) == (
        None, None, (), None)
    assert (manifest.config.hardware_compatibility, manifest.config.compute_capabilities) == ("none", ())
    assert manifest.validation == ValidationRecord() == ValidationRecord("not-run", None, None, ())
    assert manifest.validate is None  # before the validate: block was recorded: read the recipe file instead
    assert manifest.cleanup_check is None and manifest.promoted_from is None
    assert Manifest.from_dict(sample(), HERE).validate == ValidateSpec()  # recorded as null: the recipe had none


def test_the_validate_block_as_built() -> None:
    data = sample()
    data["validate"] = {"reference": "onnxruntime", "atol": 1e-4, "rtol": 1e-3, "shapes": ["min", "opt"], "seed": 3,
                        "outputs": {"y": {"atol": 1e-2, "rtol": 1e-3}}}
    assert Manifest.from_dict(data, HERE).validate == ValidateSpec(
        atol=1e-4, rtol=1e-3, outputs={"y": Tolerance(1e-2, 1e-3)}, shapes=("min", "opt"), seed=3)
    data["validate"] = {"atol": 1e-2}  # what is not written is the default
    assert Manifest.from_dict(data, HERE).validate == ValidateSpec(atol=1e-2)


def test_a_promotion_links_its_source() -> None:
    link = {"ref": "tiny@1.0.0+1", "tag": "sm86.rtx-1.7.1", "build_key": "e" * 64, "engine_sha256": "d" * 64,
            "recipe_sha256": "a" * 64, "cleaned_sha256": "c" * 64}
    manifest = Manifest.from_dict({**sample(), "promoted_from": link}, HERE)
    assert manifest.promoted_from == PromotedFrom(**link)


def test_the_model_digests_and_plugins_as_readers_need_them() -> None:
    data = sample()
    data["model"]["external_data"] = [{"path": "/models/tiny.onnx.data", "sha256": "9" * 64}]
    data["network"]["plugins"] = [{"path": "/lib/libone.so", "sha256": "8" * 64}]
    manifest = Manifest.from_dict(data, HERE)
    assert manifest.model.external_data == (ExternalData(Path("/models/tiny.onnx.data"), "9" * 64),)
    assert manifest.model.digests() == {"path": "/models/tiny.onnx", "sha256": "b" * 64, "bytes": 409,
                                        "external_data": [{"path": "/models/tiny.onnx.data", "sha256": "9" * 64}]}
    assert manifest.network.plugins == ("/lib/libone.so",)


# ---------------------------------------------------------------- a damaged manifest is one error naming the field


@pytest.mark.parametrize(("change", "problem"), [
    (lambda m: m.pop("engine"), "no field 'engine'"),
    (lambda m: m["engine"].pop("sha256"), "no field 'engine.sha256'"),
    (lambda m: m["build"].update(number="3"), "field 'build.number' is a string, not an integer"),
    (lambda m: m["build"].update(number=None), "field 'build.number' is null, not an integer"),
    (lambda m: m["build"].update(number=True), "field 'build.number' is a boolean, not an integer"),
    (lambda m: m["engine"].update(bytes=1.5), "field 'engine.bytes' is a number, not an integer"),
    (lambda m: m.update(validation="passed"), "field 'validation' is a string, not an object"),
    (lambda m: m.update(engine=[]), "field 'engine' is an array, not an object"),
    (lambda m: m["network"]["inputs"]["x"].update(shape=4), "field 'network.inputs.x.shape' is an integer, not an array"),
    (lambda m: m["network"]["outputs"].update(y="float"), "field 'network.outputs.y' is a string, not an object"),
    (lambda m: m["network"].update(plugins=[{"sha256": "x"}]), "no field 'network.plugins[0].path'"),
    (lambda m: m["config"]["profiles"][0]["x"].update(min=["1", 4]),
     "field 'config.profiles[0].x.min[0]' is a string, not an integer"),
    (lambda m: m["config"]["memory_pools"].update(workspace="64MiB"),
     "field 'config.memory_pools.workspace' is a string, not an integer"),
    (lambda m: m.update(validate={"shapes": "opt"}), "field 'validate.shapes' is a string, not an array"),
    (lambda m: m.update(cleanup_check={"frozen_inputs": []}), "field 'cleanup_check.frozen_inputs' is an array, "
                                                              "not an object"),
])
def test_a_damaged_manifest_names_the_file_and_the_field(change: Callable[[dict], Any], problem: str) -> None:
    assert damaged(change) == f"damaged manifest {HERE}: {problem}"


@pytest.mark.parametrize("text", ["[]", '"manifest"', "null"])
def test_a_manifest_that_is_not_an_object(text: str) -> None:
    with pytest.raises(StoreError) as caught:
        Manifest.from_dict(json.loads(text), HERE)
    assert str(caught.value) == f"damaged manifest {HERE}: not a JSON object"


def test_damaged_files_through_the_store(store: Store) -> None:
    artifact = store.resolve("tiny@1.0.0", SM89)
    path, record = artifact.path / MANIFEST, json.loads((artifact.path / MANIFEST).read_text())
    cases = [({k: v for k, v in record.items() if k != "engine"}, "damaged manifest {}: no field 'engine'"),
             ({**record, "build": {**record["build"], "number": "1"}},
              "damaged manifest {}: field 'build.number' is a string, not an integer"),
             ([record], "damaged manifest {}: not a JSON object")]
    for data, message in cases:
        path.write_text(json.dumps(data))
        with pytest.raises(StoreError) as caught:
            artifact.manifest()
        assert str(caught.value) == message.format(path)
    path.write_text(json.dumps(record)[:100])
    with pytest.raises(StoreError, match=rf"^cannot read {path}: Unterminated string"):
        artifact.manifest()


# ---------------------------------------------------------------- through the CLI: one line, exit 1, no traceback


def _without_engine(store: Store) -> Path:
    path = store.root / "tiny" / "1.0.0" / SM89 / MANIFEST
    record = json.loads(path.read_text())
    del record["engine"]
    path.write_text(json.dumps(record))
    return path


@pytest.mark.parametrize("json_flag", [(), ("--json",)])
def test_show_without_engine_is_one_line(store: Store, capsys: pytest.CaptureFixture[str],
                                         json_flag: tuple[str, ...]) -> None:
    path = _without_engine(store)
    assert main([*json_flag, "--store", str(store.root), "show", "tiny@1.0.0", "--tag", SM89], environ={}) == 1
    out, err = capsys.readouterr()
    assert err == f"error: damaged manifest {path}: no field 'engine'\n"
    assert (json.loads(out)["error"]["message"] if json_flag else out) == (  # --json: the error as a document
        f"damaged manifest {path}: no field 'engine'" if json_flag else "")


def test_export_triton_without_engine_is_one_line(store: Store, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--store", str(store.root)]
    assert main([*argv, "-q", "promote", "tiny@1.0.0", "--from", SM89], environ={"TRT_PIPELINE_USER": "ci"}) == 0
    capsys.readouterr()
    path = _without_engine(store)
    assert main([*argv, "export", "triton", "tiny", "--channel", "candidate", "--repo", str(tmp_path / "repo")],
                environ={}) == 1
    assert capsys.readouterr() == ("", f"error: damaged manifest {path}: no field 'engine'\n")
