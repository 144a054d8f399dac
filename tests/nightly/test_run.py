"""Real nightlies on CPU: tiny recipes, two TensorRT-RTX targets, worker processes, a temp store."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.commands.nightly import Display
from pipeline.files import replace_json
from pipeline.nightly import run as nightly
from pipeline.nightly.regression import load_config
from pipeline.nightly.task import Task, build_task
from pipeline.nightly.text import markdown_text
from pipeline.store import Store
from pipeline.trt.gpu import Probe
from tests.nightly.test_report import assert_self_contained

NO_GPU = Probe(False, (), "no CUDA driver (test)")
TARGETS = "[sm86, sm89]"
TINY_PROFILE = "        - x: {min: [1, 4], opt: [8, 4], max: [64, 4]}\n"
SMALL_TINY_PROFILE = "        - x: {min: [1, 4], opt: [4, 4], max: [8, 4]}\n"
TWO_INPUT_PROFILE = ("        - image: {min: [1, 3, 16, 16], opt: [2, 3, 32, 32], max: [4, 3, 64, 64]}\n"
                     "          scale: {min: [1, 1], opt: [2, 1], max: [4, 1]}\n")


def recipe_text(name: str, model: Path, profiles: str, cleanup: str = "", extra: str = "") -> str:
    return (f"name: {name}\nversion: 1.0.0\nmodel: {{path: {model}}}\nbackend: tensorrt-rtx\ntargets: {TARGETS}\n"
            f"stages:\n  - parse: {{}}\n{cleanup}  - network-flag: {{strongly_typed: true}}\n"
            f"  - memory-pool: {{workspace: 64MiB}}\n  - serialize:\n      profiles:\n{profiles}{extra}")


@pytest.fixture
def recipes(tmp_path: Path, models_dir: Path) -> Path:
    """tiny and two-input (good), broken.yaml (schema errors), no-cleanup (a build failure in the worker)."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "tiny.yaml").write_text(recipe_text("tiny", models_dir / "tiny.onnx", TINY_PROFILE))
    (folder / "two_input.yaml").write_text(recipe_text("two-input", models_dir / "two_input.onnx", TWO_INPUT_PROFILE,
                                                       extra="validate: {atol: 1.0e-3, rtol: 1.0e-3}\n"))
    (folder / "broken.yaml").write_text(f"name: broken\nversion: 1.0.0\nmodel: {{path: {models_dir}/tiny.onnx}}\n"
                                        f"targets: {TARGETS}\nstages:\n  - parse: {{chek: true}}\n")
    (folder / "no_cleanup.yaml").write_text(recipe_text(
        "no-cleanup", models_dir / "cleanup_needed.onnx", "        - x: {min: [1, 16], opt: [8, 16], max: [64, 16]}\n"))
    return folder


def run(recipes: Path, store: Store, **options) -> dict:
    return nightly.run(recipes, store, probe=NO_GPU, **options)


def by_pair(report: dict) -> dict[tuple[str, str], dict]:
    return {(p["recipe"], p["target"]): p for p in report["pairs"]}


