"""runner: plan, build every target into the store, skip what is unchanged, leave nothing half-written."""

from __future__ import annotations

import json
import logging
import re
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorrt_rtx

from pipeline import recipe as recipes
from pipeline.build import cache, runner
from pipeline.build import plan as plans
from pipeline.digest import file_sha256
from pipeline.errors import BuildError, RecipeError
from pipeline.store import FAILED, MEMO, STAGING, Store
from pipeline.trt import backend as backends
from pipeline.trt import gpu

RTX = ".".join(tensorrt_rtx.__version__.split(".")[:3])
SM86, SM89 = f"sm86.rtx-{RTX}", f"sm89.rtx-{RTX}"

# tiny, with graph-cleanup (so a cleaned model is published) and two targets
RECIPE = """\
name: tiny
version: 1.0.0
model: {path: {models}/tiny.onnx}
backend: tensorrt-rtx
targets: [sm86, sm89]
stages:
  - parse: {check: true}
  - graph-cleanup: {}
  - network-flag: {strongly_typed: true}
  - memory-pool: {workspace: 64MiB}
  - serialize:
      profiles:
        - x: {min: [1, 4], opt: [8, 4], max: [64, 4]}
"""

Recipe = Callable[..., Path]


def plan_for(path: Path, targets: tuple[str, ...] = ()) -> plans.Plan:
    recipe = recipes.load(path)
    return plans.make_plan(recipe, backends.load(recipe.backend), gpu.probe(), targets)


def build_with(path: Path, store: Store, targets: tuple[str, ...] = (), force: bool = False,
               lines: list[str] | None = None) -> list[runner.Outcome]:
    """Plan and build like `trt-pipeline build`, progress lines collected into `lines`."""
    progress = (lines if lines is not None else []).append
    return runner.build(plan_for(path, targets), store, logging.getLogger("x.runner"), progress, force=force)


def staging_leftovers(store: Store) -> list[Path]:
    return list((store.root / STAGING).iterdir()) if (store.root / STAGING).exists() else []


def test_build_two_targets(write_recipe: Recipe, store: Store) -> None:
    lines: list[str] = []
    outcomes = build_with(write_recipe(RECIPE), store, lines=lines)
    assert [(o.target.name, o.artifact.tag, o.reused) for o in outcomes] == [("sm86", SM86, False),
                                                                            ("sm89", SM89, False)]
    for outcome in outcomes:
        assert outcome.artifact.path == store.root / "tiny" / "1.0.0" / outcome.artifact.tag
        assert sorted(p.name for p in outcome.artifact.path.iterdir()) == [
            "build.log", "engine.plan", "manifest.json", "model.cleaned.onnx"]
    assert [a.tag for a in store.artifacts()] == [SM86, SM89]
    assert staging_leftovers(store) == []
    assert [line.split()[:2] for line in lines] == [
        ["[1/5]", "parse"], ["[2/5]", "graph-cleanup"],
        ["[3/5]", "network-flag"], ["[4/5]", "memory-pool"], ["[5/5]", "serialize"],
        ["[3/5]", "network-flag"], ["[4/5]", "memory-pool"], ["[5/5]", "serialize"]]
    assert lines[2].split()[2] == "sm86" and lines[5].split()[2] == "sm89"
    assert all(line.endswith("s") for line in lines)


def test_only_the_asked_targets(write_recipe: Recipe, store: Store) -> None:
    outcomes = build_with(write_recipe(RECIPE), store, targets=("sm89",))
    assert [o.artifact.tag for o in outcomes] == [SM89]
    assert [a.tag for a in store.artifacts()] == [SM89]


def test_unchanged_rebuild_is_reused_by_source_key(write_recipe: Recipe, store: Store) -> None:
    path = write_recipe(RECIPE)
    first = build_with(path, store)
    lines: list[str] = []
    again = build_with(path, store, lines=lines)
    assert [o.reused for o in again] == [True, True]
    assert [o.artifact for o in again] == [o.artifact for o in first]
    assert lines == [f"[skip] sm86   unchanged recipe and model (source key): reusing tiny@1.0.0+1 {SM86}",
                     f"[skip] sm89   unchanged recipe and model (source key): reusing tiny@1.0.0+1 {SM89}",
                     "2 of 2 target(s) skipped (unchanged); use --force to rebuild"]
    assert len(store.artifacts()) == 2


