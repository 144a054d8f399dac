"""The build key: golden values pinned so that any change to what goes into the key is deliberate, and reuse by
content with real TensorRT-RTX builds.

If a golden test fails, the key changed: every existing artifact will be rebuilt once instead of reused.
Update the pinned value only when that is intended, and say so in the commit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline import recipe as recipes
from pipeline.build.cache import build_key, build_key_inputs
from pipeline.digest import canonical_json, json_sha256
from pipeline.store import Store
from pipeline.trt.backend import Backend
from pipeline.trt.target import Target
from tests._lifecycle import SM89, TINY, build, write

RTX = Backend("tensorrt-rtx", SimpleNamespace(__version__="1.7.1.116"))  # a fixed version, not the installed one
TRT = Backend("tensorrt", SimpleNamespace(__version__="10.9.0.34"))
T_SM89 = Target("sm89", SM89, "8.9", None, "sm89")
T_SM86 = Target("sm86", "sm86.rtx-1.7.1", "8.6", None, "sm86")
T_A100 = Target("local", "nvidia-a100-sxm4-80gb.sm80.trt-10.9.0", "8.0", "NVIDIA A100-SXM4-80GB", "sm80")
T_A30 = Target("local", "nvidia-a30.sm80.trt-10.9.0", "8.0", "NVIDIA A30", "sm80")
CLEANED = "ab" * 32

FULL = """\
name: resnet50
version: 1.0.0
model: {path: MODEL}
backend: tensorrt
targets: [local]
stages:
  - parse: {check: true, infer_shapes: true}
  - graph-cleanup: {fold_constants: true}
  - network-flag: {explicit_batch: true, strongly_typed: true}
  - memory-pool: {workspace: 2GiB, tactic_shared_memory: 48KiB}
  - serialize:
      builder_optimization_level: 5
      flags: [tf32]
      hardware_compatibility: ampere_plus
      timing_cache: {path: cache.bin}
      profiles:
        - input: {min: [1, 3, 224, 224], opt: [8, 3, 224, 224], max: [32, 3, 224, 224]}