def test_failures_do_not_stop_the_night_and_unchanged_pairs_are_skipped_the_next(recipes: Path, store: Store) -> None:
    first = run(recipes, store)
    pairs = by_pair(first)
    assert len(pairs) == 8
    for name in ("tiny", "two-input"):
        for target in ("sm86", "sm89"):
            assert pairs[name, target]["status"] == "built"
            assert Path(pairs[name, target]["path"], "engine.plan").is_file()
    assert pairs["broken", "sm86"]["status"] == pairs["broken", "sm89"]["status"] == "failed"
    assert "broken.yaml:6:13: stages[0].parse.chek: unknown key" in pairs["broken", "sm86"]["error"]
    failed = pairs["no-cleanup", "sm89"]
    assert failed["status"] == "failed" and failed["error"].startswith("network-flag:")
    assert "Reshape" in Path(failed["log"]).read_text()  # the worker's log has TensorRT's own messages
    assert pairs["two-input", "sm89"]["validation"]["status"] == "skipped"  # validated, but no GPU here
    assert first["summary"] == {"pairs": 8, "built": 4, "skipped": 0, "failed": 4, "validation_failed": 0,
                                "regressions": 0, "ok": False}

    second = run(recipes, store)
    pairs = by_pair(second)
    assert second["previous"] == first["run"]
    assert {k: p["reason"] for k, p in pairs.items() if p["status"] == "skipped"} == {
        (name, target): "source key unchanged" for name in ("tiny", "two-input") for target in ("sm86", "sm89")}
    assert [p["artifact"] for p in second["pairs"] if p["status"] == "skipped"] == \
           [p["artifact"] for p in first["pairs"] if p["status"] == "built"]
    assert second["regressions"] == []  # the same four failures are not new
    assert second["summary"]["failed"] == 4 and not second["summary"]["ok"]
    recorded = json.loads((store.root / "_nightly" / second["run"] / "report.json").read_text())
    assert recorded["pairs"] == second["pairs"]
    assert_self_contained((store.root / "_nightly" / second["run"] / "report.html").read_text())