def test_force_rebuilds_with_a_new_build_number(write_recipe: Recipe, store: Store) -> None:
    path = write_recipe(RECIPE)
    build_with(path, store)
    again = build_with(path, store, force=True)
    assert [(o.reused, o.artifact.build) for o in again] == [(False, 2), (False, 2)]
    assert again[0].artifact.path == store.root / "tiny" / "1.0.0+2" / SM86
    assert len(store.artifacts()) == 4


def test_changed_settings_are_rebuilt(write_recipe: Recipe, store: Store) -> None:
    build_with(write_recipe(RECIPE), store)
    again = build_with(write_recipe(RECIPE.replace("workspace: 64MiB", "workspace: 128MiB")), store)
    assert [(o.reused, o.artifact.build) for o in again] == [(False, 2), (False, 2)]
    assert again[1].artifact.manifest().config.memory_pools == {"workspace": 128 * 1024**2}


def test_changed_model_is_rebuilt(write_recipe: Recipe, store: Store, tmp_path: Path) -> None:
    from models.make_models import MODELS, write_model

    model = tmp_path / "tiny.onnx"
    write_model(MODELS["tiny"](seed=0), model)
    path = write_recipe(RECIPE.replace("{models}/tiny.onnx", str(model)))
    build_with(path, store, targets=("sm89",))
    write_model(MODELS["tiny"](seed=1), model)  # same graph, other weights
    assert [o.reused for o in build_with(path, store, targets=("sm89",))] == [False]


def test_same_cleaned_model_and_settings_are_reused_by_build_key(write_recipe: Recipe, store: Store) -> None:
    """parse settings change the source key but not the cleaned model: the build key still matches."""
    build_with(write_recipe(RECIPE), store, targets=("sm89",))
    lines: list[str] = []
    again = build_with(write_recipe(RECIPE.replace("{check: true}", "{check: false}")), store, targets=("sm89",),
                       lines=lines)
    assert [(o.reused, o.artifact.build) for o in again] == [(True, 1)]
    assert f"[skip] sm89   unchanged cleaned model and settings (build key): reusing tiny@1.0.0+1 {SM89}" in lines
    assert staging_leftovers(store) == []


FAILING = RECIPE.replace("{workspace: 64MiB}", "{workspace: 64MiB, tactic_shared_memory: 0}")


def test_failure_leaves_nothing_half_written(write_recipe: Recipe, store: Store) -> None:
    """A real failure in serialize (TensorRT-RTX refuses a 0-byte shared-memory pool) for the first target."""
    with pytest.raises(BuildError) as caught:
        build_with(write_recipe(FAILING), store)
    assert str(caught.value).startswith("serialize: ")
    assert store.artifacts() == []
    assert not (store.root / "tiny" / "1.0.0").exists()
    assert staging_leftovers(store) == []
    kept = list((store.root / FAILED).iterdir())
    assert len(kept) == 1 and kept[0].name.startswith("tiny-")
    assert caught.value.hint is not None and caught.value.hint.endswith(f"full log: {kept[0]}")
    log = kept[0].read_text()
    assert "stage serialize sm86 failed: serialize: " in log
    assert "Error Code" in log  # TensorRT's own message went through the project's logger into the log


def test_failure_in_a_shared_stage(write_recipe: Recipe, store: Store, tmp_path: Path) -> None:
    """The ONNX checker rejects the model parse read. It runs while TensorRT parses the first target's network
    (it holds the GIL, TensorRT does not), whose stage waits for its verdict: no engine is built."""
    from tests.stages.test_parse import unsorted_tiny

    model = unsorted_tiny(tmp_path / "broken.onnx")
    path = write_recipe(RECIPE.replace("{models}/tiny.onnx", str(model)))
    with pytest.raises(BuildError, match=r"^parse: the ONNX checker rejects "):
        build_with(path, store)
    assert store.artifacts() == [] and staging_leftovers(store) == []
    log = next((store.root / FAILED).iterdir()).read_text()
    assert "stage network-flag sm86 failed: parse: the ONNX checker rejects" in log
    assert "serialize" not in log


