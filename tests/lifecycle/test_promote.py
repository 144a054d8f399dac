"""promote: reuse / rebuild / refuse decided from real TensorRT-RTX manifests, the production gate, waivers,
and promotions racing each other."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.make_models import MODELS, write_model
from pipeline.build.cache import build_key
from pipeline.errors import PromotionError, TagError
from pipeline.lifecycle import channel
from pipeline.lifecycle.promote import (
    Decision,
    Toolchain,
    decide,
    promote,
    toolchain,
    unvalidated,
)
from pipeline.manifest import Manifest
from pipeline.store import MANIFEST, Store
from pipeline.trt import backend as backends
from pipeline.trt.target import Tag, Target, parse_tag
from tests._lifecycle import (
    LOG,
    NO_GPU,
    SM86,
    SM89,
    SM120,
    TINY,
    build,
    copy_store,
    race,
    race_promote,
    set_validation,
    write,
)
from tests.test_manifest import sample

H100 = "nvidia-h100-80gb-hbm3.sm90.trt-11.4.0"


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Store:
    """tiny@1.0.0 really built with TensorRT-RTX for sm86, sm89 and sm120."""
    root = tmp_path_factory.mktemp("promote")
    store = Store(root / "store")
    build(write(root / "tiny.yaml", TINY, models_dir / "tiny.onnx"), store)
    return store


@pytest.fixture(scope="module")
def sm86_only(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Store:
    root = tmp_path_factory.mktemp("promote86")
    store = Store(root / "store")
    build(write(root / "tiny.yaml", TINY, models_dir / "tiny.onnx"), store, ("sm86",))
    return store


@pytest.fixture
def fresh(three: Store, tmp_path: Path) -> Store:
    return copy_store(three, tmp_path / "store")


def run(store: Store, from_tag: str, to_tag: str, channel_name: str = "candidate", **options: object):  # type: ignore[no-untyped-def]
    return promote(store, "tiny@1.0.0", from_tag, to_tag, channel_name, by="ana@ci", log=LOG, probe=NO_GPU,
                   **options)  # type: ignore[arg-type]


def rtx_tools() -> Toolchain:
    return toolchain("tensorrt-rtx", NO_GPU)


# ---------------------------------------------------------------- tags and toolchains


def test_tags_parse_for_both_backends() -> None:
    assert parse_tag(SM89) == Tag(SM89, "sm89", "tensorrt-rtx", "1.7.1", None)
    assert parse_tag(H100) == Tag(H100, "sm90", "tensorrt", "11.4.0", "nvidia-h100-80gb-hbm3")
    assert parse_tag(SM120).compute_capability == "12.0"
    with pytest.raises(TagError) as error:
        parse_tag("sm89")
    assert str(error.value) == ("'sm89' is not a GPU tag; expected e.g. sm89.rtx-1.7.1 or "
                                "nvidia-a100-sxm4-80gb.sm80.trt-10.9.0")


def test_the_rtx_toolchain_here_builds_the_rtx_compute_capabilities() -> None:
    tools = rtx_tools()
    assert (tools.backend, tools.version, tools.gpu) == ("tensorrt-rtx", "1.7.1", None)
    assert tools.sms == ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")
    missing = toolchain("tensorrt", NO_GPU, load=lambda name: backends.load(name, importer=_no_module))
    assert missing.sms == () and missing.version == "not installed"


def _no_module(name: str) -> object:
    raise ImportError(f"No module named '{name}'")


# ---------------------------------------------------------------- decisions from real manifests


def test_same_compute_capability_and_backend_version_is_reused(three: Store) -> None:
    manifest = three.resolve("tiny@1.0.0", SM89).manifest()
    assert decide(manifest, parse_tag(SM89), rtx_tools) == Decision(
        "reuse", "TensorRT-RTX engine built for compute capabilities 8.9 covers 8.9; same tensorrt-rtx 1.7.1")


def test_another_compute_capability_is_a_rebuild(three: Store) -> None:
    manifest = three.resolve("tiny@1.0.0", SM86).manifest()
    assert manifest.config.compute_capabilities == ("8.6",)
    assert decide(manifest, parse_tag(SM120), rtx_tools) == Decision(
        "rebuild", "compute capability 8.6 -> 12.0: the engine is not valid there as it is; rebuilding from the "
                   "same recipe, model and settings with tensorrt-rtx 1.7.1")


@pytest.mark.parametrize(("to", "reason"), [
    ("sm90.rtx-1.7.1", ("compute capability: tensorrt-rtx 1.7.1 here cannot build for sm90; it builds for sm75, "
                       "sm80, sm86, sm89, sm120, sm121")),
    ("sm89.rtx-1.8.0", ("backend version: the engine was built with tensorrt-rtx 1.7.1; sm89.rtx-1.8.0 needs "
                       "tensorrt-rtx 1.8.0, and an engine only runs with the TensorRT version that built it (build "
                       "the recipe with that version instead)")),
    (H100, (f"platform: the engine was built with tensorrt-rtx; {H100} needs a tensorrt engine, and a rebuild "
           "would change the backend, not only the target")),
])
def test_mismatches_are_refused_with_one_line_naming_them(fresh: Store, to: str, reason: str) -> None:
    assert decide(fresh.resolve("tiny@1.0.0", SM89).manifest(), parse_tag(to), rtx_tools) == Decision("refuse", reason)
    with pytest.raises(PromotionError) as error:
        run(fresh, SM89, to)
    assert str(error.value) == f"cannot promote tiny@1.0.0+1 {SM89} to {to}: {reason}"
    assert "\n" not in str(error.value)
    assert channel.history(fresh, "tiny") == [] and channel.tags(fresh, "tiny") == []


def test_an_rtx_engine_whose_target_set_covers_the_target_is_reused(three: Store) -> None:
    """The pipeline builds one compute capability per engine, so a multi-target set is written into a copy
    of a real manifest here: the rule is about config.compute_capabilities, whatever produced it."""
    data = three.resolve("tiny@1.0.0", SM86).manifest().to_dict()
    data["config"]["compute_capabilities"] = ["8.6", "8.9", "12.0"]
    manifest = Manifest.from_dict(data, Path(MANIFEST))
    assert decide(manifest, parse_tag(SM120), rtx_tools) == Decision(
        "reuse", "TensorRT-RTX engine built for compute capabilities 8.6, 8.9, 12.0 covers 12.0; "
                 "same tensorrt-rtx 1.7.1")
    assert decide(manifest, parse_tag("sm75.rtx-1.7.1"), rtx_tools).action == "rebuild"


def _full_trt(manifest: Manifest, gpu: str, sm: str, hardware: str) -> Manifest:
    """A real RTX manifest turned into what a full-TensorRT build records (full TensorRT cannot be installed
    on these machines, so its manifests can only be written, not produced)."""
    m = manifest.to_dict()
    cc = f"{sm[2:-1]}.{sm[-1]}"
    m["backend"] = {"name": "tensorrt", "version": "10.9.0.34"}
    m["target"] = {"name": "local", "tag": f"{gpu}.{sm}.trt-10.9.0", "compute_capability": cc, "gpu": gpu}
    m["config"].update(hardware_compatibility=hardware, compute_capabilities=[])
    return Manifest.from_dict(m, Path(MANIFEST))


@pytest.mark.parametrize(("hardware", "to", "action", "reason"), [
    ("ampere_plus", "nvidia-h100-80gb-hbm3.sm90.trt-10.9.0", "reuse",
     "built with hardware compatibility ampere+ and 9.0 is Ampere or newer; same tensorrt 10.9.0"),
    ("ampere_plus", "nvidia-geforce-rtx-4090.sm89.trt-10.9.0", "reuse",
     "built with hardware compatibility ampere+ and 8.9 is Ampere or newer; same tensorrt 10.9.0"),
    ("ampere_plus", "tesla-t4.sm75.trt-10.9.0", "refuse",
     "compute capability: tensorrt 10.9.0 here cannot build for sm75; it builds for sm80"),
    ("same_compute_capability", "nvidia-a30.sm80.trt-10.9.0", "reuse",
     "same compute capability 8.0 and same tensorrt 10.9.0"),
    ("none", "nvidia-a100-sxm4-80gb.sm80.trt-10.9.0", "reuse", "same compute capability 8.0 and same tensorrt 10.9.0"),
    ("none", "nvidia-a30.sm80.trt-10.9.0", "refuse",
     ("GPU model: nvidia-a30.sm80.trt-10.9.0 is for nvidia-a30, and full TensorRT builds for this machine's GPU "
     "(nvidia-a100-sxm4-80gb)")),
    ("none", "nvidia-h100-80gb-hbm3.sm90.trt-11.4.0", "refuse",
     ("backend version: the engine was built with tensorrt 10.9.0; nvidia-h100-80gb-hbm3.sm90.trt-11.4.0 needs "
     "tensorrt 11.4.0, and an engine only runs with the TensorRT version that built it (build the recipe with "
     "that version instead)")),
])
def test_full_tensorrt_hardware_compatibility_rules(three: Store, hardware: str, to: str, action: str,
                                                    reason: str) -> None:
    manifest = _full_trt(three.resolve("tiny@1.0.0", SM89).manifest(), "nvidia-a100-sxm4-80gb", "sm80", hardware)
    here = Toolchain("tensorrt", "10.9.0", ("sm80",), "nvidia-a100-sxm4-80gb")
    assert decide(manifest, parse_tag(to), lambda: here) == Decision(action, reason)


def test_a_full_tensorrt_rebuild_on_the_target_gpu_is_a_rebuild(three: Store) -> None:
    manifest = _full_trt(three.resolve("tiny@1.0.0", SM89).manifest(), "nvidia-a100-sxm4-80gb", "sm80", "none")
    on_a30 = Toolchain("tensorrt", "10.9.0", ("sm80",), "nvidia-a30")
    assert decide(manifest, parse_tag("nvidia-a30.sm80.trt-10.9.0"), lambda: on_a30) == Decision(
        "rebuild", "GPU nvidia-a100-sxm4-80gb -> nvidia-a30: the engine is not valid there as it is; rebuilding "
                   "from the same recipe, model and settings with tensorrt 10.9.0")


# ---------------------------------------------------------------- promotions


def test_reuse_points_the_channel_at_the_same_build(fresh: Store) -> None:
    done = run(fresh, SM89, SM89)
    source = fresh.resolve("tiny@1.0.0", SM89)
    assert (done.decision.action, done.artifact, done.source, done.built) == ("reuse", source, source, False)
    pointer = channel.read(fresh, "tiny", SM89)["candidate"]
    assert (pointer["ref"], pointer["tag"], pointer["decision"], pointer["by"], pointer["waiver"]) == (
        "tiny@1.0.0+1", SM89, "reuse", "ana@ci", None)
    [event] = channel.history(fresh, "tiny")
    assert {k: event[k] for k in ("by", "decision", "from", "built", "why", "waiver", "channel", "tag")} == {
        "by": "ana@ci", "decision": "reuse", "from": {"ref": "tiny@1.0.0+1", "tag": SM89}, "built": False,
        "why": None, "waiver": None, "channel": "candidate", "tag": SM89}


def test_rebuild_builds_for_the_target_from_the_same_inputs_and_links_the_source(sm86_only: Store,
                                                                                 tmp_path: Path) -> None:
    store = copy_store(sm86_only, tmp_path / "store")
    source = store.resolve("tiny@1.0.0", SM86)
    done = run(store, SM86, SM89, reason="RTX 4090 fleet")

    assert (done.decision.action, done.built, done.artifact.tag) == ("rebuild", True, SM89)
    old, new = source.manifest().to_dict(), done.artifact.manifest().to_dict()
    assert new["promoted_from"] == {
        "ref": "tiny@1.0.0+1", "tag": SM86, "build_key": old["build"]["key"], "engine_sha256": old["engine"]["sha256"],
        "recipe_sha256": old["recipe"]["sha256"], "cleaned_sha256": old["model"]["cleaned_sha256"]}
    # exactly the same inputs, only the target differs
    assert new["recipe"] == old["recipe"] and new["backend"] == old["backend"]
    assert new["model"]["sha256"] == old["model"]["sha256"]
    assert new["model"]["cleaned_sha256"] == old["model"]["cleaned_sha256"]
    assert {**new["config"], "compute_capabilities": None} == {**old["config"], "compute_capabilities": None}
    assert (old["config"]["compute_capabilities"], new["config"]["compute_capabilities"]) == (["8.6"], ["8.9"])
    assert new["target"]["tag"] == SM89 and new["build"]["key"] != old["build"]["key"]
    assert (done.artifact.path / "engine.plan").stat().st_size == new["engine"]["bytes"] > 0
    assert channel.read(store, "tiny", SM89)["candidate"]["decision"] == "rebuild"
    [event] = channel.history(store, "tiny")
    assert (event["built"], event["why"], event["from"]) == (True, "RTX 4090 fleet", {"ref": "tiny@1.0.0+1", "tag": SM86})


def test_rebuild_reuses_an_existing_build_with_the_same_key(fresh: Store) -> None:
    existing = fresh.resolve("tiny@1.0.0", SM120)
    done = run(fresh, SM86, SM120)
    assert (done.decision.action, done.built, done.artifact) == ("reuse", False, existing)
    assert done.decision.reason == (f"{SM120} already has tiny@1.0.0+1 [{SM120}], built from the same inputs (same "
                                    "build key); not rebuilt")
    assert channel.read(fresh, "tiny", SM120)["candidate"]["decision"] == "reuse"
    assert [e["decision"] for e in channel.history(fresh, "tiny")] == ["reuse"]
    assert [a.ref for a in fresh.artifacts("tiny") if a.tag == SM120] == ["tiny@1.0.0+1"]  # nothing new was built


def test_rebuild_is_refused_when_the_recipe_changed(tmp_path: Path, models_dir: Path) -> None:
    recipe = write(tmp_path / "tiny.yaml", TINY, models_dir / "tiny.onnx")
    store = Store(tmp_path / "store")
    build(recipe, store, ("sm86",))
    recipe.write_text(recipe.read_text().replace("64MiB", "128MiB"))
    with pytest.raises(PromotionError) as error:
        run(store, SM86, SM89)
    assert str(error.value).startswith(f"cannot rebuild tiny@1.0.0+1 {SM86} for {SM89}: recipe: {recipe} changed since "
                                       "it was built (sha256 ")
    assert str(error.value).endswith("); a rebuild needs exactly the same inputs")
    assert [a.tag for a in store.artifacts()] == [SM86]


def test_rebuild_is_refused_when_the_model_changed(tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    write_model(MODELS["tiny"](), model)
    recipe = write(tmp_path / "tiny.yaml", TINY, model)
    store = Store(tmp_path / "store")
    build(recipe, store, ("sm86",))
    write_model(MODELS["tiny"](seed=7), model)
    with pytest.raises(PromotionError, match=rf"^cannot rebuild tiny@1\.0\.0\+1 {SM86} for {SM89}: model: {model} changed "
                                             r"since it was built \(sha256 [0-9a-f]{12}, was [0-9a-f]{12}\)$"):
        run(store, SM86, SM89)


def test_rebuild_is_refused_with_another_build_of_the_same_backend_version(sm86_only: Store, tmp_path: Path) -> None:
    store = copy_store(sm86_only, tmp_path / "store")
    store.update_manifest(store.resolve("tiny@1.0.0", SM86), lambda m: m["backend"].update(version="1.7.1.999"))
    with pytest.raises(PromotionError) as error:
        run(store, SM86, SM89)
    assert str(error.value) == (f"cannot rebuild tiny@1.0.0+1 {SM86} for {SM89}: backend version: it was built with "
                                "tensorrt-rtx 1.7.1.999; this machine has 1.7.1.116")


def test_rebuild_is_refused_when_the_build_key_cannot_be_reproduced(sm86_only: Store, tmp_path: Path) -> None:
    """The recorded key stands for settings that are no longer what the recipe gives (e.g. a timing cache
    whose content changed: full TensorRT only, RTX cannot use one on CPU)."""
    store = copy_store(sm86_only, tmp_path / "store")
    store.update_manifest(store.resolve("tiny@1.0.0", SM86), lambda m: m["build"].update(key="0" * 64))
    with pytest.raises(PromotionError) as error:
        run(store, SM86, SM89)
    assert str(error.value) == (f"cannot rebuild tiny@1.0.0+1 {SM86} for {SM89}: settings: the recipe's settings or "
                                "timing cache give another build key than the source's")
    assert [a.tag for a in store.artifacts()] == [SM86]


def test_the_build_key_of_a_real_manifest_is_reproducible(three: Store) -> None:
    from pipeline import recipe as recipes

    manifest = three.resolve("tiny@1.0.0", SM89).manifest()
    recipe = recipes.load(manifest.recipe.path)
    target = Target("sm89", SM89, "8.9", None, "sm89")
    assert build_key(recipe, manifest.model.cleaned_sha256, backends.load("tensorrt-rtx"), target) == \
        manifest.build.key


# ---------------------------------------------------------------- the production gate and waivers


def test_production_needs_validation_passed_on_that_tag(fresh: Store) -> None:
    with pytest.raises(PromotionError) as error:
        run(fresh, SM89, SM89, "production")
    assert str(error.value) == (f"cannot promote tiny@1.0.0+1 {SM89} to {SM89} production: its validation status is "
                                "'not-run' (no validation has run on this artifact yet); production needs validation "
                                f"passed on {SM89}")
    assert error.value.hint == ("validate it on a GPU of compute capability 8.9 first, or waive with "
                                "--allow-unvalidated --reason \"...\"")
    assert channel.read(fresh, "tiny", SM89) == {} and channel.history(fresh, "tiny") == []


def test_a_failed_validation_also_blocks_production(fresh: Store) -> None:
    set_validation(fresh, fresh.resolve("tiny@1.0.0", SM89), "failed", "output y differs from ONNX Runtime")
    with pytest.raises(PromotionError,
                       match=r"its validation status is 'failed' \(output y differs from ONNX Runtime\)"):
        run(fresh, SM89, SM89, "production")


def test_a_passed_validation_reaches_production_without_waiver(fresh: Store) -> None:
    set_validation(fresh, fresh.resolve("tiny@1.0.0", SM89), "passed")
    done = run(fresh, SM89, SM89, "production")
    assert (done.decision.action, done.waiver) == ("reuse", None)
    assert channel.read(fresh, "tiny", SM89)["production"]["waiver"] is None
    assert channel.history(fresh, "tiny")[-1]["waiver"] is None


def test_validation_on_another_tag_does_not_count() -> None:
    data = sample()
    data["target"]["tag"], data["validation"] = SM86, {"status": "passed", "reason": None}
    manifest = Manifest.from_dict(data, Path(MANIFEST))
    assert unvalidated(manifest, SM86) is None
    assert unvalidated(manifest, SM89) == f"it passed validation on {SM86}, not on {SM89}"
    on_sm89 = Manifest.from_dict({**data, "validation": {"status": "passed", "tag": SM89}}, Path(MANIFEST))
    assert unvalidated(on_sm89, SM89) is None


def test_a_waiver_lets_an_unvalidated_build_in_and_is_recorded(fresh: Store) -> None:
    done = run(fresh, SM89, SM89, "production", allow_unvalidated=True, reason="hotfix; checked by hand on an L4")
    assert done.waiver == "hotfix; checked by hand on an L4"
    assert channel.read(fresh, "tiny", SM89)["production"]["waiver"] == "hotfix; checked by hand on an L4"
    [event] = channel.history(fresh, "tiny")
    assert event["waiver"] == {"reason": "hotfix; checked by hand on an L4",
                               "unvalidated": "its validation status is 'not-run' (no validation has run on this "
                                              "artifact yet)"}
    assert event["why"] == "hotfix; checked by hand on an L4"


def test_a_waiver_needs_a_reason(fresh: Store) -> None:
    with pytest.raises(PromotionError) as error:
        run(fresh, SM89, SM89, "production", allow_unvalidated=True, reason="  ")
    assert str(error.value) == '--allow-unvalidated needs --reason "...": the waiver is recorded in the history'


def test_a_rebuild_into_production_is_blocked_before_building(sm86_only: Store, tmp_path: Path) -> None:
    store = copy_store(sm86_only, tmp_path / "store")
    with pytest.raises(PromotionError) as error:
        run(store, SM86, SM89, "production")
    assert str(error.value) == (f"cannot promote tiny@1.0.0+1 {SM86} to {SM89} production: a rebuilt engine has not "
                                f"been validated yet; production needs validation passed on {SM89}")
    assert "promote to candidate first" in (error.value.hint or "")
    assert [a.tag for a in store.artifacts()] == [SM86]


# ---------------------------------------------------------------- racing


def test_two_promotions_racing_are_both_applied_and_recorded(fresh: Store) -> None:
    race(race_promote, [(str(fresh.root), "tiny@1.0.0", SM89, name, name) for name in ("candidate", "production")],
         timeout=120)

    assert sorted(channel.read(fresh, "tiny", SM89)) == ["candidate", "production"]
    events = channel.history(fresh, "tiny")
    assert sorted((e["channel"], e["by"], e["why"]) for e in events) == [
        ("candidate", "worker-candidate", "candidate"), ("production", "worker-production", "production")]


def test_a_rebuild_runs_the_recipes_validate_step(tmp_path: Path, models_dir: Path) -> None:
    """As `trt-pipeline build` does: here, with no GPU, the new build is recorded as skipped with the reason."""
    recipe = write(tmp_path / "tiny.yaml", TINY + "validate: {atol: 1.0e-3}\n", models_dir / "tiny.onnx")
    store = Store(tmp_path / "store")
    build(recipe, store, ("sm86",))
    done = run(store, SM86, SM89)
    assert (done.decision.action, done.built) == ("rebuild", True)
    validation = done.artifact.manifest().validation
    assert validation.status == "skipped" and validation.reason
