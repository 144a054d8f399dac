"""manifest.json checked against the files it describes; the cache-key schema pinned so a change is deliberate."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import tensorrt_rtx

from pipeline import digest
from pipeline import recipe as recipes
from pipeline.build.cache import build_key, build_key_inputs, source_key
from pipeline.stages import KEY_STAGES
from pipeline.stages.parse import digests
from pipeline.stages.serialize import SerializeSpec
from pipeline.store import Artifact, Store
from pipeline.trt import backend as backends
from pipeline.trt.backend import Backend
from pipeline.trt.gpu import Probe
from pipeline.trt.target import resolve
from tests.build.test_runner import RECIPE, build_with

Recipe = Callable[..., Path]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def built(write_recipe: Recipe, store: Store) -> tuple[Path, Artifact]:
    path = write_recipe(RECIPE)
    return path, build_with(path, store, targets=("sm89",))[0].artifact


def test_manifest_has_every_key_the_issue_asks_for(built: tuple[Path, Artifact]) -> None:
    manifest = built[1].manifest().to_dict()
    required = {
        "recipe": {"name", "version", "path", "sha256"},
        "model": {"path", "sha256", "cleaned_sha256", "opset", "inputs", "outputs"},
        "backend": {"name", "version"},
        "target": {"tag", "compute_capability", "gpu"},
        "network": {"flags"},
        "config": {"memory_pools", "profiles", "builder_optimization_level", "flags"},
        "engine": {"file", "sha256", "bytes"},
        "build": {"number", "key", "source_key", "created_at", "duration_s", "host", "stages"},
        "validation": {"status", "reason"},
    }
    for section, keys in required.items():
        assert keys <= set(manifest[section]), (section, keys - set(manifest[section]))
    for stage in manifest["build"]["stages"]:
        assert {"name", "seconds"} <= set(stage)


def test_manifest_matches_the_files_it_describes(built: tuple[Path, Artifact], models_dir: Path) -> None:
    path, artifact = built
    manifest = artifact.manifest().to_dict()
    engine, cleaned = artifact.path / "engine.plan", artifact.path / "model.cleaned.onnx"
    model = models_dir / "tiny.onnx"
    assert manifest["recipe"] == {"name": "tiny", "version": "1.0.0", "path": str(path), "sha256": sha256(path)}
    assert manifest["engine"] == {"file": "engine.plan", "sha256": sha256(engine), "bytes": engine.stat().st_size}
    assert manifest["model"]["path"] == str(model)
    assert manifest["model"]["sha256"] == sha256(model)
    assert manifest["model"]["bytes"] == model.stat().st_size
    assert manifest["model"]["cleaned_sha256"] == sha256(cleaned)
    assert manifest["model"]["cleaned_file"] == "model.cleaned.onnx"
    assert manifest["model"]["opset"] == 17
    assert manifest["model"]["inputs"] == {"x": {"dtype": "float32", "shape": ["batch", 4]}}
    assert manifest["model"]["outputs"] == {"y": {"dtype": "float32", "shape": ["batch", 8]}}
    assert manifest["backend"] == {"name": "tensorrt-rtx", "version": tensorrt_rtx.__version__}
    assert manifest["target"]["tag"] == artifact.tag == artifact.path.name
    assert (manifest["target"]["compute_capability"], manifest["target"]["gpu"]) == ("8.9", None)
    assert manifest["network"]["flags"] == ["STRONGLY_TYPED"]
    assert manifest["config"]["memory_pools"] == {"workspace": 64 * 1024**2}
    assert manifest["config"]["profiles"] == [{"x": {"min": [1, 4], "opt": [8, 4], "max": [64, 4]}}]
    assert manifest["config"]["builder_optimization_level"] == 3
    assert manifest["config"]["flags"] == []
    assert manifest["config"]["compute_capabilities"] == ["8.9"]


def test_manifest_build_record(built: tuple[Path, Artifact]) -> None:
    path, artifact = built
    build = artifact.manifest().to_dict()["build"]
    assert build["number"] == artifact.build == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", build["created_at"])
    assert build["host"] == socket.gethostname()
    assert [(s["name"], s["target"]) for s in build["stages"]] == [
        ("parse", None), ("graph-cleanup", None), ("network-flag", "sm89"), ("memory-pool", "sm89"),
        ("serialize", "sm89")]
    assert all(s["seconds"] >= 0 for s in build["stages"])
    assert build["waited_s"] >= 0  # for the cleanup check running beside the build, after the stages
    assert build["duration_s"] == pytest.approx(sum(s["seconds"] for s in build["stages"]) + build["waited_s"],
                                                abs=0.002)
    assert artifact.manifest().validation.status == "not-run"


def test_manifest_keys_are_recomputable(built: tuple[Path, Artifact]) -> None:
    path, artifact = built
    manifest = artifact.manifest().to_dict()
    recipe, backend = recipes.load(path), backends.load("tensorrt-rtx")
    target = resolve("sm89", backend, Probe(False, (), "no GPU"))
    assert manifest["build"]["key"] == build_key(recipe, manifest["model"]["cleaned_sha256"], backend, target)
    assert manifest["build"]["source_key"] == source_key(recipe, digests(recipe.model_path), backend, target)


def test_build_log_is_published(built: tuple[Path, Artifact]) -> None:
    assert "Engine generation completed" in (built[1].path / "build.log").read_text()


# ---------------------------------------------------------------- pinned: the key schema


def test_canonical_json_golden() -> None:
    value = {"b": 1, "a": [1, 2.5, {"z": None, "y": True}], "é": "ü"}
    text = '{"a":[1,2.5,{"y":true,"z":null}],"b":1,"\\u00e9":"\\u00fc"}'
    assert digest.canonical_json(value) == text
    assert digest.json_sha256(value) == hashlib.sha256(text.encode()).hexdigest()
    assert digest.json_sha256(value) == "5857dec587580c14ccda130456d710ccd1d226906c0f6d46b3d94878befaf056"
    assert digest.json_sha256({}) == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def test_plain_makes_frozen_recipes_json(write_recipe: Recipe) -> None:
    recipe = recipes.load(write_recipe(RECIPE))
    assert digest.plain(recipe.spec("memory-pool")) == {"limits": {"workspace": 67108864}}
    assert digest.plain(recipe.spec("serialize").profiles) == [[{"name": "x", "min": [1, 4], "opt": [8, 4],
                                                                  "max": [64, 4]}]]
    assert digest.plain(Path("/a/b")) == "/a/b"


def pinned_backend() -> Backend:
    """build_key reads only the backend's name and version; a fixed version keeps the golden key independent of
    the TensorRT-RTX that happens to be installed."""
    return Backend("tensorrt-rtx", types.SimpleNamespace(__version__="1.7.1.116"))


def test_build_key_inputs_structure(write_recipe: Recipe, rtx_backend: Backend) -> None:
    recipe = recipes.load(write_recipe(RECIPE))
    target = resolve("sm89", rtx_backend, Probe(False, (), "no GPU"))
    inputs = build_key_inputs(recipe, "c" * 64, pinned_backend(), target)
    assert set(inputs) == {"settings", "cleaned_sha256", "backend", "target"}
    assert KEY_STAGES == ("precision", "network-flag", "memory-pool", "serialize")
    assert tuple(inputs["settings"]) == ("network-flag", "memory-pool", "serialize")  # an absent precision stage: none
    assert inputs["settings"]["network-flag"] == {"explicit_batch": True, "strongly_typed": True}
    assert inputs["settings"]["memory-pool"] == {"limits": {"workspace": 67108864}}
    # Every serialize setting is in the key; `plugins` only when the recipe has some, so that recipes written
    # before plugins existed keep their keys.
    assert {f.name for f in dataclasses.fields(SerializeSpec)} == {
        "builder_optimization_level", "profiles", "flags", "hardware_compatibility", "timing_cache", "plugins"}
    assert set(inputs["settings"]["serialize"]) == {
        "builder_optimization_level", "profiles", "flags", "hardware_compatibility", "timing_cache"}
    assert inputs["backend"] == {"name": "tensorrt-rtx", "version": "1.7.1.116"}
    assert (inputs["cleaned_sha256"], inputs["target"]) == ("c" * 64, "sm89")


GOLDEN_BUILD_KEY = "c1ebf2840b5aab8f118427a80f880474539d26295d1997477d678e4369b3ec44"


def test_golden_build_key(write_recipe: Recipe, rtx_backend: Backend) -> None:
    """Change this value only on purpose: a new key makes every existing artifact look stale."""
    recipe = recipes.load(write_recipe(RECIPE))
    target = resolve("sm89", rtx_backend, Probe(False, (), "no GPU"))
    assert build_key(recipe, "c" * 64, pinned_backend(), target) == GOLDEN_BUILD_KEY


def test_cosmetic_changes_keep_the_build_key(write_recipe: Recipe, rtx_backend: Backend, models_dir: Path) -> None:
    target = resolve("sm89", rtx_backend, Probe(False, (), "no GPU"))

    def key(body: str, name: str = "recipe.yaml") -> str:
        return build_key(recipes.load(write_recipe(body, name)), "c" * 64, rtx_backend, target)

    base = key(RECIPE)
    assert key("# a comment\n" + RECIPE.replace("name: tiny", "name: renamed"), "other.yaml") == base
    assert key(RECIPE.replace("version: 1.0.0", "version: 2.0.0")) == base
    assert key(RECIPE.replace("{check: true}", "{check: false}")) == base  # parse is keyed by the cleaned hash
    assert key(RECIPE.replace("workspace: 64MiB", "workspace: 65536KiB")) == base  # same bytes
    assert key(RECIPE.replace("workspace: 64MiB", "workspace: 128MiB")) != base
    assert key(RECIPE.replace("max: [64, 4]", "max: [32, 4]")) != base
    assert key(RECIPE.replace("{strongly_typed: true}", "{}")) != base