def test_a_wrong_pin_fails_even_when_the_build_could_be_reused(write_recipe: Recipe, store: Store,
                                                               models_dir: Path) -> None:
    build_with(write_recipe(RECIPE), store, targets=("sm89",))
    pinned = "model: {path: {models}/tiny.onnx, sha256: " + "ab" * 32 + "}"
    path = write_recipe(RECIPE.replace("model: {path: {models}/tiny.onnx}", pinned))
    model = models_dir / "tiny.onnx"
    expected = (f"{path}:3:{len('model: {path: ' + str(model) + ', sha256: ') + 1}: model.sha256: "
                f"pinned {'ab' * 32}, but {model} has sha256 {file_sha256(model)}")
    with pytest.raises(RecipeError) as planned:  # `check` and a planned build catch it before building
        build_with(path, store, targets=("sm89",))
    assert planned.value.problems == [expected]
    recipe = recipes.load(path)  # `trt-pipeline build` leaves model checks to the runner: it checks the pin first
    unchecked = plans.make_plan(recipe, backends.load(recipe.backend), gpu.probe(), ("sm89",), check_model=False)
    with pytest.raises(RecipeError) as caught:  # the same located problem, however it is reached
        runner.build(unchecked, store, logging.getLogger("x.runner"))
    assert caught.value.problems == [expected]
    assert len(store.artifacts()) == 1


def test_each_target_has_its_own_build_log(write_recipe: Recipe, store: Store) -> None:
    outcomes = build_with(write_recipe(RECIPE), store)
    for outcome in outcomes:
        log = (outcome.artifact.path / "build.log").read_text()
        assert log.count("Engine generation completed") == 1  # its own serialize, not the other target's
        assert log.count("network-flag: explicit batch is the only mode") == 1
        assert "published" not in log


def test_dry_run_describes_without_creating_anything(write_recipe: Recipe, store: Store) -> None:
    path = write_recipe(RECIPE)
    recipe = recipes.load(path)
    lines = plans.dry_run_lines(plan_for(path), store)
    assert lines[:4] == [f"tiny 1.0.0 from {path} (sha256 {recipe.sha256[:12]})",
                         f"  backend  tensorrt-rtx {tensorrt_rtx.__version__}",
                         f"  model    {recipe.model_path}",
                         "  stages   parse -> graph-cleanup -> network-flag -> memory-pool -> serialize"]
    assert lines[4].split() == ["parse", '{"check":true,"infer_shapes":true}']
    assert lines[7].split() == ["memory-pool", '{"limits":{"workspace":67108864}}']
    assert lines[-2:] == [f"  target   sm86   -> {store.root / 'tiny' / '1.0.0' / SM86}",
                          f"  target   sm89   -> {store.root / 'tiny' / '1.0.0' / SM89}"]
    assert not store.root.exists()


def test_dry_run_after_a_build_names_the_next_build_number(write_recipe: Recipe, store: Store) -> None:
    path = write_recipe(RECIPE)
    (built,) = build_with(path, store, targets=("sm89",))
    assert plans.dry_run_lines(plan_for(path), store, force=True)[-2:] == [  # one build number per run
        f"  target   sm86   -> {store.root / 'tiny' / '1.0.0+2' / SM86}",
        f"  target   sm89   -> {store.root / 'tiny' / '1.0.0+2' / SM89}"]
    # without --force an unchanged source key is reused, as `build` would
    assert plans.dry_run_lines(plan_for(path), store)[-1] == \
        f"  target   sm89   -> reuse {built.artifact.ref} ({built.artifact.path})"


def test_dry_run_as_data(write_recipe: Recipe, store: Store) -> None:
    path = write_recipe(RECIPE)
    (built,) = build_with(path, store, targets=("sm89",))
    plan = plans.dry_run(plan_for(path), store, logging.getLogger("x"))
    assert plan["recipe"] == {"name": "tiny", "version": "1.0.0", "path": str(path),
                              "sha256": recipes.load(path).sha256}
    assert plan["backend"] == f"tensorrt-rtx {tensorrt_rtx.__version__}"
    assert [s["name"] for s in plan["stages"]] == ["parse", "graph-cleanup", "network-flag", "memory-pool", "serialize"]
    assert plan["stages"][3]["settings"] == {"limits": {"workspace": 67108864}}
    assert plan["targets"] == [
        {"name": "sm86", "tag": SM86, "action": "build", "path": str(store.root / "tiny" / "1.0.0+2" / SM86)},
        {"name": "sm89", "tag": SM89, "action": "reuse", "reuse": built.artifact.ref, "path": str(built.artifact.path)}]


