"""The command line, through `pipeline.cli.main`: exit codes, exact lines, stdout for results only."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import tensorrt_rtx

from pipeline import cli, entry, units
from pipeline.commands import core, output
from tests.build.test_runner import FAILING, RECIPE
from tests.conftest import FORBIDDEN_STORE

REPO = Path(__file__).resolve().parent.parent
RTX = ".".join(tensorrt_rtx.__version__.split(".")[:3])
SM86, SM89 = f"sm86.rtx-{RTX}", f"sm89.rtx-{RTX}"
LABEL = f"tensorrt-rtx {tensorrt_rtx.__version__}"

Recipe = Callable[..., Path]
Capture = pytest.CaptureFixture[str]


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def recipe(write_recipe: Recipe) -> Path:
    return write_recipe(RECIPE)


@pytest.fixture
def built(capsys: Capture, store_dir: Path, recipe: Path) -> list[Path]:
    code, out, err = run(capsys, "--store", str(store_dir), "build", str(recipe))
    assert code == 0, err
    return [Path(line) for line in out.splitlines()]


# ---------------------------------------------------------------- check


def test_check_ok(capsys: Capture, tiny_recipe: Path) -> None:
    assert run(capsys, "check", str(tiny_recipe)) == (0, f"ok   {tiny_recipe} ({LABEL}; {SM89})\n", "")


def test_check_bad(capsys: Capture, write_recipe: Recipe, tiny_recipe: Path) -> None:
    bad = write_recipe(tiny_recipe.read_text().replace("workspace: 64MiB", "workspace: lots")
                       .replace("- parse: {}", "- parse: {chek: true}"), "bad.yaml")
    code, out, err = run(capsys, "check", str(tiny_recipe), str(bad))
    assert code == 1
    assert out == f"ok   {tiny_recipe} ({LABEL}; {SM89})\n"
    assert err == (f"{bad}:7:13: stages[0].parse.chek: unknown key (did you mean 'check'?); expected one of check, "
                   "infer_shapes\n"
                   f"{bad}:9:30: stages[2].memory-pool.workspace: expected a size like '1GiB', '512MiB' or a number "
                   "of bytes, got 'lots'\n")


def test_check_reports_model_and_backend_problems(capsys: Capture, write_recipe: Recipe) -> None:
    bad = write_recipe(RECIPE.replace("targets: [sm86, sm89]", "targets: [sm90]").replace("- x: {", "- z: {"))
    code, out, err = run(capsys, "check", str(bad))
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert lines[0].startswith(f"{bad}:5:11: targets[0]: {LABEL} cannot build for sm90; it supports ")
    assert lines[1] == (f"{bad}:13:14: stages[4].serialize.profiles[0].z: model has no input 'z'; its inputs are x")
    assert len(lines) == 2


def test_check_reports_every_kind_of_problem_in_one_run(capsys: Capture, write_recipe: Recipe) -> None:
    """A bad name, stages out of order, min > opt, a missing model and an unsupported target: one run, every
    problem, one line each, sorted by line; --json lists them all."""
    bad = write_recipe(RECIPE.replace("targets: [sm86, sm89]", "targets: [sm90]").replace("{models}/tiny.onnx", "nope.onnx")
                       .replace("name: tiny", "name: Tiny").replace("min: [1, 4]", "min: [16, 4]")
                       .replace("  - network-flag: {strongly_typed: true}\n  - memory-pool: {workspace: 64MiB}\n",
                                "  - memory-pool: {workspace: 64MiB}\n  - network-flag: {strongly_typed: true}\n"))
    code, out, err = run(capsys, "check", str(bad))
    assert (code, out) == (1, "")
    fields = [line.split(": ")[1] for line in err.splitlines()]
    assert fields == ["name", "model.path", "targets[0]", "stages[2]", "stages[4].serialize.profiles[0].x"]
    lines = [int(line.removeprefix(f"{bad}:").split(":")[0]) for line in err.splitlines()]
    assert lines == sorted(lines)
    code, out, _ = run(capsys, "--json", "check", str(bad))
    assert (code, json.loads(out)[0]["problems"]) == (1, err.splitlines())


def test_a_target_given_on_the_command_line_is_an_error_line(capsys: Capture, store_dir: Path, recipe: Path) -> None:
    code, out, err = run(capsys, "build", str(recipe), "--target", "sm90", "--store", str(store_dir))
    assert (code, out) == (1, "")
    assert err.startswith(f"error: --target sm90: {LABEL} cannot build for sm90; it supports ")
    code, out, _ = run(capsys, "--json", "build", str(recipe), "--target", "sm90", "--store", str(store_dir))
    assert json.loads(out)["error"]["problems"][0].startswith("--target sm90: ")


def test_check_json(capsys: Capture, tiny_recipe: Path, write_recipe: Recipe) -> None:
    bad = write_recipe("name: X\n", "bad.yaml")
    code, out, err = run(capsys, "--json", "check", str(tiny_recipe), str(bad))
    assert (code, err) == (1, "")
    results = json.loads(out)
    assert results[0] == {"recipe": str(tiny_recipe), "ok": True, "problems": [], "targets": [SM89], "backend": LABEL}
    assert results[1]["recipe"] == str(bad) and results[1]["ok"] is False
    assert (f"{bad}:1:7: name: expected a lower-case name like 'resnet50' (letters, digits, '.', '_', '-'), "
            "got 'X'") in results[1]["problems"]
    assert f"{bad}:1:1: model: required key is missing" in results[1]["problems"]


# ---------------------------------------------------------------- build


def test_build_prints_only_artifact_dirs(capsys: Capture, store_dir: Path, recipe: Path) -> None:
    code, out, err = run(capsys, "--store", str(store_dir), "build", str(recipe))
    assert code == 0
    assert out == f"{store_dir / 'tiny' / '1.0.0' / SM86}\n{store_dir / 'tiny' / '1.0.0' / SM89}\n"
    for line in out.splitlines():
        assert (Path(line) / "engine.plan").is_file()
    progress = err.splitlines()
    assert progress[0].startswith("[1/5] parse ")
    assert progress[-1].startswith(f"built 2 engine(s), reused 0, for tiny 1.0.0 with {LABEL} in ")


def test_build_options_after_the_command(capsys: Capture, store_dir: Path, recipe: Path) -> None:
    code, out, err = run(capsys, "build", str(recipe), "--store", str(store_dir), "--target", "sm89", "-q")
    assert (code, out, err) == (0, f"{store_dir / 'tiny' / '1.0.0' / SM89}\n", "")


def test_build_again_reuses_and_force_rebuilds(capsys: Capture, store_dir: Path, recipe: Path,
                                               built: list[Path]) -> None:
    code, out, err = run(capsys, "--store", str(store_dir), "build", str(recipe))
    assert (code, out.splitlines()) == (0, [str(p) for p in built])
    assert "2 of 2 target(s) skipped (unchanged); use --force to rebuild" in err
    code, out, err = run(capsys, "--store", str(store_dir), "build", str(recipe), "--force", "--target", "sm89")
    assert (code, out) == (0, f"{store_dir / 'tiny' / '1.0.0+2' / SM89}\n")


def test_build_json(capsys: Capture, store_dir: Path, recipe: Path) -> None:
    code, out, err = run(capsys, "--store", str(store_dir), "--json", "build", str(recipe))
    assert code == 0
    rows = json.loads(out)
    assert [(r["ref"], r["tag"], r["reused"], r["build"]) for r in rows] == [
        ("tiny@1.0.0+1", SM86, False, 1), ("tiny@1.0.0+1", SM89, False, 1)]
    assert all(Path(r["path"]).is_dir() and r["engine_bytes"] > 0 for r in rows)
    assert [(r["reason"], r["changes"]) for r in rows] == [("first build for sm86", []), ("first build for sm89", [])]
    recipe.write_text(recipe.read_text().replace("workspace: 64MiB", "workspace: 128MiB"))
    code, out, err = run(capsys, "--store", str(store_dir), "--json", "-q", "build", str(recipe), "--target", "sm89")
    (row,) = json.loads(out)
    assert (row["ref"], row["reused"], row["changes"]) == ("tiny@1.0.0+2", False, [
        {"path": "config.memory_pools.workspace", "old": 64 << 20, "new": 128 << 20}])
    assert row["reason"] == f"since tiny@1.0.0+1 [{SM89}]: config.memory_pools.workspace: 67108864 -> 134217728"
    code, out, err = run(capsys, "--store", str(store_dir), "--json", "-q", "build", str(recipe), "--target", "sm89")
    (row,) = json.loads(out)
    assert row["reused"] is True and "reason" not in row and "changes" not in row


def test_build_dry_run_creates_nothing(capsys: Capture, store_dir: Path, recipe: Path) -> None:
    code, out, err = run(capsys, "--store", str(store_dir), "build", str(recipe), "--dry-run")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith(f"tiny 1.0.0 from {recipe} (sha256 ")
    assert out.splitlines()[-1] == f"  target   sm89   -> {store_dir / 'tiny' / '1.0.0' / SM89}"
    assert not store_dir.exists()


def test_build_dry_run_json(capsys: Capture, store_dir: Path, recipe: Path) -> None:
    assert run(capsys, "--store", str(store_dir), "-q", "build", str(recipe), "--target", "sm89")[0] == 0
    code, out, err = run(capsys, "--store", str(store_dir), "--json", "build", str(recipe), "--dry-run")
    assert (code, err) == (0, "")
    plan = json.loads(out)
    assert plan["recipe"]["name"] == "tiny" and plan["backend"] == LABEL
    assert [s["name"] for s in plan["stages"]] == ["parse", "graph-cleanup", "network-flag", "memory-pool", "serialize"]
    assert plan["stages"][0]["settings"] == {"check": True, "infer_shapes": True}
    (built,) = run(capsys, "--store", str(store_dir), "list")[1].splitlines()[1:]
    ref = built.split()[0]
    sm86, sm89 = plan["targets"]
    assert sm89 == {"name": "sm89", "tag": SM89, "action": "reuse", "reuse": ref,
                    "path": str(store_dir / "tiny" / "1.0.0" / SM89)}
    assert (sm86["name"], sm86["tag"], sm86["action"]) == ("sm86", SM86, "build")
    assert Path(sm86["path"]).parent.parent == store_dir / "tiny" and Path(sm86["path"]).name == SM86
    assert not (store_dir / "tiny" / "1.0.0" / SM86).exists()


def test_usage_errors_exit_1_not_2(capsys: Capture) -> None:
    """2 means 'cannot run here'; a mistyped command line is a user error."""
    for argv, usage, message in [(["build"], "usage: trt-pipeline build ", "the following arguments are required"),
                                 (["frobnicate"], "usage: trt-pipeline ", "invalid choice: 'frobnicate'"),
                                 (["list", "--bogus"], "usage: trt-pipeline ", "unrecognized arguments: --bogus")]:
        with pytest.raises(SystemExit) as caught:
            cli.main(argv)
        err = capsys.readouterr().err
        assert caught.value.code == 1, argv
        assert err.startswith(usage) and message in err, err


def test_target_local_without_a_gpu_cannot_build_here(capsys: Capture, store_dir: Path, recipe: Path,
                                                      write_recipe: Recipe) -> None:
    no_gpu = "target 'local' means the GPU of this machine, but no CUDA driver on this machine (libcuda.so.1 " \
             "cannot be loaded); name the targets instead, e.g. targets: [sm86, sm89]"
    assert run(capsys, "--store", str(store_dir), "build", str(recipe), "--target", "local") == (
        2, "", f"error: --target local: {no_gpu}\n")
    local = write_recipe(RECIPE.replace("targets: [sm86, sm89]", "targets: [local]"), "local.yaml")
    assert run(capsys, "--store", str(store_dir), "build", str(local)) == (
        2, "", f"error: {local}:5:11: targets[0]: {no_gpu}\n")
    assert run(capsys, "check", str(local)) == (1, "", f"{local}:5:11: targets[0]: {no_gpu}\n")
    # with another problem in the recipe it is a user error first
    both = write_recipe(RECIPE.replace("targets: [sm86, sm89]", "targets: [local, sm90]"), "both.yaml")
    assert run(capsys, "--store", str(store_dir), "build", str(both))[0] == 1
    assert not store_dir.exists()


def test_a_backend_that_does_not_import_says_how_to_install_it(capsys: Capture, write_recipe: Recipe) -> None:
    full = write_recipe(RECIPE.replace("backend: tensorrt-rtx", "backend: tensorrt"))
    for argv in (["check", str(full)], ["--store", "/tmp/never-created-x", "build", str(full)]):
        code, out, err = run(capsys, *argv)
        assert (code, out) == (1, "")
        assert err.startswith(f"{full}:4:10: backend: backend 'tensorrt' cannot be imported: ")
        assert "; install it: pip install 'trt-pipeline[tensorrt]'" in err and len(err.splitlines()) == 1


def test_parser_errors_are_one_line_each_on_the_console(capsys: Capture, store_dir: Path, write_recipe: Recipe) -> None:
    from tests.stages.test_graph_cleanup import CLEANUP_NEEDED

    code, out, err = run(capsys, "--store", str(store_dir), "build", str(write_recipe(CLEANUP_NEEDED.format(cleanup=""))))
    assert (code, out) == (1, "")
    assert "ERROR: ONNX parser: node 'y' (Reshape): Invalid Node - y\n" in err
    assert "graphShapeAnalyzer" not in err and "cudaError" not in err
    kept = next((store_dir / "_failed").iterdir())
    assert "graphShapeAnalyzer" in kept.read_text()  # the full text is in the kept build log
    assert err.splitlines()[-1].endswith(f"full log: {kept}") and "scratch" not in err


def test_progress_on_a_terminal_shows_each_stage_while_it_runs(monkeypatch: pytest.MonkeyPatch, store_dir: Path,
                                                             recipe: Path) -> None:
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(["--store", str(store_dir), "build", str(recipe), "--target", "sm89"]) == 0
    text = terminal.getvalue()
    assert text.startswith("[1/5] parse ...\r\x1b[K[1/5] parse ")
    assert "[5/5] serialize sm89 ...\r\x1b[K[5/5] serialize sm89 " in text
    plain = io.StringIO()  # not a terminal: the finished lines only
    output.progress(argparse.Namespace(quiet=False)).__class__(plain).started("[1/5] parse ...")
    assert plain.getvalue() == ""


def test_one_size_and_progress_helper() -> None:  # pipeline.units.size, pipeline.commands.output.progress
    assert (units.size(None), units.size(512), units.size(148268), units.size(3 * 2**30)) == ("-", "512 B", "144.8 KiB",
                                                                                      "3.0 GiB")
    assert not hasattr(core, "_size") and not hasattr(core, "_progress")
    assert output.progress(argparse.Namespace(quiet=True))("ignored") is None


def test_build_recipe_errors_are_lines_without_traceback(capsys: Capture, store_dir: Path,
                                                         write_recipe: Recipe) -> None:
    bad = write_recipe(RECIPE.replace("workspace: 64MiB", "workspace: lots"))
    assert run(capsys, "--store", str(store_dir), "build", str(bad)) == (1, "", (
        f"{bad}:10:30: stages[3].memory-pool.workspace: expected a size like '1GiB', '512MiB' or a number of bytes, "
        "got 'lots'\n"))
    assert not store_dir.exists()


def test_build_failure_is_one_error_and_a_hint(capsys: Capture, store_dir: Path, write_recipe: Recipe) -> None:
    code, out, err = run(capsys, "--store", str(store_dir), "-q", "build", str(write_recipe(FAILING)))
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert lines[0].startswith(f"error: serialize: {LABEL} could not build the engine for {SM86}: ")
    kept = next((store_dir / "_failed").iterdir())
    assert lines[-1].startswith("hint: ") and lines[-1].endswith(f"full log: {kept}")
    assert "Traceback" not in err


def test_forgetting_the_store_fails(capsys: Capture, recipe: Path) -> None:
    artifacts = sorted(p.name for p in (REPO / "artifacts").iterdir()) if (REPO / "artifacts").exists() else []
    code, out, err = run(capsys, "build", str(recipe))
    assert (code, out) == (1, "")
    assert err.startswith(f"error: cannot create a staging directory in store {FORBIDDEN_STORE}: ")
    assert "hint: pick a writable store with --store DIR or TRT_PIPELINE_STORE" in err
    assert (sorted(p.name for p in (REPO / "artifacts").iterdir()) if (REPO / "artifacts").exists() else []) == \
        artifacts


def test_store_from_the_environment(capsys: Capture, store_dir: Path, recipe: Path) -> None:
    environ = {"TRT_PIPELINE_STORE": str(store_dir)}
    assert cli.main(["-q", "build", str(recipe), "--target", "sm89"], environ=environ) == 0
    assert capsys.readouterr().out == f"{store_dir / 'tiny' / '1.0.0' / SM89}\n"


def test_unexpected_exception_is_a_bug_with_a_crash_log(capsys: Capture, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path, tiny_recipe: Path) -> None:
    def broken(args: object, log: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(core, "build", broken)  # tests the one handler for unexpected errors
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code, out, err = run(capsys, "--store", str(tmp_path / "s"), "build", str(tiny_recipe))
    crash = next(tmp_path.glob("trt-pipeline-crash-*.log"))
    assert (code, out) == (3, "")
    assert err == f"internal error (this is a bug): RuntimeError: boom\ndetails and versions: {crash}\n"
    text = crash.read_text()
    assert '"trt-pipeline": "0.1.0"' in text and '"python": ' in text
    assert "Traceback" in text and "RuntimeError: boom" in text


def test_ctrl_c_exits_130(capsys: Capture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                          tiny_recipe: Path) -> None:
    def interrupted(args: object, log: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(core, "build", interrupted)
    assert run(capsys, "--store", str(tmp_path / "s"), "build", str(tiny_recipe)) == (
        130, "", "interrupted: nothing was published by the interrupted step\n")


def test_verbose_shows_tensorrt_messages(capsys: Capture, store_dir: Path, tiny_recipe: Path) -> None:
    quiet = run(capsys, "--store", str(store_dir), "build", str(tiny_recipe), "--force")[2]
    verbose = run(capsys, "--store", str(store_dir), "-v", "build", str(tiny_recipe), "--force")[2]
    assert "[tensorrt-rtx] " not in quiet
    assert "INFO: [tensorrt-rtx] " in verbose  # TensorRT's log, through the project's ILogger, on the terminal


# ---------------------------------------------------------------- hostile input, odd files, what the build refuses


def test_hostile_recipes_are_one_line_each_in_bounded_time_and_memory(tmp_path: Path) -> None:
    """The real CLI in a process limited to 1 GiB of address space: an alias bomb (was 4 GiB and minutes), 10,000
    nested lists and a 3,000-level map (were RecursionError: exit 3), 50 MB of flow list and of comment."""
    import resource
    import time

    from tests.test_recipe import BILLION_LAUGHS

    hostile = {"laughs.yaml": BILLION_LAUGHS, "lists.yaml": "[" * 10_000 + "]" * 10_000 + "\n",
               "maps.yaml": "{k: " * 3_000 + "1" + "}" * 3_000 + "\n", "list.yaml": "x: [" + "1," * 25_000_000 + "1]\n",
               "comment.yaml": "#" + "c" * 50_000_000 + "\n"}
    for name, text in hostile.items():
        (tmp_path / name).write_text(text)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline", "check", *(str(tmp_path / n) for n in hostile)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, preexec_fn=limit,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert time.perf_counter() - started < 15  # ~2 s of it is the interpreter and imports
    lines = done.stderr.splitlines()
    assert (done.returncode, done.stdout, len(lines)) == (1, "", 5), done.stderr
    for name, line in zip(hostile, lines):
        assert line.startswith(f"{tmp_path / name}:"), line
    assert lines[0].endswith("expected a value, got an anchor '&a'; recipes do not use YAML anchors and aliases: "
                             "write the value out")
    assert lines[1].endswith("expected lists and mappings nested at most 64 deep, got deeper; a recipe needs fewer "
                             "than 10 levels")
    assert lines[3] == (f"{tmp_path / 'list.yaml'}: expected a recipe of at most 1 MiB (1048576 bytes), got "
                        f"{(tmp_path / 'list.yaml').stat().st_size} bytes; a recipe is a few KiB: is this the right "
                        "file?")


def test_a_model_path_that_is_a_fifo_is_one_line_not_a_hang(capsys: Capture, store_dir: Path, tmp_path: Path,
                                                            write_recipe: Recipe) -> None:
    model = tmp_path / "pipe.onnx"
    os.mkfifo(model)
    bad = write_recipe(RECIPE.replace("{models}/tiny.onnx", str(model)))
    line = f"{bad}:3:15: model.path: expected the model to be a regular file, got a named pipe (FIFO): {model}\n"
    assert run(capsys, "check", str(bad)) == (1, "", line)
    assert run(capsys, "--store", str(store_dir), "build", str(bad)) == (1, "", line)


def test_missing_external_data_is_caught_by_check_and_is_no_crash_in_build(
        capsys: Capture, store_dir: Path, tmp_path: Path, write_recipe: Recipe) -> None:
    import onnx

    from models.make_models import MODELS

    model = tmp_path / "weights" / "tiny.onnx"
    model.parent.mkdir()
    onnx.save(MODELS["tiny"](), str(model), save_as_external_data=True, location="tiny.onnx.data", size_threshold=0)
    (model.parent / "tiny.onnx.data").unlink()
    bad = write_recipe(RECIPE.replace("{models}/tiny.onnx", str(model)))
    problem = (f"external data 'tiny.onnx.data' of {model}: expected a regular file inside {model.parent}, got no "
               "such file; copy it next to the model, or export the model again")
    assert run(capsys, "check", str(bad)) == (1, "", f"{bad}:3:15: model.path: {problem}\n")
    assert run(capsys, "--store", str(store_dir), "build", str(bad)) == (1, "", f"error: parse: {problem}\n")


def test_check_refuses_what_the_build_would(capsys: Capture, write_recipe: Recipe) -> None:
    """A max of 2**31 passed `check`, then the build said 'Shape provided for max is inconsistent' (exit 3)."""
    bad = write_recipe(RECIPE.replace("max: [64, 4]", "max: [2147483648, 4]")
                       .replace("workspace: 64MiB", "workspace: 1000000TiB"))
    assert run(capsys, "check", str(bad)) == (1, "", (
        f"{bad}:10:30: stages[3].memory-pool.workspace: expected a size of at most 1024TiB (1125899906842624 bytes), "
        "got '1000000TiB'\n"
        f"{bad}:13:47: stages[4].serialize.profiles[0].x.max[0]: expected a dimension from 0 to 2147483647 "
        "(TensorRT's limit), got 2147483648\n"))


# ---------------------------------------------------------------- list and show


def test_list(capsys: Capture, store_dir: Path, built: list[Path]) -> None:
    code, out, err = run(capsys, "--store", str(store_dir), "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["ARTIFACT", "TAG", "ENGINE", "VALIDATION", "CREATED"]
    assert [line.split()[:2] for line in lines[1:]] == [["tiny@1.0.0+1", SM86], ["tiny@1.0.0+1", SM89]]
    assert all(line.split()[4] == "not-run" for line in lines[1:])


def test_list_json(capsys: Capture, store_dir: Path, built: list[Path]) -> None:
    code, out, err = run(capsys, "--store", str(store_dir), "list", "--json")
    rows = json.loads(out)
    assert [(r["ref"], r["tag"], r["path"]) for r in rows] == [("tiny@1.0.0+1", SM86, str(built[0])),
                                                               ("tiny@1.0.0+1", SM89, str(built[1]))]
    assert all(r["engine_bytes"] == (Path(r["path"]) / "engine.plan").stat().st_size for r in rows)


def test_list_by_name_and_empty(capsys: Capture, store_dir: Path, built: list[Path], tmp_path: Path) -> None:
    assert json.loads(run(capsys, "--store", str(store_dir), "--json", "list", "other")[1]) == []
    assert run(capsys, "--store", str(tmp_path / "empty"), "list") == (0, "", f"no artifacts in {tmp_path / 'empty'}\n")


def test_show(capsys: Capture, store_dir: Path, built: list[Path]) -> None:
    code, out, err = run(capsys, "--store", str(store_dir), "show", "tiny@1.0.0", "--tag", SM89)
    assert (code, err) == (0, "")
    fields = {line[:11].strip(): line[12:] for line in out.splitlines()}
    assert fields["artifact"] == f"tiny@1.0.0+1 [{SM89}]"
    assert fields["path"] == str(built[1])
    assert fields["backend"] == LABEL
    assert fields["target"] == f"{SM89} (compute capability 8.9)"
    assert fields["cleaned"].startswith("model.cleaned.onnx (sha256 ")
    assert fields["pools"] == "workspace=64.0 MiB"
    assert fields["validation"] == "not-run: no validation has run on this artifact yet"


def test_show_json_by_directory(capsys: Capture, store_dir: Path, built: list[Path]) -> None:
    code, out, err = run(capsys, "--store", str(store_dir), "--json", "show", str(built[0]))
    shown = json.loads(out)
    assert shown["path"] == str(built[0])
    assert {k: v for k, v in shown.items() if k != "path"} == json.loads((built[0] / "manifest.json").read_text())


def test_show_every_tag_and_unknown(capsys: Capture, store_dir: Path, built: list[Path]) -> None:
    code, out, err = run(capsys, "--store", str(store_dir), "show", "tiny@1.0.0")  # several tags: all shown
    assert (code, err) == (0, "")
    assert [line for line in out.splitlines() if line.startswith("artifact ")] == [
        f"artifact    tiny@1.0.0+1 [{SM86}]", f"artifact    tiny@1.0.0+1 [{SM89}]"]
    assert run(capsys, "--store", str(store_dir), "show", "nope@1.0.0") == (
        1, "", f"error: no artifact nope@1.0.0 in store {store_dir}; built artifacts: tiny@1.0.0\n"
               "hint: see `trt-pipeline list`\n")


def test_show_takes_a_short_tag_and_shows_every_tag_of_a_version_directory(capsys: Capture, store_dir: Path,
                                                                         built: list[Path]) -> None:
    code, out, err = run(capsys, "--store", str(store_dir), "show", "tiny@1.0.0+1", "--tag", "sm89")
    assert (code, out.splitlines()[0], err) == (0, f"artifact    tiny@1.0.0+1 [{SM89}]", "")
    assert run(capsys, "--store", str(store_dir), "show", "tiny@1.0.0+1", "--tag", "sm8")[2] == (
        f"error: no artifact tiny@1.0.0+1 with tag sm8 in store {store_dir}; tiny@1.0.0+1 has tag(s) {SM86}, {SM89}\n"
        "hint: pick one with --tag TAG\n")
    folder = store_dir / "tiny" / "1.0.0"
    code, out, _ = run(capsys, "--store", str(store_dir), "show", str(folder))  # a version directory: every tag
    assert code == 0 and out.count("artifact    tiny@1.0.0+1 [") == 2
    assert run(capsys, "--store", str(store_dir), "show", "tiny@")[:2] == (1, "")


def test_a_damaged_manifest_is_marked_in_list_and_one_error_in_show(capsys: Capture, store_dir: Path,
                                                                    built: list[Path]) -> None:
    truncated, wrong = built[0] / "manifest.json", built[1] / "manifest.json"
    truncated.write_text(truncated.read_text()[:100])
    wrong.write_text(json.dumps({**json.loads(wrong.read_text()), "engine": [], "validation": "passed"}))
    code, out, err = run(capsys, "--store", str(store_dir), "list")
    assert code == 0
    assert [line.split()[:4] for line in out.splitlines()[1:]] == [["tiny@1.0.0+1", SM86, "?", "damaged"],
                                                                   ["tiny@1.0.0+1", SM89, "?", "damaged"]]
    assert err.splitlines()[0].startswith(f"warning: tiny@1.0.0+1 [{SM86}]: cannot read {truncated}: ")
    assert err.splitlines()[1].startswith(f"warning: tiny@1.0.0+1 [{SM89}]: damaged manifest {wrong}: ")
    assert [r["validation"] for r in json.loads(run(capsys, "--store", str(store_dir), "list", "--json")[1])] == [
        "damaged", "damaged"]
    code, out, err = run(capsys, "--store", str(store_dir), "show", "tiny", "--tag", SM89)
    assert (code, out) == (1, "")
    assert err.startswith(f"error: damaged manifest {wrong}: ") and err.count("\n") == 1


def test_list_of_a_file_is_one_error(capsys: Capture, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert run(capsys, "--store", str(tmp_path / "file"), "list") == (
        1, "", f"error: store {tmp_path / 'file'} is not a directory\n"
               "hint: pick a store directory with --store DIR or TRT_PIPELINE_STORE\n")


# ---------------------------------------------------------------- help, entry points


def commands() -> list[str]:
    sub = next(a for a in cli.parser()._actions if a.dest == "command")
    return sorted(sub.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", [None, *commands()])
def test_help_works_for_every_command(capsys: Capture, command: str | None) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main([command, "--help"] if command else ["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: trt-pipeline {command} " if command else "usage: trt-pipeline ")


@pytest.mark.parametrize("command", ["check", "build", "list", "show", "validate", "infer", "bench"])
def test_help_teaches_examples_output_and_exit_codes(capsys: Capture, command: str) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert re.search(rf"\nexamples:\n  trt-pipeline (--json )?{command}\b", out), out
    assert "\nstdout: " in out and "\nexit codes: 0 " in out


def test_core_commands_are_registered() -> None:
    assert {"check", "build", "list", "show"} <= set(commands())


def test_python_dash_m_pipeline_help() -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: trt-pipeline ")
    assert "exit codes: 0 ok, 1 user error" in done.stdout


def test_help_imports_no_heavy_library() -> None:
    """--help, check and list must be instant: TensorRT, graphsurgeon, ONNX Runtime and Polygraphy load lazily."""
    code = ("import sys\nfrom pipeline import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = ('tensorrt_rtx', 'tensorrt', 'onnx_graphsurgeon', 'onnxruntime', 'polygraphy', 'onnx',\n"
            "         'matplotlib')\n"
            "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "[]"


def test_console_script_entry_point_is_run() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["trt-pipeline"].partition(":")
    assert getattr(importlib.import_module(module), name) is entry.run  # main(), its exit status fixed (130/143)


def test_console_script() -> None:
    script = Path(sys.executable).parent / "trt-pipeline"
    if not script.exists():
        pytest.skip("the trt-pipeline console script is not installed in this environment (pip install -e .)")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "trt-pipeline 0.1.0\n")


# ---------------------------------------------------------------- the README quick start (slow: ResNet-50)


@pytest.mark.slow
def test_readme_resnet50_recipe_builds_as_written(capsys: Capture, tmp_path: Path, resnet50_path: Path) -> None:
    """The slow one (ResNet-50, ~10 s on an idle 2-core machine): recipes/resnet50.yaml, unedited, builds an
    engine for each of its 3 targets."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "models").mkdir()
    recipe = tmp_path / "recipes" / "resnet50.yaml"
    shutil.copyfile(REPO / "recipes" / "resnet50.yaml", recipe)
    os.symlink(resnet50_path, tmp_path / "models" / "resnet50.onnx")
    store_dir = tmp_path / "artifacts"
    code, out, err = run(capsys, "--store", str(store_dir), "build", str(recipe))
    assert code == 0, err
    tags = [f"sm86.rtx-{RTX}", f"sm89.rtx-{RTX}", f"sm120.rtx-{RTX}"]
    assert out.splitlines() == [str(store_dir / "resnet50" / "1.0.0" / tag) for tag in tags]
    for line in out.splitlines():
        manifest = json.loads((Path(line) / "manifest.json").read_text())
        assert manifest["engine"]["bytes"] == (Path(line) / "engine.plan").stat().st_size > 1_000_000
        assert manifest["config"]["memory_pools"] == {"workspace": 2 * 1024**3, "tactic_shared_memory": 48 * 1024}
        assert manifest["config"]["profiles"] == [{"input": {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224],
                                                             "max": [32, 3, 224, 224]}}]
        assert manifest["validation"]["status"] in {"skipped", "not-run"}  # no GPU can run it here


