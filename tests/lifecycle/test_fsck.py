"""fsck: a whole-store check on real builds; every injected problem reported in one line; --repair removes only
what is provably garbage (leftovers of dead processes, temp files, empty directories, dead memo entries)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.lifecycle import channel, fsck
from pipeline.store import HASHES, STAGING, Store
from tests._lifecycle import SM86, SM89, TINY, build, copy_store, write


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Store:
    """tiny@1.0.0 really built for sm86 and sm89, the sm89 build on production."""
    root = tmp_path_factory.mktemp("fsck")
    store = Store(root / "store")
    build(write(root / "tiny.yaml", TINY, models_dir / "tiny.onnx"), store, ("sm86", "sm89"))
    artifact = store.resolve("tiny@1.0.0", SM89)
    channel.set_(store, "tiny", SM89, "production", channel.pointer(artifact), {"at": "t1", "by": "ana@ci"})
    return store


@pytest.fixture
def store(built: Store, tmp_path: Path) -> Store:
    return copy_store(built, tmp_path / "store")


@pytest.fixture(scope="module")
def dead() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def cli(store: Store, *argv: str) -> int:
    return main([*argv, "--store", str(store.root)], environ={"TRT_PIPELINE_USER": "ana@ci"})


def lines(store: Store) -> list[str]:
    return [str(problem) for problem in fsck.check(store)]


def set_pointer(store: Store, tag: str, change: Callable[[dict], None]) -> None:
    path = store.channels_dir("tiny") / f"{tag}.json"
    record = json.loads(path.read_text())
    change(record["channels"]["production"])
    path.write_text(json.dumps(record))


def test_a_store_after_builds_and_a_promotion_is_clean(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert fsck.check(store) == []
    assert cli(store, "fsck") == 0
    assert capsys.readouterr() == ("", f"store {store.root}: clean\n")
    assert Store(store.root / "missing").recipes() == [] and fsck.check(Store(store.root / "missing")) == []


def test_a_live_build_is_not_a_problem(store: Store) -> None:
    with store.staging("tiny") as staged:
        assert staged.name.startswith(f"tiny-{os.getpid()}-")  # the owner's pid in the name
        (staged / ".manifest.json.1.tmp").write_text("{")
        assert fsck.check(store) == []


def test_a_damaged_engine_is_reported_and_never_removed(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    artifact = store.resolve("tiny@1.0.0", SM89)
    engine = artifact.path / "engine.plan"
    size = engine.stat().st_size
    os.truncate(engine, 1000)
    line = (f"{artifact.path}: damaged artifact tiny@1.0.0+1 [{SM89}]: engine.plan is 1000 bytes, the manifest "
            f"says {size}")
    assert lines(store) == [line]
    assert cli(store, "fsck", "--repair") == 1
    assert capsys.readouterr() == (f"{line}\n", f"store {store.root}: 1 problem(s)\n")
    assert engine.stat().st_size == 1000 and store.resolve("tiny@1.0.0", SM89) == artifact


def test_a_damaged_manifest_and_a_directory_without_one(store: Store) -> None:
    sm86 = store.resolve("tiny@1.0.0", SM86)
    (sm86.path / "manifest.json").write_text("{")
    half = store.root / "tiny" / "1.0.0" / "sm120.rtx-x"
    half.mkdir()
    problems = lines(store)
    assert problems[0].startswith(f"{sm86.path}: damaged artifact tiny@1.0.0+1 [{SM86}]: cannot read ")
    assert problems[1:] == [f"{half}: a directory without a manifest among the builds (not an artifact)"]


def test_channels_that_disagree_with_the_store_or_the_history(store: Store) -> None:
    where = f"tiny channel production of {SM89}"
    set_pointer(store, SM89, lambda entry: entry.update(engine_sha256="0" * 64))
    assert lines(store) == [f"{where}: tiny@1.0.0+1 [{SM89}] has engine sha256 "
                            f"{store.resolve('tiny@1.0.0', SM89).manifest().engine.sha256[:12]}, the channel "
                            "recorded 000000000000"]
    set_pointer(store, SM89, lambda entry: entry.update(build=9, ref="tiny@1.0.0+9"))
    assert lines(store) == [
        f"{where}: points at tiny@1.0.0+9 [{SM89}], but its last history event says tiny@1.0.0+1 [{SM89}]",
        f"{where}: points at tiny@1.0.0+9 [{SM89}], which is not in the store"]
    (store.channels_dir("tiny") / "history.jsonl").write_text("")
    assert lines(store)[0] == f"{where}: points at tiny@1.0.0+9 [{SM89}], which no history event records"


def test_a_history_that_names_a_removed_build(store: Store) -> None:
    artifact = store.resolve("tiny@1.0.0", SM89)
    shutil.rmtree(artifact.path)
    assert lines(store) == [
        f"tiny history: t1: tiny@1.0.0+1 [{SM89}] (promoted to production of {SM89}) is not in the store",
        f"tiny channel production of {SM89}: points at tiny@1.0.0+1 [{SM89}], which is not in the store"]


def garbage(store: Store, dead: int) -> list[str]:
    """Leftovers of a killed process, everywhere fsck looks; returns fsck's lines for them."""
    staging = store.root / STAGING
    leftover = staging / f"tiny-sm89-{dead}-a1b2c3d4"
    trash = staging / f"_trash-{dead}-tiny-e5f6g7h8"
    for path in (leftover, trash):
        path.mkdir(parents=True)
        (path / "engine.plan").write_bytes(b"half")
    artifact = store.resolve("tiny@1.0.0", SM89)
    temps = [artifact.path / f".manifest.json.{dead}.tmp", store.channels_dir("tiny") / f".{SM89}.json.{dead}.tmp"]
    for temp in temps:
        temp.write_text("{")
    empty = store.root / "tiny" / "1.0.0+4"
    empty.mkdir()
    store.remember(HASHES, "/no/such/engine.plan", {"stamp": [1, 2, 3, 4], "sha256": "0" * 64})
    return [f"{leftover}: left behind by process {dead}, which is gone",
            f"{trash}: left behind by process {dead}, which is gone",
            *sorted(f"{temp}: temporary file of process {dead}, which is gone" for temp in temps),
            f"{empty}: empty version directory",
            "/no/such/engine.plan: hash memo entry of a file that is gone or changed since"]