def test_a_stage_start_and_tensorrts_phases_are_announced_to_progress(write_recipe: Recipe, store: Store) -> None:
    seen: list[str] = []
    details: list[str] = []

    class Progress:
        def __call__(self, line: str) -> None:
            seen.append(line)

        def started(self, line: str) -> None:
            seen.append(f"started: {line}")

        def detail(self, text: str) -> None:
            details.append(text)

    runner.build(plan_for(write_recipe(RECIPE), ("sm89",)), store, logging.getLogger("x"), Progress())
    assert seen[0] == "started: [1/5] parse ..." and seen[1].startswith("[1/5] parse ")
    at = seen.index("started: [5/5] serialize sm89 ...")  # then, perhaps, the wait for the cleanup check
    assert seen[at + 1].startswith("[5/5] serialize sm89 ")
    # TensorRT's progress monitor: 'PHASE: DONE/TOTAL' while building, '' when the last phase has finished.
    assert any(re.fullmatch(r".+: \d+/\d+", text) for text in details) and details[-1] == ""


def test_a_plain_callable_gets_finished_lines_only(write_recipe: Recipe, store: Store) -> None:
    seen: list[str] = []
    runner.build(plan_for(write_recipe(RECIPE), ("sm89",)), store, logging.getLogger("x"), seen.append)
    assert seen[0].startswith("[1/5] parse ") and seen[-1].startswith("[5/5] serialize sm89 ")


def test_plan_reports_every_problem_before_building(write_recipe: Recipe) -> None:
    path = write_recipe(RECIPE.replace("targets: [sm86, sm89]", "targets: [sm86, sm90]")
                        .replace("{strongly_typed: true}", "{explicit_batch: false}")
                        .replace("- x: {", "- input: {"))
    with pytest.raises(RecipeError) as caught:
        plan_for(path)
    assert [problem.split(": ")[1] for problem in caught.value.problems] == [
        "targets[1]", "stages[2].network-flag.explicit_batch", "stages[4].serialize.profiles[0].input"]