"""

TINY_INPUTS = ('{"backend":{"name":"tensorrt-rtx","version":"1.7.1.116"},"cleaned_sha256":"' + CLEANED + '",'
               '"settings":{"memory-pool":{"limits":{"workspace":67108864}},'
               '"network-flag":{"explicit_batch":true,"strongly_typed":true},'
               '"serialize":{"builder_optimization_level":3,"flags":[],"hardware_compatibility":"none",'
               '"profiles":[[{"max":[64,4],"min":[1,4],"name":"x","opt":[8,4]}]],"timing_cache":null}},'
               '"target":"sm89"}')


@pytest.fixture
def tiny(tmp_path: Path, models_dir: Path) -> recipes.Recipe:
    return recipes.load(write(tmp_path / "tiny.yaml", TINY, models_dir / "tiny.onnx"))


@pytest.fixture
def full(tmp_path: Path, models_dir: Path) -> recipes.Recipe:
    (tmp_path / "cache.bin").write_bytes(b"timing-cache-bytes")
    return recipes.load(write(tmp_path / "full.yaml", FULL, models_dir / "tiny.onnx"))


def test_golden_tiny_sm89(tiny: recipes.Recipe) -> None:
    inputs = build_key_inputs(tiny, CLEANED, RTX, T_SM89)
    assert canonical_json(inputs) == TINY_INPUTS
    assert json_sha256(inputs) == "f344b5176fe7f8aa136ea8084cfc184f4280f226c2487655d5c3f50bb382dfe3"


def test_golden_tiny_sm86(tiny: recipes.Recipe) -> None:
    assert build_key(tiny, CLEANED, RTX, T_SM86) == "cfb9d5a9a506fa16d80b66bd5e7af637959748febafaac90141d4695caf4a693"


def test_golden_full_tensorrt_with_timing_cache_and_hardware_compatibility(full: recipes.Recipe) -> None:
    inputs = build_key_inputs(full, CLEANED, TRT, T_A100)
    assert inputs["settings"]["serialize"]["timing_cache"] == \
        "2f785b54e6626dd5f3d4e3291cd67a723af9d1f7971f3861de7d5208c2a702c5"  # sha256 of the cache file's bytes
    assert inputs["settings"]["memory-pool"] == {"limits": {"workspace": 2147483648, "tactic_shared_memory": 49152}}
    assert inputs["target"] == "sm80 NVIDIA A100-SXM4-80GB"
    assert json_sha256(inputs) == "259a2141d901af83d6b81fc71908ad7455e11c62c5ce3482ab7a54b7b4753fe2"


def test_full_tensorrt_keys_differ_per_gpu_model_of_one_compute_capability(full: recipes.Recipe) -> None:
    """An A100 engine is not an A30 engine, though both are sm80: their keys must not let one reuse the other."""
    assert build_key(full, CLEANED, TRT, T_A100) != build_key(full, CLEANED, TRT, T_A30)


def test_cosmetic_changes_keep_the_key(tmp_path: Path, models_dir: Path, tiny: recipes.Recipe) -> None:
    body = ("# a comment\n" + TINY).replace("name: tiny", "name: tiny-renamed").replace("1.0.0", "2.0.0") \
        .replace("targets: [sm86, sm89, sm120]", "targets: [sm89]").replace("parse: {}", "parse: {check: false}")
    other = recipes.load(write(tmp_path / "elsewhere" / "r.yaml", body, models_dir / "tiny.onnx"))
    assert build_key(other, CLEANED, RTX, T_SM89) == build_key(tiny, CLEANED, RTX, T_SM89)


@pytest.mark.parametrize(("old", "new"), [
    ("workspace: 64MiB", "workspace: 128MiB"),
    ("strongly_typed: true", "strongly_typed: false"),
    ("max: [64, 4]", "max: [32, 4]"),
    ("      profiles:", "      builder_optimization_level: 4\n      profiles:"),
])
def test_settings_that_shape_the_engine_change_the_key(tmp_path: Path, models_dir: Path, tiny: recipes.Recipe,
                                                       old: str, new: str) -> None:
    assert old in TINY
    other = recipes.load(write(tmp_path / "other.yaml", TINY.replace(old, new), models_dir / "tiny.onnx"))
    assert build_key(other, CLEANED, RTX, T_SM89) != build_key(tiny, CLEANED, RTX, T_SM89)


def test_inputs_outside_the_recipe_change_the_key(tiny: recipes.Recipe, full: recipes.Recipe, tmp_path: Path) -> None:
    base = build_key(tiny, CLEANED, RTX, T_SM89)
    assert build_key(tiny, "cd" * 32, RTX, T_SM89) != base
    assert build_key(tiny, CLEANED, Backend("tensorrt-rtx", SimpleNamespace(__version__="1.7.1.117")), T_SM89) != base
    assert build_key(tiny, CLEANED, RTX, T_SM86) != base
    before = build_key(full, CLEANED, TRT, T_A100)
    (tmp_path / "cache.bin").write_bytes(b"another timing cache")
    assert build_key(full, CLEANED, TRT, T_A100) != before


def test_plugin_libraries_enter_the_key_by_content(tmp_path: Path, models_dir: Path, tiny: recipes.Recipe) -> None:
    (tmp_path / "libone.so").write_bytes(b"plugin library bytes")
    body = TINY.replace("  - serialize:\n", "  - serialize:\n      plugins: [libone.so]\n")
    with_plugin = recipes.load(write(tmp_path / "plugin.yaml", body, models_dir / "tiny.onnx"))
    inputs = build_key_inputs(with_plugin, CLEANED, RTX, T_SM89)
    assert inputs["settings"]["serialize"]["plugins"] == [hashlib.sha256(b"plugin library bytes").hexdigest()]
    key = build_key(with_plugin, CLEANED, RTX, T_SM89)
    assert key != build_key(tiny, CLEANED, RTX, T_SM89)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "libone.so").write_bytes(b"plugin library bytes")  # the same library at another path: same key
    assert build_key(recipes.load(write(moved / "plugin.yaml", body, models_dir / "tiny.onnx")), CLEANED, RTX,
                     T_SM89) == key
    (tmp_path / "libone.so").write_bytes(b"a rebuilt plugin library")  # new bytes: a new key
    assert build_key(with_plugin, CLEANED, RTX, T_SM89) != key


def test_reuse_by_build_key_with_real_builds(tmp_path: Path, models_dir: Path) -> None:
    """parse settings are in the source key but not the build key: changing them alone re-runs parse, finds the
    same cleaned model and settings, and reuses the published engine; --force builds a new one."""
    recipe = write(tmp_path / "tiny.yaml", TINY, models_dir / "tiny.onnx")
    store = Store(tmp_path / "store")
    [first] = build(recipe, store, ("sm89",))
    write(recipe, TINY.replace("parse: {}", "parse: {check: false}"), models_dir / "tiny.onnx")
    [again] = build(recipe, store, ("sm89",))
    assert again == first
    [forced] = build(recipe, store, ("sm89",), force=True)
    assert (forced.ref, forced.tag) == ("tiny@1.0.0+2", SM89)
    assert forced.manifest().build.key == first.manifest().build.key
    loaded = recipes.load(recipe)
    manifest = first.manifest()
    installed = Backend("tensorrt-rtx", SimpleNamespace(__version__=manifest.backend.version))
    assert build_key(loaded, manifest.model.cleaned_sha256, installed, T_SM89) == manifest.build.key
