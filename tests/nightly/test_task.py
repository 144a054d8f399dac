"""What a night records about one pair: max errors read defensively from either form of a validation block."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline import recipe as recipes
from pipeline.manifest import Manifest, ValidationRecord
from pipeline.nightly.pool import workers_for
from pipeline.nightly.task import Task, file_logger, output_errors, validation_record
from tests.nightly.test_run import NO_GPU, TINY_PROFILE, recipe_text
from tests.test_manifest import sample


@pytest.fixture
def recipes_for_pairs(tmp_path: Path, models_dir: Path) -> Path:
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "tiny.yaml").write_text(recipe_text("tiny", models_dir / "tiny.onnx", TINY_PROFILE))
    return folder


def row(shape: str, **outputs: float | None) -> dict:
    """One shape set's row as pipeline.validate.artifact records it."""
    return {"shape": shape, "profile": 0, "passed": True,
            "outputs": {name: {"max_abs": e, "max_rel": None, "atol": 1e-3, "rtol": 1e-3, "passed": e is not None}
                        for name, e in outputs.items()}}


def test_the_worst_shape_wins_per_output() -> None:
    block = {"status": "passed", "results": [row("min", y=1e-5, z=2e-4), row("opt", y=3e-5, z=None),
                                             row("max", y=2e-5, z=1e-4)]}
    assert output_errors(block["results"]) == {"y": 3e-5, "z": 2e-4}


def test_no_result_no_error() -> None:
    assert output_errors(ValidationRecord("not-run", "no validation has run").results) == {}
    assert output_errors([row("opt", y=None)]) == {}  # NaN or infinite: no number


def test_tolerances_come_from_the_recipe(write_recipe) -> None:
    path: Path = write_recipe("name: t\nversion: 1.0.0\nmodel: {path: m.onnx}\ntargets: [sm89]\n"
                              "stages: [{parse: {}}, {network-flag: {}}, {memory-pool: {}}, {serialize: {}}]\n"
                              "validate: {atol: 1.0e-3, outputs: {z: {atol: 1.0e-2}}}\n")
    recipe = recipes.load(path)
    record = validation_record(ValidationRecord("passed", results=(row("opt", y=1e-4, z=1e-3),)), recipe)
    assert record == {"status": "passed", "reason": None, "max_errors": {"y": 1e-4, "z": 1e-3},
                      "tolerances": {"y": 1e-3, "z": 1e-2}}
    assert validation_record(ValidationRecord(), None) == {"status": "not-run", "reason": None, "max_errors": {},
                                                           "tolerances": {}}


def test_a_reduced_precision_engine_records_its_accuracy_delta() -> None:
    """The precision check's max abs error against the FP32 original, per output, with its max_abs limit."""
    check = {"status": "passed", "outputs": {"output": {"max_abs": 0.12, "cosine": 0.9997, "limits": {"max_abs": 0.5}},
                                             "y": {"max_abs": 1e-3, "limits": {"min_cosine": 0.99}}}}
    manifest = Manifest.from_dict({**sample(), "precision": {"mode": "int8", "check": check}}, Path("manifest.json"))
    record = validation_record(manifest.validation, None, manifest.precision)
    assert record["accuracy_delta"] == {"output": 0.12, "y": 1e-3}
    assert record["accuracy_limits"] == {"output": 0.5, "y": None}


def test_parallel_builds_are_bounded_by_memory() -> None:
    tasks = [Task("r.yaml", "r", (t,), "/s", False, NO_GPU, "/l", estimate_bytes=1 << 30)
             for t in ("sm86", "sm89", "sm120")]
    assert workers_for(tasks, jobs=8, memory=10 << 30) == 3  # no more workers than pairs
    assert workers_for(tasks, jobs=2, memory=10 << 30) == 2
    assert workers_for(tasks, jobs=8, memory=(2 << 30) + 5) == 2  # two builds fit in memory
    assert workers_for(tasks, jobs=8, memory=1 << 20) == 1  # always at least one


def test_a_failing_target_is_pinned_on_itself_and_its_siblings_publish_once(
        recipes_for_pairs: Path, tmp_path: Path, monkeypatch) -> None:
    from pipeline.errors import BuildError
    from pipeline.nightly.task import build_task
    from pipeline.stages import REGISTRY
    from pipeline.store import Store

    real = REGISTRY["serialize"].run

    def serialize(ctx) -> None:  # sm89 fails after sm86 has been published by the joint attempt
        if ctx.target.name == "sm89":
            raise BuildError("serialize: injected failure for sm89")
        real(ctx)

    monkeypatch.setitem(REGISTRY, "serialize", dataclasses.replace(REGISTRY["serialize"], run=serialize))
    (tmp_path / "logs").mkdir()
    task = Task(str(recipes_for_pairs / "tiny.yaml"), "tiny", ("sm86", "sm89"), str(tmp_path / "store"), True,
                NO_GPU, str(tmp_path / "logs"))
    records = {r["target"]: r for r in build_task(task)}
    assert records["sm86"]["status"] == "built" and records["sm86"]["artifact"] == "tiny@1.0.0+1"
    assert (records["sm89"]["status"], records["sm89"]["error"]) == ("failed", "serialize: injected failure for sm89")
    assert [(a.ref, a.tag) for a in Store(tmp_path / "store").artifacts()] == [("tiny@1.0.0+1", "sm86.rtx-1.7.1")]
    assert records["sm86"]["log"] == records["sm89"]["log"] == str(tmp_path / "logs" / "tiny.sm86+sm89.log")
    assert "building sm86, sm89 together failed" in Path(records["sm89"]["log"]).read_text()


def test_recipes_are_split_across_idle_workers() -> None:
    from pipeline.nightly.pool import spread

    def task(name: str, *targets: str) -> Task:
        return Task(f"{name}.yaml", name, targets, "/s", False, NO_GPU, "/l")

    tasks = [task("a", "sm86", "sm89", "sm120"), task("b", "sm89")]
    assert spread(tasks, 1) == tasks
    assert [t.targets for t in spread(tasks, 3)] == [("sm86", "sm89"), ("sm120",), ("sm89",)]
    assert [t.targets for t in spread(tasks, 8)] == [("sm86",), ("sm89",), ("sm120",), ("sm89",)]


def test_a_worker_log_on_a_full_disk_prints_no_logging_error_report(capfd: pytest.CaptureFixture) -> None:
    """/dev/full fails every write with ENOSPC: the worker's log keeps the error instead of printing logging's
    '--- Logging error ---' traceback for every record (thousands in a night on a full disk)."""
    log = file_logger("test-full-disk", Path("/dev/full"))
    for _ in range(3):
        log.info("a record nobody can write")
    handler = log.handlers[0]
    assert isinstance(handler.error, OSError)
    assert "Logging error" not in capfd.readouterr().err
    handler.close()