def test_an_unreadable_manifest_does_not_block_builds(tiny_recipe: Path, store: Store,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.runner")
    (first,) = runner.build(plan_for(tiny_recipe), store, log)
    (first.artifact.path / "manifest.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="test.runner"):
        (second,) = runner.build(plan_for(tiny_recipe), store, log)
    assert not second.reused and second.artifact.build == 2
    assert f"ignoring {first.artifact.path} for reuse" in caplog.text


def test_new_external_weights_are_rebuilt_not_reused(write_recipe: Recipe, store: Store, tmp_path: Path) -> None:
    """The .onnx file alone does not identify a model whose weights are in external data."""
    import onnx

    from models.make_models import MODELS

    model = tmp_path / "ext" / "tiny.onnx"
    model.parent.mkdir()

    onnx.save(MODELS["tiny"](), str(model), save_as_external_data=True, location="tiny.onnx.data", size_threshold=0)
    recipe = write_recipe(RECIPE.replace("{models}/tiny.onnx", str(model)).replace("  - graph-cleanup: {}\n", ""))
    (first,) = build_with(recipe, store, targets=("sm89",))
    weights = model.with_name("tiny.onnx.data")
    data = bytearray(weights.read_bytes())
    data[:4] = b"\x00\x00\x80\x3f"  # the first weight becomes 1.0: new weights, the same .onnx file
    weights.write_bytes(bytes(data))
    (second,) = build_with(recipe, store, targets=("sm89",))
    assert not second.reused and second.artifact.build == 2
    old, new = first.artifact.manifest(), second.artifact.manifest()
    assert old.model.sha256 == new.model.sha256
    assert old.model.cleaned_sha256 != new.model.cleaned_sha256
    assert old.build.key != new.build.key


# ---------------------------------------------------------------- one build number per run; parallel runs


def test_a_build_number_belongs_to_one_run(write_recipe: Recipe, store: Store) -> None:
    """Every target of a run shares its number, and another run never adds engines to it."""
    path = write_recipe(RECIPE)
    assert [o.artifact.ref for o in build_with(path, store, targets=("sm89",))] == ["tiny@1.0.0+1"]
    (sm86,) = build_with(path, store, targets=("sm86",))
    assert (sm86.artifact.ref, sm86.artifact.path) == ("tiny@1.0.0+2", store.root / "tiny" / "1.0.0+2" / SM86)
    assert {o.artifact.build for o in build_with(path, store, force=True)} == {3}


def test_a_build_published_meanwhile_is_reused_not_duplicated(write_recipe: Recipe, store: Store,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs of one recipe: the second saw nothing to reuse when it started, but the first published the
    same build key before it; under the lock it finds that artifact and publishes nothing."""
    path = write_recipe(RECIPE)
    (first,) = build_with(path, store, targets=("sm89",))
    inside: list[bool] = []
    publish_unless, reusable = store.publish_unless, cache.reusable

    def publishing(*args: object, **kwargs: object) -> object:
        inside.append(True)
        try:
            return publish_unless(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            inside.pop()

    monkeypatch.setattr(store, "publish_unless", publishing)
    not_yet = lambda *args: reusable(*args) if inside else None  # noqa: E731 - as if not yet there
    monkeypatch.setattr(runner, "reusable", not_yet)  # the build-key check
    monkeypatch.setattr(cache, "reusable", not_yet)  # the source-key check
    lines: list[str] = []
    (second,) = build_with(path, store, targets=("sm89",), lines=lines)
    assert (second.reused, second.artifact) == (True, first.artifact)
    assert f"[skip] sm89   built meanwhile by another run (build key): reusing tiny@1.0.0+1 {SM89}" in lines
    assert [a.ref for a in store.artifacts()] == ["tiny@1.0.0+1"]
    assert staging_leftovers(store) == []


def _build_in_a_process(recipe: str, root: str, start: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    build_with(Path(recipe), Store(Path(root)), targets=("sm89",))


def test_parallel_builds_of_one_recipe_publish_one_artifact(write_recipe: Recipe, store: Store) -> None:
    from tests._lifecycle import race

    race(_build_in_a_process, [(str(write_recipe(RECIPE)), str(store.root))] * 2, timeout=120)
    assert [a.ref for a in store.artifacts()] == ["tiny@1.0.0+1"]
    assert staging_leftovers(store) == []


# ---------------------------------------------------------------- remembered plans (an unchanged rebuild plans nothing)

NO_GPU = gpu.Probe(False, (), "no CUDA driver (test)")


def planned_and_remembered(path: Path, store: Store, names: tuple[str, ...] = (),
                           probe: gpu.Probe = NO_GPU) -> plans.Plan:
    """Plan afresh, as `build` does the first time, and remember it."""
    recipe = recipes.load(path)
    fresh = plans.make_plan(recipe, backends.load(recipe.backend), probe, names)
    plans.remember_plan(fresh, store, probe, names)
    return fresh


def edit_plan_memo(store: Store, change: Callable[[dict], object]) -> Store:
    """Edit every remembered plan; returns the store as a later run sees it (the memo is read once per Store)."""
    memo = store.root / MEMO / f"{plans.PLANS}.json"
    entries = json.loads(memo.read_text())
    memo.write_text(json.dumps({key: change(entry) for key, entry in entries.items()}))
    return Store(store.root)


def test_a_remembered_plan_is_the_plan_made_afresh(write_recipe: Recipe, store: Store) -> None:
    path = write_recipe(RECIPE)
    assert plans.remembered_plan(path, store, NO_GPU) is None  # nothing remembered yet
    fresh = planned_and_remembered(path, store)
    again = plans.remembered_plan(path, store, NO_GPU)
    assert again is not None
    assert again.recipe == fresh.recipe
    assert (again.recipe.sha256, again.targets, again.stages) == (fresh.recipe.sha256, fresh.targets, fresh.stages)
    assert [t.tag for t in again.targets] == [SM86, SM89]
    assert (again.backend.name, again.backend.version) == (fresh.backend.name, fresh.backend.version)
    assert again.model_checked is False  # `build` checks the model when there is something to build
    assert again.backend.trt is tensorrt_rtx


def test_a_remembered_plan_reuses_and_builds_like_a_fresh_one(tiny_recipe: Path, store: Store) -> None:
    log = logging.getLogger("x.runner")
    (first,) = runner.build(planned_and_remembered(tiny_recipe, store), store, log)
    remembered = plans.remembered_plan(tiny_recipe, store, NO_GPU)
    assert remembered is not None
    (again,) = runner.build(remembered, store, log)  # the same source key with the deferred backend
    assert (again.reused, again.artifact) == (True, first.artifact)
    (forced,) = runner.build(remembered, store, log, force=True)  # TensorRT-RTX imported when it builds
    assert (forced.reused, forced.artifact.ref, forced.artifact.tag) == (False, "tiny@1.0.0+2", SM89)
    assert forced.artifact.manifest().backend == first.artifact.manifest().backend


def test_a_changed_recipe_is_planned_afresh(write_recipe: Recipe, store: Store) -> None:
    path = write_recipe(RECIPE)
    planned_and_remembered(path, store)
    path.write_text(path.read_text() + "# a comment\n")
    assert plans.remembered_plan(path, store, NO_GPU) is None  # other bytes, even with the same meaning
    write_recipe(RECIPE)  # the very bytes again
    assert plans.remembered_plan(path, store, NO_GPU) is not None


def test_other_targets_or_another_machine_or_place_are_planned_afresh(write_recipe: Recipe, store: Store,
                                                                      tmp_path: Path) -> None:
    path = write_recipe(RECIPE)
    planned_and_remembered(path, store)
    assert plans.remembered_plan(path, store, NO_GPU, ("sm89",)) is None
    planned_and_remembered(path, store, ("sm89",))
    only = plans.remembered_plan(path, store, NO_GPU, ("sm89",))
    assert only is not None and [t.tag for t in only.targets] == [SM89]
    every = plans.remembered_plan(path, store, NO_GPU)
    assert every is not None and [t.tag for t in every.targets] == [SM86, SM89]
    with_gpu = gpu.Probe(True, (gpu.Gpu("NVIDIA GeForce RTX 4090", "8.9"),), None)
    assert plans.remembered_plan(path, store, with_gpu) is None
    (tmp_path / "elsewhere").mkdir()
    copy = tmp_path / "elsewhere" / path.name
    copy.write_bytes(path.read_bytes())  # model paths are relative to the recipe: its place counts
    assert plans.remembered_plan(copy, store, NO_GPU) is None


def test_another_installed_backend_version_is_planned_afresh(write_recipe: Recipe, store: Store) -> None:
    path = write_recipe(RECIPE)
    planned_and_remembered(path, store)
    installed = json.loads((store.root / MEMO / f"{plans.PLANS}.json").read_text()).popitem()[1]["installed"]
    assert installed == {"tensorrt": [None, None], "tensorrt-rtx": [tensorrt_rtx.__version__, tensorrt_rtx.__file__]}
    rtx = installed["tensorrt-rtx"]
    for changed, why in [({"tensorrt-rtx": ["1.0.0.1", rtx[1]]}, "planned with another TensorRT-RTX"),
                         ({"tensorrt-rtx": [rtx[0], "/elsewhere/tensorrt_rtx/__init__.py"]}, "another on PYTHONPATH"),
                         ({"tensorrt": ["10.9.0.34", "/x/tensorrt/__init__.py"]}, "full TensorRT was there: 'auto'")]:
        store = edit_plan_memo(store, lambda entry: {**entry, "installed": {**installed, **changed}})  # noqa: B023
        assert plans.remembered_plan(path, store, NO_GPU) is None, why
    store = edit_plan_memo(store, lambda entry: {**entry, "installed": installed})
    assert plans.remembered_plan(path, store, NO_GPU) is not None


def test_a_backend_whose_metadata_disagrees_with_its_module_is_not_remembered(write_recipe: Recipe,
                                                                             store: Store) -> None:
    """A remembered plan knows the backend version from package metadata only: it must be the module's."""
    path = write_recipe(RECIPE)
    recipe = recipes.load(path)
    real = backends.load(recipe.backend)
    odd = backends.Backend(real.name, types.SimpleNamespace(**{**vars(real.trt), "__version__": "1.7.1.999"}))
    plans.remember_plan(plans.make_plan(recipe, odd, NO_GPU), store, NO_GPU)
    assert store.memo(plans.PLANS) == {} and plans.remembered_plan(path, store, NO_GPU) is None
    plans.remember_plan(plans.make_plan(recipe, real, NO_GPU), store, NO_GPU)
    assert plans.remembered_plan(path, Store(store.root), NO_GPU) is not None


@pytest.mark.parametrize("damage", [lambda entry: "garbage", lambda entry: {},
                                    lambda entry: {k: v for k, v in entry.items() if k != "targets"},
                                    lambda entry: {**entry, "targets": [["sm89"]]}],
                         ids=["not-an-object", "empty", "no-targets", "short-target"])
def test_a_damaged_plan_memo_is_planned_afresh(write_recipe: Recipe, store: Store,
                                               damage: Callable[[dict], object]) -> None:
    path = write_recipe(RECIPE)
    planned_and_remembered(path, store)
    assert plans.remembered_plan(path, edit_plan_memo(store, damage), NO_GPU) is None
    (store.root / MEMO / f"{plans.PLANS}.json").write_text("{not json")
    assert plans.remembered_plan(path, Store(store.root), NO_GPU) is None


@pytest.mark.parametrize("serialize", ["      plugins: [libone.so]\n", "      timing_cache: {path: t.cache}\n"],
                         ids=["plugins", "timing_cache"])
def test_a_plan_that_checked_other_files_is_never_taken_from_the_memo(write_recipe: Recipe, store: Store,
                                                                     rtx_backend: backends.Backend,
                                                                     serialize: str) -> None:
    """Plugins and timing caches are files the plan checks besides the recipe: they may have gone since."""
    targets = planned_and_remembered(write_recipe(RECIPE), store).targets
    path = write_recipe(RECIPE.replace("  - serialize:\n", "  - serialize:\n" + serialize), "with-files.yaml")
    recipe = recipes.load(path)
    plans.remember_plan(plans.Plan(recipe, rtx_backend, targets, tuple(recipe.stages), True), store, NO_GPU)
    assert len(store.memo(plans.PLANS)) == 2  # remembered, as on a machine where it planned without a problem
    assert plans.remembered_plan(path, store, NO_GPU) is None
    assert plans.remembered_plan(write_recipe(RECIPE), store, NO_GPU) is not None


CHAIN = """\
name: chain
version: 1.0.0
model: {{path: {model}}}
backend: tensorrt-rtx
targets: [sm89]
stages:
  - parse: {{check: true}}
  - graph-cleanup: {{}}
  - network-flag: {{strongly_typed: true}}
  - memory-pool: {{workspace: 64MiB}}
  - serialize:
      profiles:
        - x: {{min: [1, 512], opt: [2, 512], max: [4, 512]}}
"""


def test_a_model_with_weights_on_disk_builds_end_to_end(write_recipe: Recipe, store: Store, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The big-model path at a small size: models/make_models.py's matmul chain (4 x [512]^2, 4 MiB of weights in
    external data) with a protobuf limit of 1 MiB, so parse and graph-cleanup leave the weights on disk as they
    do above 2 GiB, and streaming from 1 MiB of weights (as from 512 MiB). The cleaned model's weights are
    published beside the engine, byte for byte the originals (copied while they were hashed: cache.WeightCopies);
    TensorRT parses them from a memory map and streams the engine to disk, hashed as written: the manifest's sha256
    and size are the published file's. An unused initializer, which the cleanup pass drops, makes the cleanup check
    run (ONNX Runtime on the weights on disk)."""
    import onnx

    from models.make_models import write_matmul_chain
    from pipeline.build import cache
    from pipeline.stages import graph_cleanup, parse, serialize

    model = tmp_path / "chain" / "chain.onnx"
    model.parent.mkdir()
    assert write_matmul_chain(model, 512, 4) == 4 << 20
    proto = onnx.load(str(model), load_external_data=False)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(4, np.float32), "unused"))
    onnx.save(proto, str(model))  # the weights stay where they are, in chain.onnx.data
    for module in (parse, graph_cleanup, cache):
        monkeypatch.setattr(module, "PROTO_LIMIT", 1 << 20)
    monkeypatch.setattr(serialize, "STREAM_FROM", 1 << 20)
    [outcome] = build_with(write_recipe(CHAIN.format(model=model)), store)
    folder = outcome.artifact.path
    assert sorted(p.name for p in folder.iterdir()) == [
        "build.log", "engine.plan", "manifest.json", "model.cleaned.onnx", "model.cleaned.onnx.data"]
    assert (folder / "model.cleaned.onnx.data").read_bytes() == model.with_name("chain.onnx.data").read_bytes()
    assert re.search(r"serialize: the engine was streamed to disk in \d+ piece\(s\)", (folder / "build.log").read_text())
    written = json.loads((folder / "manifest.json").read_text())
    assert written["cleanup_check"]["status"] == "passed"  # ONNX Runtime on the cleaned model and its weights
    engine = written["engine"]
    assert engine == {"file": "engine.plan", "sha256": file_sha256(folder / "engine.plan"),
                      "bytes": (folder / "engine.plan").stat().st_size}
    assert engine["bytes"] > 4 << 20  # the weights are in the engine
    assert staging_leftovers(store) == []