def test_a_recipe_change_that_grows_the_engine_is_a_regression_with_before_and_after(
        recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for extra in ("broken.yaml", "no_cleanup.yaml", "two_input.yaml"):
        (recipes / extra).unlink()
    argv = ["--store", str(tmp_path / "store"), "nightly", str(recipes)]
    assert main(argv) == 0
    tiny = recipes / "tiny.yaml"
    tiny.write_text(tiny.read_text() + SMALL_TINY_PROFILE)  # a second optimization profile: about twice the engine
    summary = tmp_path / "step-summary.md"
    assert main(argv, environ={"GITHUB_STEP_SUMMARY": str(summary)}) == 1
    out = capsys.readouterr().out
    report = nightly.nights(Store(tmp_path / "store"))[-1]
    growth = [r for r in report["regressions"] if r["metric"] == "engine_bytes"]
    assert [(r["recipe"], r["target"]) for r in growth] == [("tiny", "sm86"), ("tiny", "sm89")]
    for r in growth:
        assert 1.8 < r["after"] / r["before"] < 2.2
        assert f"regression: tiny {r['target']} engine_bytes: " in out
        assert f"({r['before']} B) -> " in out and f"({r['after']} B)" in out
    assert "| tiny | sm89 | engine_bytes |" in summary.read_text()
    assert by_pair(report)["tiny", "sm89"]["artifact"] == "tiny@1.0.0+2"


def test_a_rebuilt_pair_says_what_changed_in_the_json_the_progress_and_both_reports(
        recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for extra in ("broken.yaml", "no_cleanup.yaml", "two_input.yaml"):
        (recipes / extra).unlink()
    argv = ["--store", str(tmp_path / "store"), "nightly", str(recipes)]
    assert main(argv) == 0
    first = nightly.nights(Store(tmp_path / "store"))[-1]
    assert by_pair(first)["tiny", "sm89"]["reason"] == "first build for sm89"
    tiny = recipes / "tiny.yaml"
    tiny.write_text(tiny.read_text().replace("workspace: 64MiB", "workspace: 128MiB"))
    capsys.readouterr()
    main(argv)
    err = capsys.readouterr().err
    report = nightly.nights(Store(tmp_path / "store"))[-1]
    pair = by_pair(report)["tiny", "sm89"]
    reason = f"since tiny@1.0.0+1 [{pair['tag']}]: config.memory_pools.workspace: 67108864 -> 134217728"
    assert (pair["status"], pair["reason"]) == ("built", reason)
    assert pair["changes"] == [{"path": "config.memory_pools.workspace", "old": 64 << 20, "new": 128 << 20}]
    assert f"built ({reason})" in err  # the progress line
    night = tmp_path / "store" / "_nightly" / report["run"]
    assert json.loads((night / "report.json").read_text())["pairs"] == report["pairs"]
    assert f"| built ({markdown_text(reason)}) |" in (night / "summary.md").read_text()
    assert f"built ({reason.replace('->', '-&gt;')})" in (night / "report.html").read_text()


def test_a_zero_build_time_threshold_flags_a_slower_rebuild(recipes: Path, store: Store) -> None:
    for extra in ("broken.yaml", "no_cleanup.yaml", "two_input.yaml"):
        (recipes / extra).unlink()
    (recipes / "nightly.yaml").write_text("thresholds: {build_time_pct: 0, build_time_min_s: 0}\n")
    strict = load_config(recipes / "nightly.yaml")
    first = run(recipes, store, targets=("sm89",), config=strict)
    again = run(recipes, store, targets=("sm89",), config=strict)
    assert again["pairs"][0]["status"] == "skipped" and again["regressions"] == []  # same artifact, same time
    # the night on record was faster than any real build: a forced rebuild now is slower by some amount
    recorded = store.root / "_nightly" / again["run"] / "report.json"
    replace_json(recorded, {**again, "pairs": [{**again["pairs"][0], "build_s": 0.001}]})
    report = run(recipes, store, targets=("sm89",), force=True, config=strict)
    (regression,) = report["regressions"]
    assert (regression["recipe"], regression["target"], regression["metric"]) == ("tiny", "sm89", "build_s")
    assert (regression["before"], regression["after"]) == (0.001, report["pairs"][0]["build_s"])
    assert regression["detail"].endswith("threshold 0% and 0s")
    assert first["summary"]["ok"] and not report["summary"]["ok"]


def test_serial_and_parallel_nights_publish_the_same_artifacts(recipes: Path, tmp_path: Path) -> None:
    """--jobs 1 builds each recipe's targets in one process (shared stages once), --jobs 2 one recipe per
    process, --jobs 4 one pair per process. All give the same pairs, statuses, artifact names, tags, build keys
    and engine sizes, and the same engine bytes where TensorRT-RTX itself is reproducible. Measured: tiny's
    engines are byte-identical build after build; two-input's (several dynamic dimensions) differ in ~18 bytes
    of table order from one serial build to the next (they follow heap addresses: with ASLR off most builds
    agree), so no scheduling can make those identical."""
    (recipes / "no_cleanup.yaml").unlink()
    results = {}
    for jobs in (1, 2, 4):
        report = run(recipes, Store(tmp_path / f"store{jobs}"), jobs=jobs)
        assert report["workers"] == jobs
        results[jobs] = {(p["recipe"], p["target"]): (p["status"], p.get("artifact"), p.get("tag"), p.get("build_key"),
                                                      p.get("engine_bytes")) for p in report["pairs"]}
        results[jobs, "sha"] = [p["engine_sha256"] for p in report["pairs"] if p["recipe"] == "tiny"]
    assert results[1] == results[2] == results[4]
    assert sum(r[0] == "built" for r in results[1].values()) == 4
    assert results[1, "sha"] == results[2, "sha"] == results[4, "sha"] and len(results[1, "sha"]) == 2


def crash_on_tiny_sm86(task: Task) -> list[dict]:
    """A build function whose process dies for one pair, as TensorRT can (module level: workers import it)."""
    if task.recipe == "tiny" and "sm86" in task.targets:
        os._exit(9)
    return build_task(task)


def test_a_crashing_build_process_fails_only_its_pair(recipes: Path, store: Store) -> None:
    (recipes / "broken.yaml").unlink()
    (recipes / "no_cleanup.yaml").unlink()
    report = run(recipes, store, jobs=2, build=crash_on_tiny_sm86)
    pairs = by_pair(report)
    assert pairs["tiny", "sm86"]["status"] == "failed"
    assert pairs["tiny", "sm86"]["error"].startswith("the build process died")
    for key in [("tiny", "sm89"), ("two-input", "sm86"), ("two-input", "sm89")]:
        # a pair in flight beside the crash is retried alone; if its first attempt had published, it is reused
        assert pairs[key]["status"] in ("built", "skipped") and Path(pairs[key]["path"], "engine.plan").is_file()
    assert [a.tag for a in store.artifacts("tiny")] == ["sm89.rtx-1.7.1"]  # nothing half-written for sm86


def slow_build(task: Task) -> list[dict]:
    """A build that stages a directory, says it started (and how it handles SIGINT), and waits to be stopped."""
    import signal
    import time

    with Store(Path(task.store)).staging(task.recipe):
        ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        Path(task.store, f"started-{task.recipe}").write_text("SIGINT ignored" if ignored else "SIGINT handled")
        time.sleep(30)
    return []


INTERRUPTED_NIGHT = """\
import sys
from pathlib import Path
from pipeline.nightly import run as nightly
from pipeline.store import Store
from tests.nightly.test_run import NO_GPU, slow_build
try:
    nightly.run(Path(sys.argv[1]), Store(Path(sys.argv[2])), jobs=2, probe=NO_GPU, build=slow_build)
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
"""


def test_ctrl_c_stops_the_workers_quietly_and_leaves_no_staging_and_no_night(recipes: Path, tmp_path: Path) -> None:
    """Ctrl-C on a terminal reaches the whole process group: workers ignore it, the parent stops them (SIGTERM
    unwinds their builds), and a night without a report is not recorded."""
    import signal
    import subprocess
    import sys
    import time

    (recipes / "broken.yaml").unlink()
    (recipes / "no_cleanup.yaml").unlink()
    store = tmp_path / "store"
    night = subprocess.Popen([sys.executable, "-c", INTERRUPTED_NIGHT, str(recipes), str(store)],
                             cwd=Path(__file__).parents[2], stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    deadline = time.monotonic() + 60
    while len(list(store.glob("started-*"))) < 2 and time.monotonic() < deadline and night.poll() is None:
        time.sleep(0.05)
    assert len(list(store.glob("started-*"))) == 2, night.communicate()[1]
    assert {p.read_text() for p in store.glob("started-*")} == {"SIGINT ignored"}  # the parent decides
    os.killpg(night.pid, signal.SIGINT)
    try:
        _, err = night.communicate(timeout=20)  # the workers were stopped, not waited for
    finally:
        if night.poll() is None:
            os.killpg(night.pid, signal.SIGKILL)
    assert night.returncode == 130
    assert err.splitlines() == ["interrupted"]  # no worker tracebacks
    assert list((store / ".staging").iterdir()) == []
    assert list((store / "_nightly").iterdir()) == []


def test_targets_override_a_target_the_backend_lacks_and_a_duplicate_name(recipes: Path, store: Store) -> None:
    (recipes / "broken.yaml").unlink()
    (recipes / "no_cleanup.yaml").unlink()
    (recipes / "tiny_copy.yaml").write_text((recipes / "tiny.yaml").read_text())
    report = run(recipes, store, targets=("sm89", "sm99"))
    pairs = by_pair(report)
    assert list(pairs) == [("tiny", "sm89"), ("tiny", "sm99"), ("tiny_copy.yaml", "sm89"), ("tiny_copy.yaml", "sm99"),
                           ("two-input", "sm89"), ("two-input", "sm99")]
    assert pairs["tiny", "sm89"]["status"] == "built"
    assert pairs["tiny", "sm99"]["status"] == "failed"
    assert "--target sm99: tensorrt-rtx" in pairs["tiny", "sm99"]["error"]
    assert pairs["tiny_copy.yaml", "sm89"]["error"] == (
        f"{recipes / 'tiny_copy.yaml'}:1:7: name: recipe name 'tiny' is also used by {recipes / 'tiny.yaml'}; "
        "names must be unique within a nightly")


def test_cli_errors_are_one_line(recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--store", str(tmp_path / "s"), "nightly", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: no recipes directory {tmp_path / 'missing'}", "hint: pass one: trt-pipeline nightly RECIPES_DIR"]
    assert main(["--store", str(tmp_path / "s"), "nightly", str(recipes / "tiny.yaml")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: {recipes / 'tiny.yaml'} is a file; nightly takes a directory of recipes",
        f"hint: pass its directory: trt-pipeline nightly {recipes}, or build this recipe alone: "
        f"trt-pipeline build {recipes / 'tiny.yaml'}"]
    assert main(["--store", str(tmp_path / "s"), "nightly", "--targets", "sm89", str(recipes)]) == 1
    assert capsys.readouterr().err.splitlines()[0] == \
        f"error: --targets: expected targets like sm89 or local, got '{recipes}'"
    (recipes / "nightly.yaml").write_text("thresholds:\n  engine_bytes: 5\n")
    assert main(["--store", str(tmp_path / "s"), "nightly", str(recipes)]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"{recipes / 'nightly.yaml'}:2:3: thresholds.engine_bytes: unknown key (did you mean 'engine_bytes_pct'?); "
        "expected one of build_time_min_s, build_time_pct, engine_bytes_pct, max_error_budget")


def test_a_hostile_recipe_is_one_failed_pair_not_a_crashed_night(recipes: Path, store: Store, tmp_path: Path) -> None:
    """An alias bomb and deep nesting among good recipes: each is one failed record, read with the same guarded
    parser when the night looks for its name and targets (a plain yaml.safe_load raised RecursionError there)."""
    (recipes / "laughs.yaml").write_text("name: laughs\ntargets: [sm89]\n" + "a: &a [x, x]\nb: [*a, *a]\n")
    (recipes / "deep.yaml").write_text("[" * 10_000 + "]" * 10_000 + "\n")
    files = [recipes / "deep.yaml", recipes / "laughs.yaml", recipes / "tiny.yaml"]
    tasks, known, order = nightly.plan_pairs(files, store, tmp_path / "night", NO_GPU, (), False, 1 << 30)
    assert [task.recipe for task in tasks] == ["tiny"]
    assert [(record["recipe"], record["target"], record["status"]) for record in known] == [
        ("deep", "*", "failed"), ("laughs", "*", "failed")]
    assert known[0]["error"] == (f"{recipes / 'deep.yaml'}:1:65: {'[0]' * 64}: expected lists and mappings nested "
                                 "at most 64 deep, got deeper; a recipe needs fewer than 10 levels")
    assert known[1]["error"] == (f"{recipes / 'laughs.yaml'}:3:4: a: expected a value, got an anchor '&a'; recipes "
                                 "do not use YAML anchors and aliases: write the value out")


def test_progress_is_plain_lines_off_a_terminal_and_one_redrawn_line_on_it() -> None:
    task = Task("r.yaml", "tiny", ("sm89",), "/s", False, NO_GPU, "/s/logs")
    record = {"recipe": "tiny", "target": "sm89", "status": "built", "artifact": "tiny@1.0.0", "wall_s": 1.5}
    plain = io.StringIO()
    display = Display(plain, tty=False)
    display.planned(2, 2, 1)
    display.started(task)
    display.tick()
    display.finished(record)
    lines = plain.getvalue().splitlines()
    assert "\r" not in plain.getvalue() and len(lines) == 3
    assert lines[1].startswith("[0/2] start  tiny sm89  (elapsed 0:00, eta ?)")
    assert lines[2].startswith("[1/2] built    tiny sm89 1.5s  tiny@1.0.0  (elapsed 0:00, eta 0:02)")
    terminal = io.StringIO()
    display = Display(terminal, tty=True)
    display.planned(2, 2, 1)
    display.started(task)
    assert terminal.getvalue().endswith("buildable)\n[0/2] running tiny sm89 0s  (elapsed 0:00, eta ?)")