def test_an_unchanged_rebuild_does_not_parse_the_model(tiny_recipe: Path, tmp_path: Path) -> None:
    """The skip decision needs only file hashes and manifests: onnx is never imported for it."""
    script = ("import sys; from pipeline.cli import main; "
              f"code = main(['build', {str(tiny_recipe)!r}, '--store', {str(tmp_path / 'store')!r}, '-q']); "
              "print(code, 'onnx' in sys.modules)")
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert first.stdout.splitlines()[-1] == "0 True"
    assert again.stdout.splitlines()[-1] == "0 False"
    assert again.stdout.splitlines()[0] == first.stdout.splitlines()[0]  # the same artifact directory


# ---------------------------------------------------------------- an unchanged rebuild: remembered plan and hashes

UNCHANGED_REBUILD = """\
import sys
from pipeline.cli import main
code = main(sys.argv[1:])
print(code, *(module in sys.modules for module in ("tensorrt_rtx", "jsonschema", "onnx")), file=sys.stderr)
"""


def test_an_unchanged_rebuild_imports_neither_tensorrt_nor_jsonschema(capsys: Capture, store_dir: Path,
                                                                       tiny_recipe: Path) -> None:
    code, first, err = run(capsys, "--store", str(store_dir), "build", str(tiny_recipe))
    assert code == 0, err
    # The plan is remembered; the tiny model is under MEMO_MIN_BYTES, so it is hashed every time.
    assert sorted(p.name for p in (store_dir / ".memo").iterdir()) == ["plans.json"]
    done = subprocess.run([sys.executable, "-c", UNCHANGED_REBUILD, "--store", str(store_dir), "build",
                           str(tiny_recipe)], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout == first  # the same artifact directory
    lines = done.stderr.splitlines()
    assert lines[-1] == "0 False False False", done.stderr  # exit code; tensorrt_rtx, jsonschema, onnx imported?
    assert lines[0] == f"[skip] sm89   unchanged recipe and model (source key): reusing tiny@1.0.0+1 {SM89}"
    assert lines[-2].startswith(f"built 0 engine(s), reused 1, for tiny 1.0.0 with {LABEL} in ")


def test_a_dry_run_remembers_nothing(capsys: Capture, store_dir: Path, tiny_recipe: Path, write_recipe: Recipe,
                                     models_dir: Path, tmp_path: Path) -> None:
    """Not the plan of a recipe it has not built (Store tests: nor the hash of a model it has not seen)."""
    assert run(capsys, "--store", str(store_dir), "-q", "build", str(tiny_recipe))[0] == 0
    memo = {p.name: p.read_bytes() for p in (store_dir / ".memo").iterdir()}
    shutil.copyfile(models_dir / "tiny.onnx", tmp_path / "copy.onnx")
    other = write_recipe(tiny_recipe.read_text().replace(str(models_dir / "tiny.onnx"), str(tmp_path / "copy.onnx"))
                         .replace("64MiB", "32MiB"), "other.yaml")
    for recipe in (tiny_recipe, other):
        for extra in ((), ("--json",)):
            code, out, err = run(capsys, "--store", str(store_dir), *extra, "build", str(recipe), "--dry-run")
            assert (code, err) == (0, "")
    assert {p.name: p.read_bytes() for p in (store_dir / ".memo").iterdir()} == memo
    assert run(capsys, "--store", str(store_dir), "-q", "build", str(other))[0] == 0  # a build remembers both
    after = {p.stem: json.loads(p.read_text()) for p in (store_dir / ".memo").iterdir()}
    assert len(after["plans"]) == 2


def test_json_failures_are_one_document_on_stdout_and_lines_on_stderr(capsys: Capture, store_dir: Path,
                                                                      write_recipe: Recipe) -> None:
    code, out, err = run(capsys, "--store", str(store_dir), "--json", "show", "nothing@1.0.0")
    assert code == 1 and err.startswith("error: no artifact nothing@1.0.0 in store ")
    assert json.loads(out) == {"error": {"kind": "error", "message": err.splitlines()[0].removeprefix("error: "),
                                         "problems": [], "hint": "see `trt-pipeline list`", "exit_code": 1}}
    bad = write_recipe(RECIPE.replace("workspace: 64MiB", "workspace: lots"))
    code, out, err = run(capsys, "--store", str(store_dir), "--json", "build", str(bad))
    failure = json.loads(out)["error"]
    assert (code, failure["kind"], failure["exit_code"]) == (1, "recipe", 1)
    assert failure["problems"] == err.splitlines() and "memory-pool.workspace" in failure["problems"][0]


def test_colour_only_on_a_terminal_and_never_with_no_color(store_dir: Path) -> None:
    """A real pseudo-terminal (pty), so isatty is the operating system's answer."""
    import pty

    def on_terminal(environ: dict) -> bytes:
        pid, fd = pty.fork()
        if pid == 0:  # the child: the CLI with stdout and stderr on the terminal
            os.execve(sys.executable, [sys.executable, "-m", "pipeline", "--store", str(store_dir), "show", "x@1.0.0"],
                      {**os.environ, **environ})
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := os.read(fd, 4096):
                chunks.append(chunk)
        os.waitpid(pid, 0)
        return b"".join(chunks)

    coloured = on_terminal({"NO_COLOR": ""})
    assert b"\x1b[31merror\x1b[0m: no artifact x@1.0.0" in coloured and b"\x1b[33mhint\x1b[0m: " in coloured
    assert b"\x1b[" not in on_terminal({"NO_COLOR": "1"})


def test_shell_completion_script_is_generated_from_the_parser(capsys: Capture) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--print-completion", "bash"])
    script = capsys.readouterr().out
    assert done.value.code == 0 and "complete" in script
    assert all(command in script for command in ("build", "check", "inspect", "init", "nightly", "promote"))


# a sys.meta_path hook that sends the process SIGTERM when pipeline.commands starts importing (as the CLI loads)
SIGNAL_WHILE_IMPORTING = """
import importlib.abc, os, signal, sys
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "pipeline.commands":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGTERM)
        return None
sys.meta_path.insert(0, Hook())
"""


def console_script() -> str:
    """What pip's generated `trt-pipeline` script runs: pyproject's [project.scripts] entry, as `MODULE:FUNC`."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    module, func = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["trt-pipeline"].split(":")
    return f"import sys\nfrom {module} import {func}\nsys.exit({func}())\n"


def test_the_console_script_covers_a_signal_while_it_imports_the_commands(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = SIGNAL_WHILE_IMPORTING + console_script()
    done = subprocess.run([sys.executable, "-c", code, "list", "--store", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (143, "interrupted: nothing was published by the interrupted step\n")
    works = subprocess.run([sys.executable, "-c", console_script(), "--version"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
    assert works.returncode == 0 and works.stdout.startswith("trt-pipeline ")


def test_shtab_is_imported_only_for_a_completion_script() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    check = "import sys, pipeline.cli; sys.exit('shtab' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], cwd=REPO, env=env, timeout=60).returncode == 0
