"""gc: keep the newest N builds per recipe and GPU tag; never remove a build a channel points at or ever did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import StoreError
from pipeline.lifecycle import channel, fsck, gc
from pipeline.store import STAGING, Store
from tests._lifecycle import SM86, SM89, TINY, build, copy_store, write


@pytest.fixture(scope="module")
def five(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Store:
    """tiny@1.0.0 built five times for sm89 (1.0.0, +2 ... +5) and once for sm86, all real engines."""
    root = tmp_path_factory.mktemp("gc")
    store = Store(root / "store")
    recipe = write(root / "tiny.yaml", TINY, models_dir / "tiny.onnx")
    build(recipe, store, ("sm86", "sm89"))
    for _ in range(4):
        build(recipe, store, ("sm89",), force=True)
    return store


@pytest.fixture
def store(five: Store, tmp_path: Path) -> Store:
    """A private copy with build 1 on production, build 2 once on candidate, build 3 on candidate now."""
    store = copy_store(five, tmp_path / "store")
    for build_number, name in ((1, "production"), (2, "candidate"), (3, "candidate")):
        artifact = store.resolve(f"tiny@1.0.0+{build_number}", SM89)
        channel.set_(store, "tiny", SM89, name, channel.pointer(artifact), {"at": f"t{build_number}"})
    return store


def refs(artifacts) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return sorted((a.ref, a.tag) for a in artifacts)


def test_dry_run_lists_and_removes_nothing(store: Store) -> None:
    before = refs(store.artifacts())
    sweep = gc.collect(store, keep=1, dry_run=True)
    assert refs(sweep.remove) == [("tiny@1.0.0+4", SM89)]
    assert [(a.ref, why) for a, why in sweep.protected] == [
        ("tiny@1.0.0+1", f"on channel production of {SM89}"),
        ("tiny@1.0.0+2", f"was promoted to candidate on {SM89} at t2"),
        ("tiny@1.0.0+3", f"on channel candidate of {SM89}")]
    assert sweep.kept == 2  # the newest sm89 build and the only sm86 build
    assert refs(store.artifacts()) == before


def test_gc_removes_old_unpromoted_builds_only(store: Store) -> None:
    sweep = gc.collect(store, keep=1)
    assert refs(sweep.remove) == [("tiny@1.0.0+4", SM89)]
    assert refs(store.artifacts()) == [("tiny@1.0.0+1", SM86), ("tiny@1.0.0+1", SM89), ("tiny@1.0.0+2", SM89),
                                       ("tiny@1.0.0+3", SM89), ("tiny@1.0.0+5", SM89)]
    assert not (store.root / "tiny" / "1.0.0+4").exists()  # the emptied version directory goes too
    assert (store.root / "tiny" / "1.0.0" / SM86).is_dir()  # a version directory with another tag stays
    assert list((store.root / STAGING).iterdir()) == []
    for _, _, entry in channel.everything(store, "tiny"):
        assert channel.resolve(store, "tiny", entry).manifest().engine.sha256 == entry["engine_sha256"]


def test_keep_zero_still_never_touches_a_promoted_build(store: Store) -> None:
    sweep = gc.collect(store, keep=0)
    assert refs(sweep.remove) == [("tiny@1.0.0+1", SM86), ("tiny@1.0.0+4", SM89), ("tiny@1.0.0+5", SM89)]
    assert refs(store.artifacts()) == [("tiny@1.0.0+1", SM89), ("tiny@1.0.0+2", SM89), ("tiny@1.0.0+3", SM89)]


def test_keep_is_per_gpu_tag_and_a_second_run_finds_nothing(store: Store) -> None:
    gc.collect(store, keep=2)
    assert refs(store.artifacts()) == [("tiny@1.0.0+1", SM86), ("tiny@1.0.0+1", SM89), ("tiny@1.0.0+2", SM89),
                                       ("tiny@1.0.0+3", SM89), ("tiny@1.0.0+4", SM89), ("tiny@1.0.0+5", SM89)]
    gc.collect(store, keep=1)
    assert gc.collect(store, keep=1).remove == ()


def test_the_source_of_a_promotion_is_kept(store: Store) -> None:
    """A rebuild's manifest links to its source build: the source stays as long as the history names it."""
    source = store.resolve("tiny@1.0.0+4", SM89)
    target = store.resolve("tiny@1.0.0", SM86)
    channel.set_(store, "tiny", SM86, "candidate", channel.pointer(target),
                 {"at": "t9", "from": {"ref": source.ref, "tag": source.tag}})
    sweep = gc.plan(store, keep=1)
    assert sweep.remove == ()
    assert (source, f"source of a promotion to {SM86} at t9") in sweep.protected


def test_only_the_named_recipe_is_collected(store: Store) -> None:
    assert gc.plan(store, keep=1, name="other").remove == ()
    assert refs(gc.plan(store, keep=1, name="tiny").remove) == [("tiny@1.0.0+4", SM89)]


def test_a_negative_keep_is_refused(store: Store) -> None:
    with pytest.raises(StoreError) as error:
        gc.collect(store, keep=-1)
    assert str(error.value) == "--keep must be 0 or more, got -1"


def test_a_removed_build_number_is_never_given_again(store: Store, models_dir: Path, tmp_path: Path) -> None:
    """After gc removed +4 and +5, a new build is +6: a report naming +5 never points at another engine."""
    gc.collect(store, keep=0)
    recipe = write(tmp_path / "tiny.yaml", TINY, models_dir / "tiny.onnx")
    (new,) = build(recipe, store, ("sm89",), force=True)
    assert (new.ref, new.path) == ("tiny@1.0.0+6", store.root / "tiny" / "1.0.0+6" / SM89)


def to_the_old_format(store: Store) -> None:
    """Rewrite the channels as the code before event ids wrote them (5762edb): events without an id and no commit
    lines in the history, channel files without "events"."""
    folder = store.channels_dir("tiny")
    history = folder / channel.HISTORY
    records = [json.loads(line) for line in history.read_text().splitlines()]
    old = [{k: v for k, v in r.items() if k != "id"} for r in records if "commit" not in r]
    history.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in old))
    for path in folder.glob("*.json"):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({"name": record["name"], "tag": record["tag"], "channels": record["channels"]}))


def test_a_history_of_the_old_format_counts_in_full(store: Store) -> None:
    to_the_old_format(store)
    assert [(e["artifact"]["ref"], e["channel"]) for e in channel.history(store, "tiny")] == [
        ("tiny@1.0.0+1", "production"), ("tiny@1.0.0+2", "candidate"), ("tiny@1.0.0+3", "candidate")]
    assert fsck.check(store) == []
    sweep = gc.collect(store, keep=0)
    assert refs(sweep.remove) == [("tiny@1.0.0+1", SM86), ("tiny@1.0.0+4", SM89), ("tiny@1.0.0+5", SM89)]
    assert refs(store.artifacts()) == [("tiny@1.0.0+1", SM89), ("tiny@1.0.0+2", SM89), ("tiny@1.0.0+3", SM89)]
    # the next promotion writes the new format after the old lines; all of them still count
    artifact = store.resolve("tiny@1.0.0+3", SM89)
    channel.set_(store, "tiny", SM89, "production", channel.pointer(artifact), {"at": "t4"})
    assert [e["at"] for e in channel.history(store, "tiny")] == ["t1", "t2", "t3", "t4"]
    assert fsck.check(store) == []
