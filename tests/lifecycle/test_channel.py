"""channel: per-tag channel files and the append-only history, written under the store's lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import StoreError
from pipeline.lifecycle import channel
from pipeline.store import Store
from tests._lifecycle import (
    SM86,
    SM89,
    TINY,
    build,
    copy_store,
    race,
    race_channel,
    write,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Store:
    """tiny@1.0.0 really built for sm86 and sm89, and tiny@1.0.0+2 for sm89."""
    root = tmp_path_factory.mktemp("channel")
    recipe = write(root / "tiny.yaml", TINY, models_dir / "tiny.onnx")
    store = Store(root / "store")
    build(recipe, store, ("sm86", "sm89"))
    build(recipe, store, ("sm89",), force=True)
    return store


@pytest.fixture
def fresh(built: Store, tmp_path: Path) -> Store:
    """A private copy of the built store, for tests that write channels."""
    return copy_store(built, tmp_path / "copy")


def test_set_writes_the_channel_file_and_one_history_line(fresh: Store) -> None:
    built = fresh
    artifact = built.resolve("tiny@1.0.0+1", SM89)
    entry = channel.pointer(artifact, since="2026-11-26T00:00:00Z", by="ana@ci")
    previous = channel.set_(built, "tiny", SM89, "candidate", entry, {"at": "2026-11-26T00:00:00Z", "by": "ana@ci"})

    assert previous is None
    path = built.root / "tiny" / "_channels" / f"{SM89}.json"
    written = json.loads(path.read_text())
    event_id = written["events"]["candidate"]
    assert written == {"name": "tiny", "tag": SM89, "channels": {"candidate": entry}, "events": {"candidate": event_id}}
    assert entry == {"ref": "tiny@1.0.0+1", "version": "1.0.0", "build": 1, "tag": SM89,
                     "engine_sha256": artifact.manifest().engine.sha256,
                     "since": "2026-11-26T00:00:00Z", "by": "ana@ci"}
    assert channel.read(built, "tiny", SM89) == {"candidate": entry}
    assert channel.history(built, "tiny") == [{"at": "2026-11-26T00:00:00Z", "by": "ana@ci", "name": "tiny",
                                               "tag": SM89, "channel": "candidate", "artifact": entry,
                                               "previous": None, "id": event_id}]
    lines = (built.root / "tiny" / "_channels" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line).get("commit") for line in lines] == [None, event_id]  # the event, then its commit
    assert channel.resolve(built, "tiny", entry) == artifact


def test_history_is_appended_never_rewritten(fresh: Store) -> None:
    store = fresh
    first, second = store.resolve("tiny@1.0.0+1", SM89), store.resolve("tiny@1.0.0+2", SM89)
    channel.set_(store, "tiny", SM89, "production", channel.pointer(first), {"at": "t1", "by": "a"})
    before = (store.root / "tiny" / "_channels" / "history.jsonl").read_bytes()
    previous = channel.set_(store, "tiny", SM89, "production", channel.pointer(second), {"at": "t2", "by": "b"})

    after = (store.root / "tiny" / "_channels" / "history.jsonl").read_bytes()
    assert after.startswith(before) and after.count(b"\n") == before.count(b"\n") + 2  # the event and its commit
    assert previous == channel.pointer(first)
    events = channel.history(store, "tiny")
    assert [(e["by"], e["artifact"]["ref"], e["previous"] and e["previous"]["ref"]) for e in events] == [
        ("a", "tiny@1.0.0+1", None), ("b", "tiny@1.0.0+2", "tiny@1.0.0+1")]
    assert channel.read(store, "tiny", SM89)["production"]["ref"] == "tiny@1.0.0+2"


def test_channels_are_per_tag_and_listed_by_what_they_point_at(fresh: Store) -> None:
    store = fresh
    sm89 = store.resolve("tiny@1.0.0+1", SM89)
    channel.set_(store, "tiny", SM89, "production", channel.pointer(sm89), {"at": "t"})
    channel.set_(store, "tiny", SM89, "candidate", channel.pointer(store.resolve("tiny@1.0.0+2", SM89)), {"at": "t"})
    channel.set_(store, "tiny", SM86, "candidate", channel.pointer(sm89), {"at": "t"})  # an engine reused on sm86

    assert channel.tags(store, "tiny") == [SM86, SM89]
    assert [(t, c, e["ref"]) for t, c, e in channel.everything(store, "tiny")] == [
        (SM86, "candidate", "tiny@1.0.0+1"), (SM89, "candidate", "tiny@1.0.0+2"), (SM89, "production", "tiny@1.0.0+1")]
    assert channel.pointing_at(store, "tiny") == {("1.0.0", 1, SM89): [f"candidate@{SM86}", "production"],
                                                  ("1.0.0", 2, SM89): ["candidate"]}
    # the channel directory is not mistaken for a version by the store
    assert sorted((a.ref, a.tag) for a in store.artifacts()) == [
        ("tiny@1.0.0+1", SM86), ("tiny@1.0.0+1", SM89), ("tiny@1.0.0+2", SM89)]


def test_reading_nothing_gives_empty_results(built: Store) -> None:
    assert channel.read(built, "tiny", "sm120.rtx-1.7.1") == {}
    assert channel.history(built, "nothing") == []
    assert channel.pointing_at(built, "nothing") == {}


def test_bad_channel_names_and_dangling_pointers_are_one_line_errors(built: Store) -> None:
    with pytest.raises(StoreError) as error:
        channel.set_(built, "tiny", SM89, "Prod uction", {}, {})
    assert str(error.value) == ("invalid channel name 'Prod uction': use lower-case letters, digits, '-' or '_', "
                                "e.g. candidate or production")
    with pytest.raises(StoreError) as error:
        channel.resolve(built, "tiny", {"ref": "tiny@9.9.9", "version": "9.9.9", "build": 1, "tag": SM89})
    assert str(error.value) == f"channel points at tiny@9.9.9 {SM89}, which is not in store {built.root}"


def test_a_corrupt_channel_file_is_reported_not_overwritten(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    folder = store.root / "tiny" / "_channels"
    folder.mkdir(parents=True)
    (folder / f"{SM89}.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"^cannot read channel file .*sm89\.rtx-1\.7\.1\.json: "):
        channel.set_(store, "tiny", SM89, "candidate", {"version": "1.0.0", "build": 1, "tag": SM89}, {})
    assert (folder / f"{SM89}.json").read_text() == "{not json"


def test_racing_writers_lose_no_update(tmp_path: Path) -> None:
    """Two processes updating the same tag file 25 times each: every update and every history line survives."""
    store = Store(tmp_path / "store")
    (store.root / "tiny" / "1.0.0" / SM89).mkdir(parents=True)
    (store.root / "tiny" / "1.0.0" / SM89 / "manifest.json").write_text("{}")  # what the pointers name
    race(race_channel, [(str(store.root), SM89, prefix, 25) for prefix in ("a", "b")], timeout=60)

    names = sorted(channel.read(store, "tiny", SM89))
    assert names == sorted(f"{p}{i}" for p in "ab" for i in range(25))
    events = channel.history(store, "tiny")
    assert len(events) == 50
    assert sorted(e["channel"] for e in events) == names


def test_a_build_removed_after_it_was_resolved_is_not_pointed_at(fresh: Store) -> None:
    """promote resolves outside the lock; a gc that removed the build meanwhile makes set_ refuse inside it."""
    import shutil

    artifact = fresh.resolve("tiny@1.0.0+2", SM89)
    entry = channel.pointer(artifact)
    shutil.rmtree(artifact.path)  # what gc does between the promotion's resolve and its channel update
    with pytest.raises(StoreError) as error:
        channel.set_(fresh, "tiny", SM89, "candidate", entry, {"at": "t"})
    assert str(error.value) == (f"cannot point candidate of {SM89} at tiny@1.0.0+2 [{SM89}]: it is no longer in "
                                f"store {fresh.root} (removed meanwhile, e.g. by gc); channel unchanged")
    assert channel.read(fresh, "tiny", SM89) == {} and channel.history(fresh, "tiny") == []