def test_every_kind_of_garbage_is_reported(store: Store, dead: int, capsys: pytest.CaptureFixture[str]) -> None:
    expected = garbage(store, dead)
    assert sorted(lines(store)) == sorted(expected)
    assert cli(store, "fsck") == 1
    out, err = capsys.readouterr()
    assert sorted(out.splitlines()) == sorted(expected)
    assert err == f"store {store.root}: 6 problem(s); `trt-pipeline fsck --repair` removes 6 of them\n"


def test_repair_removes_the_garbage_and_nothing_else(store: Store, dead: int,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    expected = garbage(store, dead)
    artifacts = store.artifacts()
    unknown = store.root / STAGING / "notes"  # no owner in its name: reported, never removed
    unknown.mkdir()
    assert cli(store, "fsck", "--repair") == 1
    out, err = capsys.readouterr()
    assert sorted(out.splitlines()) == sorted(
        [f"removed {line}" for line in expected]
        + [f"{unknown}: staging entry of unknown owner (remove it by hand when no build runs)"])
    assert err == f"store {store.root}: 1 problem(s), 6 removed\n"
    unknown.rmdir()
    assert cli(store, "--json", "fsck") == 0
    assert json.loads(capsys.readouterr().out) == {"store": str(store.root), "clean": True, "problems": [],
                                                   "removed": []}
    assert Store(store.root).memo(HASHES) == {} and store.artifacts() == artifacts
    assert [e["tag"] for e in channel.history(store, "tiny")] == [SM89]


def test_json_lists_each_problem(store: Store, dead: int, capsys: pytest.CaptureFixture[str]) -> None:
    garbage(store, dead)
    os.truncate(store.resolve("tiny@1.0.0", SM86).path / "engine.plan", 10)
    assert cli(store, "--json", "fsck", "--repair") == 1
    report = json.loads(capsys.readouterr().out)
    assert [(p["kind"], p["garbage"]) for p in report["problems"]] == [("damaged", False)]
    assert sorted(p["kind"] for p in report["removed"]) == ["empty", "memo", "staging", "staging", "temp", "temp"]


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fsck", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: trt-pipeline fsck" in out and "exit codes: 0 clean" in out


def test_a_torn_last_history_line_does_not_count_and_repair_cuts_it(store: Store,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    history = store.channels_dir("tiny") / channel.HISTORY
    whole = history.read_bytes()
    history.write_bytes(whole + b'{"at": "t2", "by": "bo')  # a process killed while appending
    assert [e["at"] for e in channel.history(store, "tiny")] == ["t1"]
    line = f"{history}: a half-written last line (22 bytes) of a write that never finished; it does not count"
    assert lines(store) == [line]
    assert cli(store, "fsck", "--repair") == 0
    assert capsys.readouterr().out == f"removed {line}\n"
    assert history.read_bytes() == whole and fsck.check(store) == []


def test_a_torn_line_is_cut_before_the_next_event_is_appended(store: Store) -> None:
    history = store.channels_dir("tiny") / channel.HISTORY
    history.write_bytes(history.read_bytes() + b'{"at": "t2"')
    artifact = store.resolve("tiny@1.0.0", SM86)
    channel.set_(store, "tiny", SM86, "production", channel.pointer(artifact), {"at": "t3", "by": "bo@ci"})
    assert [e["at"] for e in channel.history(store, "tiny")] == ["t1", "t3"]
    assert fsck.check(store) == []


def test_a_bad_history_line_is_named_by_its_number(store: Store) -> None:
    history = store.channels_dir("tiny") / channel.HISTORY
    text = history.read_text()
    history.write_text(text + "not json\n")
    number = text.count("\n") + 1
    [problem] = lines(store)
    assert problem.startswith(f"tiny: cannot read history {history}: line {number} column 1: Expecting value (not a record")
