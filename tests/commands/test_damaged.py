"""A damaged engine (truncated, bytes flipped, deleted, or a manifest sha256 that is not its own) is never used:
every command that uses an engine says so in one line and exits 1; `list` and `show` say so; a build replaces it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.digest import file_sha256
from pipeline.errors import StoreError
from pipeline.store import Artifact, Store
from tests._lifecycle import SM89, TINY, build, copy_store, write
from tests.commands.test_lifecycle import USER, cli

HINT = ("hint: a build of its recipe replaces it (a damaged artifact is never reused); `trt-pipeline fsck` checks "
        "the whole store\n")
ZERO = "0" * 64


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Store:
    """tiny@1.0.0 really built for sm89, on production (a waiver: no GPU validates here)."""
    root = tmp_path_factory.mktemp("damaged")
    store = Store(root / "store")
    build(write(root / "tiny.yaml", TINY, models_dir / "tiny.onnx"), store, ("sm89",))
    assert main(["promote", "tiny@1.0.0", "--from", SM89, "--channel", "production", "--allow-unvalidated",
                 "--reason", "test", "-q", "--store", str(store.root)], environ=USER) == 0
    return store


@pytest.fixture
def store(built: Store, tmp_path: Path) -> Store:
    return copy_store(built, tmp_path / "store")


def truncate(artifact: Artifact) -> str:
    engine = artifact.path / "engine.plan"
    size = engine.stat().st_size
    os.truncate(engine, size // 2)
    return f"engine.plan is {size // 2} bytes, the manifest says {size}"


def flip(artifact: Artifact) -> str:
    engine = artifact.path / "engine.plan"
    data = bytearray(engine.read_bytes())
    for at in (100, 200, 300):
        data[at] ^= 0xFF
    engine.write_bytes(data)
    return f"engine.plan has sha256 {file_sha256(engine)[:12]}, the manifest says " \
           f"{artifact.manifest().engine.sha256[:12]}"


def delete(artifact: Artifact) -> str:
    (artifact.path / "engine.plan").unlink()
    return "engine.plan is missing"


def wrong_sha(artifact: Artifact) -> str:
    path = artifact.path / "manifest.json"
    record = json.loads(path.read_text())
    record["engine"]["sha256"] = ZERO
    path.write_text(json.dumps(record))
    return f"engine.plan has sha256 {file_sha256(artifact.path / 'engine.plan')[:12]}, the manifest says {ZERO[:12]}"


DAMAGES: dict[str, Callable[[Artifact], str]] = {"truncated": truncate, "flipped": flip, "deleted": delete,
                                                 "wrong-sha": wrong_sha}


@pytest.fixture(params=sorted(DAMAGES))
def damaged(request: pytest.FixtureRequest, store: Store) -> tuple[Store, Artifact, str]:
    artifact = store.resolve("tiny@1.0.0", SM89)
    problem = DAMAGES[request.param](artifact)
    return store, artifact, f"damaged artifact tiny@1.0.0+1 [{SM89}]: {problem}"


def test_an_intact_artifact_is_verified(store: Store) -> None:
    artifact = store.resolve("tiny@1.0.0", SM89)
    assert store.verified(artifact) == artifact and store.engine_problem(artifact) is None


def test_verified_raises_one_line(damaged: tuple[Store, Artifact, str]) -> None:
    store, artifact, message = damaged
    with pytest.raises(StoreError) as caught:
        store.verified(artifact)
    assert str(caught.value) == message


@pytest.mark.parametrize("argv", [
    ("promote", "tiny@1.0.0", "--from", SM89, "--channel", "beta"),
    ("validate", "tiny@1.0.0", "--tag", SM89),
    ("infer", "tiny@1.0.0", "--tag", SM89, "--input", "x=x.npy", "--output-dir", "out"),
    ("bench", "tiny@1.0.0", "--tag", SM89),
    ("show", "tiny@1.0.0", "--tag", SM89),
], ids=lambda argv: argv[0])
def test_commands_that_use_the_engine_refuse_in_one_line(damaged: tuple[Store, Artifact, str], argv: tuple[str, ...],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    store, artifact, message = damaged
    before = (artifact.path / "manifest.json").read_bytes()
    assert cli(store, *argv) == 1
    out, err = capsys.readouterr()
    assert err == f"error: {message}\n{HINT}"
    if argv[0] == "show":
        assert out.splitlines()[-1] == f"damaged     {message.split(': ', 1)[1]}"
    else:
        assert out == ""
    assert (artifact.path / "manifest.json").read_bytes() == before  # nothing recorded (validate), no channel
    assert "beta" not in json.dumps([json.loads(p.read_text()) for p in store.channels_dir("tiny").glob("*.json")])


def test_export_refuses_and_writes_nothing(damaged: tuple[Store, Artifact, str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    store, _, message = damaged
    assert cli(store, "export", "triton", "tiny", "--repo", str(tmp_path / "repo")) == 1
    assert capsys.readouterr() == ("", f"error: {message}\n{HINT}")
    assert not (tmp_path / "repo" / "tiny" / "1").exists()


def test_list_shows_damaged(damaged: tuple[Store, Artifact, str], capsys: pytest.CaptureFixture[str]) -> None:
    store, _, message = damaged
    assert cli(store, "--json", "list") == 0
    out, err = capsys.readouterr()
    [row] = json.loads(out)
    assert (row["validation"], row["problem"], row["engine_bytes"]) == ("damaged", message, None)
    assert err == f"warning: tiny@1.0.0+1 [{SM89}]: {message}\n"


def test_a_build_replaces_a_damaged_artifact_never_reuses_it(damaged: tuple[Store, Artifact, str],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    store, artifact, message = damaged
    recipe = str(artifact.manifest().recipe.path)
    assert cli(store, "build", recipe, "--target", "sm89") == 0
    out, err = capsys.readouterr()
    assert out == f"{store.root / 'tiny' / '1.0.0+2' / SM89}\n"
    assert f"WARNING: ignoring {artifact.path} for reuse: {message}\n" in err
    assert "built 1 engine(s), reused 0" in err and "skip" not in err
    fresh = store.resolve("tiny@1.0.0", SM89)
    assert fresh.build == 2 and store.verified(fresh) == fresh
    assert cli(store, "build", recipe, "--target", "sm89") == 0  # the new build is what is reused now
    assert "reusing tiny@1.0.0+2" in capsys.readouterr().err


def test_an_unchanged_engine_is_hashed_once(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large engine's hash is remembered (inode, size, mtime, ctime): checking it again costs a stat."""
    artifact = store.resolve("tiny@1.0.0", SM89)
    monkeypatch.setattr("pipeline.store.MEMO_MIN_BYTES", 0)
    monkeypatch.setattr("pipeline.store.RACY_S", 0)
    store.verified(artifact)
    hashed: list[Path] = []
    monkeypatch.setattr("pipeline.store.file_sha256", lambda path: hashed.append(path) or "")
    assert Store(store.root).verified(artifact) == artifact and hashed == []
