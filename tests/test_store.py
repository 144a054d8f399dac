"""store: staging, atomic publish with build numbers, lookup by reference, manifest updates."""

from __future__ import annotations

import ast
import hashlib
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline import store as store_module
from pipeline.errors import StoreError
from pipeline.store import (
    BUILDS,
    CHANNELS,
    FAILED,
    MANIFEST,
    MEMO,
    MEMO_MIN_BYTES,
    NIGHTLY,
    STAGING,
    TRASH,
    Artifact,
    Run,
    Store,
)
from tests.test_manifest import sample

SM89, SM86 = "sm89.rtx-1.7.1", "sm86.rtx-1.7.1"


def manifest_for(name: str, version: str, tag: str) -> dict[str, Any]:
    manifest = sample()
    manifest["recipe"].update(name=name, version=version)
    manifest["target"]["tag"] = tag
    manifest["build"]["number"] = None  # the store numbers the build when it publishes
    return manifest


def publish(store: Store, name: str = "tiny", version: str = "1.0.0", tag: str = SM89,
            engine: bytes = b"plan", run: Run | None = None) -> Artifact:
    with store.staging(name) as staged:
        (staged / "engine.plan").write_bytes(engine)
        return store.publish(name, version, tag, staged, manifest_for(name, version, tag), run)


def leftovers(store: Store) -> list[str]:
    staging = store.root / STAGING
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


# ---------------------------------------------------------------- publishing


def test_publish_numbers_builds(store: Store) -> None:
    first, second, third = publish(store), publish(store), publish(store)
    assert (first.build, second.build, third.build) == (1, 2, 3)
    assert first.path == store.root / "tiny" / "1.0.0" / SM89
    assert second.path == store.root / "tiny" / "1.0.0+2" / SM89
    assert (first.ref, second.ref, third.ref) == ("tiny@1.0.0+1", "tiny@1.0.0+2", "tiny@1.0.0+3")
    assert json.loads((second.path / MANIFEST).read_text())["build"]["number"] == 2
    assert (first.path / "engine.plan").read_bytes() == b"plan"
    assert leftovers(store) == []


def test_build_numbers_are_per_version_and_run(store: Store) -> None:
    run = Run()
    assert (publish(store, run=run).build, publish(store, tag=SM86, run=run).build) == (1, 1)
    assert publish(store, version="1.1.0").build == 1
    assert publish(store, tag=SM86).build == 2  # another run: a new number, even for a tag build 1 lacks
    assert publish(store).build == 3


def test_a_build_number_is_never_given_twice(store: Store) -> None:
    """After gc removed builds 2 and 3, the next build is 4: old reports naming +3 never meet another engine."""
    import shutil

    publish(store)
    second, third = publish(store), publish(store)
    shutil.rmtree(second.path.parent)
    shutil.rmtree(third.path.parent)
    assert publish(store).build == 4
    assert json.loads((store.root / "tiny" / BUILDS).read_text()) == {"1.0.0": 4}
    (store.root / "tiny" / BUILDS).unlink()  # a lost counter: what is on disk still counts
    assert publish(store).build == 5


def test_a_damaged_build_counter_is_one_store_error(store: Store) -> None:
    publish(store)
    (store.root / "tiny" / BUILDS).write_text("[1, 2")
    with pytest.raises(StoreError, match=r"^cannot read the build counter .*\.builds\.json: "):
        publish(store)
    assert leftovers(store) == []


def test_published_artifacts_are_readable_by_everyone(store: Store) -> None:
    assert stat.S_IMODE(publish(store).path.stat().st_mode) == 0o755


def test_build_ten_sorts_after_build_nine(store: Store) -> None:
    for _ in range(10):
        publish(store)
    artifacts = store.artifacts("tiny")
    assert [a.build for a in artifacts] == list(range(1, 11))
    assert artifacts[-1].path.parent.name == "1.0.0+10"
    assert store.resolve("tiny@1.0.0").build == 10
    assert store.resolve("tiny").build == 10


def test_versions_sort_numerically(store: Store) -> None:
    for version in ("1.10.0", "1.9.0", "1.2.0", "0.9.12"):
        publish(store, version=version)
    assert [a.version for a in store.artifacts()] == ["0.9.12", "1.2.0", "1.9.0", "1.10.0"]
    assert store.resolve("tiny").version == "1.10.0"


def test_never_overwrites(store: Store) -> None:
    first = publish(store, engine=b"first")
    publish(store, engine=b"second")
    assert (first.path / "engine.plan").read_bytes() == b"first"
    # a directory in the way (here: one without a manifest, so not an artifact) is refused, not replaced
    stale = store.root / "tiny" / "1.0.0+3" / SM86  # where the next build (3) would go
    stale.mkdir(parents=True)
    (stale / "keep.txt").write_text("mine")
    with pytest.raises(StoreError) as caught:
        publish(store, tag=SM86)
    assert str(caught.value) == f"refusing to overwrite published artifact {stale}"
    assert [p.name for p in stale.iterdir()] == ["keep.txt"]
    assert leftovers(store) == []


def test_staging_is_removed_on_exception(store: Store) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with store.staging("tiny") as staged:
            (staged / "half-written.plan").write_bytes(b"x" * 100)
            assert staged.parent == store.root / STAGING
            raise RuntimeError("boom")
    assert not staged.exists()
    assert leftovers(store) == []
    assert store.artifacts() == []


def test_staging_is_removed_on_success_without_publish(store: Store) -> None:
    with store.staging("tiny") as staged:
        (staged / "f").write_text("x")
    assert not staged.exists()


def test_unwritable_store() -> None:
    store = Store(Path("/proc/no-such-store"))
    with pytest.raises(StoreError) as caught:
        with store.staging("tiny"):
            pass
    assert str(caught.value).startswith("cannot create a staging directory in store /proc/no-such-store: ")
    assert caught.value.hint == "pick a writable store with --store DIR or TRT_PIPELINE_STORE"


def test_artifacts_ignores_what_is_not_an_artifact(store: Store) -> None:
    publish(store)
    (store.root / "tiny" / "notes").mkdir()
    (store.root / "tiny" / "2.0.0" / "half").mkdir(parents=True)  # no manifest
    (store.root / "_failed").mkdir()
    (store.root / ".staging" / "x").mkdir(parents=True)
    assert [(a.name, a.version, a.build, a.tag) for a in store.artifacts()] == [("tiny", "1.0.0", 1, SM89)]
    assert Store(store.root / "missing").artifacts() == []


# ---------------------------------------------------------------- resolving references


@pytest.fixture
def filled(store: Store) -> Store:
    run = Run()
    publish(store, run=run)  # tiny 1.0.0 sm89
    publish(store, tag=SM86, run=run)  # tiny 1.0.0 sm86, same run
    publish(store)  # tiny 1.0.0+2 sm89
    publish(store, name="other")
    return store


def test_resolve_name_is_the_newest(filled: Store) -> None:
    publish(filled, version="0.5.0")
    assert filled.resolve("tiny").path == filled.root / "tiny" / "1.0.0+2" / SM89


def test_resolve_name_at_version_is_its_newest_build(filled: Store) -> None:
    assert filled.resolve("tiny@1.0.0").path == filled.root / "tiny" / "1.0.0+2" / SM89


def test_resolve_name_at_version_plus_build(filled: Store) -> None:
    assert filled.resolve("tiny@1.0.0+2").path == filled.root / "tiny" / "1.0.0+2" / SM89
    assert filled.resolve("tiny@1.0.0+1", tag=SM86).path == filled.root / "tiny" / "1.0.0" / SM86


def test_resolve_directory(filled: Store) -> None:
    path = filled.root / "tiny" / "1.0.0" / SM86
    assert filled.resolve(str(path)) == Artifact(path, "tiny", "1.0.0", 1, SM86)


def test_resolve_with_tag(filled: Store) -> None:
    assert filled.resolve("tiny@1.0.0", tag=SM86).path == filled.root / "tiny" / "1.0.0" / SM86
    assert filled.resolve("tiny", tag=SM86).build == 1


def test_resolve_ambiguous_tags(filled: Store) -> None:
    with pytest.raises(StoreError) as caught:
        filled.resolve("tiny@1.0.0+1")
    assert str(caught.value) == f"tiny@1.0.0+1 has 2 GPU tags ({SM86}, {SM89}); pick one with --tag TAG"


def test_resolve_unknown(filled: Store) -> None:
    with pytest.raises(StoreError) as caught:
        filled.resolve("tiny@9.9.9")
    assert str(caught.value) == (f"no artifact tiny@9.9.9 in store {filled.root}; built artifacts: "
                                 "other@1.0.0, tiny@1.0.0")
    assert caught.value.hint == "see `trt-pipeline list`"
    with pytest.raises(StoreError, match=r"^no artifact tiny@1.0.0 with tag sm75.rtx-1.7.1 in store "):
        filled.resolve("tiny@1.0.0", tag="sm75.rtx-1.7.1")


def test_resolve_in_an_empty_store(store: Store) -> None:
    with pytest.raises(StoreError, match=r"; built artifacts: none$"):
        store.resolve("tiny")


# ---------------------------------------------------------------- manifests and failure logs


def test_update_manifest_replaces_the_file_atomically(store: Store) -> None:
    artifact = publish(store)
    before = (artifact.path / MANIFEST).stat().st_ino

    def passed(manifest: dict) -> None:
        manifest["validation"] = {"status": "passed", "reason": None}

    updated = store.update_manifest(artifact, passed)
    assert updated.validation.status == "passed"
    assert json.loads((artifact.path / MANIFEST).read_text()) == updated.to_dict()
    assert (artifact.path / MANIFEST).stat().st_ino != before  # a new file renamed into place, not rewritten
    assert sorted(p.name for p in artifact.path.iterdir()) == ["engine.plan", MANIFEST]  # no temp file left


def test_update_manifest_change_that_fails_leaves_it_untouched(store: Store) -> None:
    artifact = publish(store)
    text = (artifact.path / MANIFEST).read_text()

    def broken(manifest: dict) -> None:
        manifest["validation"]["status"] = "passed"
        raise ValueError("half-way")

    with pytest.raises(ValueError):
        store.update_manifest(artifact, broken)
    assert (artifact.path / MANIFEST).read_text() == text


def test_unreadable_manifest_is_a_store_error(store: Store) -> None:
    artifact = publish(store)
    (artifact.path / MANIFEST).write_text("{not json")
    with pytest.raises(StoreError, match=r"^cannot read .*manifest.json: "):
        artifact.manifest()


def test_keep_failure_log(store: Store, tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    log.write_text("stage serialize failed\n")
    kept = store.keep_failure_log("tiny", log)
    assert kept.parent == store.root / "_failed"
    assert kept.name.startswith("tiny-") and kept.name.endswith(f"-{os.getpid()}.log")
    assert kept.read_text() == "stage serialize failed\n"
    assert store.artifacts() == []


def test_failure_logs_in_the_same_second_are_all_kept(store: Store, tmp_path: Path) -> None:
    logs = []
    for index in range(3):
        log = tmp_path / f"build{index}.log"
        log.write_text(f"failure {index}\n")
        logs.append(store.keep_failure_log("tiny", log))
    assert len(set(logs)) == 3
    assert [p.read_text() for p in logs] == ["failure 0\n", "failure 1\n", "failure 2\n"]


# ---------------------------------------------------------------- paths under the root


def test_artifact_dir_is_where_publish_puts_a_build(store: Store) -> None:
    first, second = publish(store), publish(store)
    assert store.artifact_dir("tiny", "1.0.0", 1, SM89) == store.root / "tiny" / "1.0.0" / SM89 == first.path
    assert store.artifact_dir("tiny", "1.0.0", 2, SM89) == store.root / "tiny" / "1.0.0+2" / SM89 == second.path
    assert store.artifact_dir("tiny", "1.0.0", 3, SM89) == store.root / "tiny" / "1.0.0+3" / SM89  # unbuilt yet


def test_published_is_the_artifact_only_once_its_manifest_is_in_place(store: Store) -> None:
    artifact = publish(store)
    assert store.published("tiny", "1.0.0", 1, SM89) == artifact
    assert store.published("tiny", "1.0.0", 1, SM86) is None
    assert store.published("tiny", "1.0.0", 2, SM89) is None
    half = store.artifact_dir("tiny", "1.0.0", 2, SM89)
    half.mkdir(parents=True)  # a directory without a manifest is not an artifact
    assert store.published("tiny", "1.0.0", 2, SM89) is None


def test_channels_dir_is_beside_the_versions_and_not_a_version(store: Store) -> None:
    artifact = publish(store)
    assert store.channels_dir("tiny") == store.root / "tiny" / "_channels"
    store.channels_dir("tiny").mkdir()
    (store.channels_dir("tiny") / f"{SM89}.json").write_text("{}")
    assert store.artifacts() == [artifact] and store.recipes() == ["tiny"]


def test_discard_renames_out_of_view_then_deletes(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second, other = publish(store), publish(store), publish(store, tag=SM86, run=Run(1))
    seen: list[tuple[str, str]] = []
    rename = os.rename

    def watched(source: Any, dest: Any) -> None:
        seen.append((str(source), str(dest)))
        assert (Path(source) / MANIFEST).is_file()  # whole until the one rename
        rename(source, dest)
        assert not Path(source).exists()  # then gone from view at once

    monkeypatch.setattr(os, "rename", watched)
    with store.lock("tiny"):
        store.discard(second)
    ((source, dest),) = seen
    trash = Path(dest).parent
    assert source == str(second.path) and Path(dest).name == SM89
    assert trash.parent == store.root / STAGING  # inside the store: a rename, never a copy
    assert trash.name.startswith(f"_trash-{os.getpid()}-tiny-")  # the owner's pid: a dead owner's leftovers show
    assert leftovers(store) == []
    assert not (store.root / "tiny" / "1.0.0+2").exists()  # the emptied version directory goes too
    with store.lock("tiny"):
        store.discard(first)
    assert (store.root / "tiny" / "1.0.0").is_dir()  # another GPU tag of the version remains
    assert store.artifacts() == [other] and len(seen) == 2


def test_discarding_what_is_gone_is_one_store_error_and_leaves_no_trash(store: Store) -> None:
    artifact = publish(store)
    with store.lock("tiny"):
        store.discard(artifact)
        with pytest.raises(StoreError, match=rf"^cannot remove {artifact.path}: No such file or directory$"):
            store.discard(artifact)
    assert leftovers(store) == []


def test_new_night_claims_a_fresh_directory_each_time(store: Store) -> None:
    first, second, third = (store.new_night("20250101T000000Z") for _ in range(3))
    assert first == store.root / "_nightly" / "20250101T000000Z"
    assert (second.name, third.name) == ("20250101T000000Z-2", "20250101T000000Z-3")
    assert all(p.is_dir() and not any(p.iterdir()) for p in (first, second, third))
    assert store.recipes() == []  # nights are not recipes


def test_new_night_in_an_unwritable_store_is_one_store_error() -> None:
    with pytest.raises(StoreError, match=r"^cannot create /proc/x/_nightly/20250101T000000Z: ") as caught:
        Store(Path("/proc/x")).new_night("20250101T000000Z")
    assert caught.value.hint == "pick a writable store with --store DIR or TRT_PIPELINE_STORE"


def test_nights_are_the_night_directories_oldest_first(store: Store) -> None:
    assert store.nights() == []  # a missing store has none
    later, earlier = store.new_night("20250102T000000Z"), store.new_night("20250101T000000Z")
    (store.root / "_nightly" / "notes.txt").write_text("not a night")
    (store.root / "_nightly" / ".hidden").mkdir()
    assert store.nights() == [earlier, later]


# ---------------------------------------------------------------- no other module spells a path under the root

PACKAGE = Path(store_module.__file__).resolve().parent
NAMES = {BUILDS, CHANNELS, FAILED, MANIFEST, MEMO, NIGHTLY, STAGING, TRASH}  # what only the Store spells


def root_paths(source: str) -> list[tuple[int, str]]:
    """(line, code) for every use of a store's `.root` other than printing it (`str(...)` or an f-string), and
    every string that is one of the store's own file or directory names: paths under the root are the Store's."""
    tree = ast.parse(source)
    allowed = {id(node.args[0]) for node in ast.walk(tree) if isinstance(node, ast.Call)
               and isinstance(node.func, ast.Name) and node.func.id == "str" and len(node.args) == 1}
    allowed |= {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.FormattedValue)}
    found = []
    for node in ast.walk(tree):
        owner = node.value if isinstance(node, ast.Attribute) else None
        named = getattr(owner, "id", None) or getattr(owner, "attr", None) or ""
        if isinstance(node, ast.Attribute) and node.attr == "root" and "store" in named and id(node) not in allowed:
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Constant) and node.value in NAMES:
            found.append((node.lineno, repr(node.value)))
    return sorted(found)


def test_the_root_check_sees_joins_and_spellings_but_not_messages() -> None:
    source = """\
a = store.root / name / "1.0.0"
b = os.path.join(self.store.root, name)
root = store.root
c = Path(store.root).glob("*")
d = base / "_nightly"
print(f"in store {store.root}", str(store.root), tree.root / "x", "see STORE/_nightly/<time>/")
"""
    assert root_paths(source) == [(1, "store.root"), (2, "self.store.root"), (3, "store.root"), (4, "store.root"),
                                  (5, "'_nightly'")]


def test_only_the_store_joins_paths_onto_the_store_root() -> None:
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}: {code}" for path in sorted(PACKAGE.rglob("*.py"))
             if path != PACKAGE / "store.py" for line, code in root_paths(path.read_text())]
    assert found == [], "paths under the store root belong to pipeline/store.py; ask the Store for them:\n" + \
        "\n".join(found)


# ---------------------------------------------------------------- two processes at once


def _publish_many(root: str, barrier: Any, count: int, results: Any) -> None:
    store = Store(Path(root))
    barrier.wait(timeout=60)
    results.put([publish(store).build for _ in range(count)])


def test_concurrent_publishers_get_distinct_build_numbers(store: Store) -> None:
    ctx = multiprocessing.get_context("spawn")  # no fork: the test process has TensorRT's threads loaded
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_publish_many, args=(str(store.root), barrier, 5, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    builds = results.get(timeout=120) + results.get(timeout=120)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert sorted(builds) == list(range(1, 11))
    assert [a.build for a in store.artifacts("tiny")] == list(range(1, 11))
    assert leftovers(store) == []


def test_a_directory_whose_manifest_is_not_ours_is_a_store_error(tmp_path: Path, store: Store) -> None:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"recipe": {}}')
    with pytest.raises(StoreError, match=r"^damaged manifest .*/elsewhere/manifest.json: no field 'recipe.name'$"):
        store.resolve(str(folder))


def test_an_unwritable_store_is_a_store_error() -> None:
    with pytest.raises(StoreError, match=r"^cannot write to store /proc/no-store: "):
        with Store(Path("/proc/no-store")).lock("tiny"):
            pass


# ---------------------------------------------------------------- exact references, tags, bad input


def test_every_ref_is_exact_and_resolves_to_itself(filled: Store) -> None:
    for artifact in filled.artifacts():
        assert "+" in artifact.ref
        assert filled.resolve(artifact.ref, artifact.tag) == artifact
    assert filled.resolve("tiny@1.0.0+1", SM89).path == filled.root / "tiny" / "1.0.0" / SM89  # +1: plain dir


def test_a_short_tag_is_accepted_when_unique_else_the_full_tags_are_suggested(filled: Store) -> None:
    assert filled.resolve("tiny@1.0.0+1", tag="sm89").tag == SM89
    assert filled.resolve("tiny@1.0.0+1", tag="sm86.rtx").tag == SM86
    publish(filled, tag="sm89.rtx-1.8.0")  # tiny@1.0.0+3: sm89 is now ambiguous for plain 'tiny'
    publish(filled, version="1.0.0", tag=SM89)
    with pytest.raises(StoreError) as caught:
        filled.resolve("tiny@1.0.0+2", tag="sm8")
    assert str(caught.value) == (f"no artifact tiny@1.0.0+2 with tag sm8 in store {filled.root}; "
                                 f"tiny@1.0.0+2 has tag(s) {SM89}")
    with pytest.raises(StoreError, match=r"; did you mean sm89\.rtx-1\.7\.1 or sm89\.rtx-1\.8\.0\? "):
        filled.resolve("tiny", tag="sm89")


def test_a_version_directory_asks_for_a_tag(filled: Store) -> None:
    folder = filled.root / "tiny" / "1.0.0"
    with pytest.raises(StoreError) as caught:
        filled.resolve(str(folder))
    assert str(caught.value) == (f"{folder} is a version directory with 2 GPU tag(s) ({SM86}, {SM89}); pick one "
                                 f"with --tag TAG or name the tag directory, e.g. {folder / SM86}")
    assert filled.resolve(str(folder), tag="sm86").path == folder / SM86


@pytest.mark.parametrize("ref", ["tiny@", "@1.0.0", "tiny@1.0", "tiny@1.0.0+", "tiny@1.0.0+x"])
def test_a_malformed_reference_is_one_error(filled: Store, ref: str) -> None:
    with pytest.raises(StoreError) as caught:
        filled.resolve(ref)
    assert str(caught.value).startswith(f"'{ref}' is not an artifact reference; expected NAME, NAME@VERSION ")


def test_require_names_the_recipes_and_a_close_one(filled: Store) -> None:
    assert filled.require("tiny") == "tiny"
    with pytest.raises(StoreError) as caught:
        filled.require("tinny")
    assert str(caught.value) == f"no recipe 'tinny' in store {filled.root}; recipes: other, tiny; did you mean 'tiny'?"
    with pytest.raises(StoreError, match=r"; recipes: none$"):
        Store(filled.root / "missing").require("tiny")


def test_a_file_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=r"^store .*/file is not a directory$"):
        Store(tmp_path / "file").artifacts()


@pytest.mark.parametrize("text", ["[]", '"manifest"'])
def test_a_manifest_that_is_not_an_object_is_damaged(store: Store, text: str) -> None:
    artifact = publish(store)
    (artifact.path / MANIFEST).write_text(text)
    with pytest.raises(StoreError, match=r"^damaged manifest .*manifest\.json: not a JSON object$"):
        artifact.manifest()


def test_an_update_that_would_damage_the_manifest_is_refused(store: Store) -> None:
    artifact = publish(store)
    text = (artifact.path / MANIFEST).read_text()
    with pytest.raises(StoreError) as caught:
        store.update_manifest(artifact, lambda manifest: manifest.pop("engine"))
    assert str(caught.value) == f"damaged manifest {artifact.path / MANIFEST}: no field 'engine'"
    assert (artifact.path / MANIFEST).read_text() == text


def test_a_run_allocated_up_front_is_shared_across_publishers(store: Store) -> None:
    run = store.new_run("tiny", "1.0.0")
    assert (run.build, store.next_build("tiny", "1.0.0")) == (1, 2)
    assert publish(store, run=Run(run.build)).ref == publish(store, tag=SM86, run=Run(run.build)).ref == "tiny@1.0.0+1"


# ---------------------------------------------------------------- memo: remembered file hashes


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """The files these tests write are seconds old at most: remember them anyway (except where it is tested)."""
    if "racy" not in request.node.name:
        monkeypatch.setattr(store_module, "RACY_S", 0)


def big(start: bytes) -> bytes:
    """`start`, padded to the size from which Store.file_sha256 remembers hashes."""
    return start + b"\0" * MEMO_MIN_BYTES


def stamp_of(path: Path) -> list[int]:
    found = path.stat()
    return [found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns]


def test_file_sha256_is_the_hash_of_the_bytes_remembered_with_the_stamp(store: Store, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(big(b"model bytes "))
    expected = hashlib.sha256(model.read_bytes()).hexdigest()
    assert store.file_sha256(model) == expected
    assert store.memo("hashes") == {str(model.resolve()): {"stamp": stamp_of(model), "sha256": expected}}
    assert json.loads((store.root / MEMO / "hashes.json").read_text()) == store.memo("hashes")


def test_an_unchanged_file_is_not_read_again(store: Store, tmp_path: Path) -> None:
    """Proof: a made-up hash in the memo is what comes back, as long as the file's stamp matches it."""
    model = tmp_path / "model.onnx"
    model.write_bytes(big(b"model bytes"))
    store.file_sha256(model)
    memo = store.root / MEMO / "hashes.json"
    entries = json.loads(memo.read_text())
    entries[str(model.resolve())]["sha256"] = "f" * 64
    memo.write_text(json.dumps(entries))
    store = Store(store.root)  # a later run: the memo is read once per Store
    assert store.file_sha256(model) == "f" * 64
    assert store.file_sha256(model, remember=False) == "f" * 64  # a dry run uses the memo too
    assert store.file_sha256(tmp_path / "." / "model.onnx") == "f" * 64  # one entry per file, however it is named


def test_a_rewritten_file_is_hashed_again_even_with_its_old_mtime(store: Store, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(big(b"first version"))
    store.file_sha256(model)
    before = model.stat()
    with open(model, "r+b") as handle:  # in place: same inode, same size
        handle.write(b"other version")
    for _ in range(100):  # utime sets the ctime to now; on a coarse clock wait until it differs from the first
        os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))
        if model.stat().st_ctime_ns != before.st_ctime_ns:
            break
        time.sleep(0.01)
    assert stamp_of(model)[:3] == [before.st_ino, before.st_size, before.st_mtime_ns]  # only the ctime changed
    assert store.file_sha256(model) == hashlib.sha256(b"other version" + big(b"first version")[13:]).hexdigest()
    assert store.memo("hashes")[str(model.resolve())]["stamp"] == stamp_of(model)


def test_remember_false_writes_no_memo(store: Store, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(big(b"model bytes"))
    assert store.file_sha256(model, remember=False) == hashlib.sha256(big(b"model bytes")).hexdigest()
    assert not store.root.exists()
    assert store.memo("hashes") == {}


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"hashes"', ""])
def test_a_damaged_memo_is_empty_and_then_replaced(store: Store, tmp_path: Path, text: str) -> None:
    (store.root / MEMO).mkdir(parents=True)
    (store.root / MEMO / "hashes.json").write_text(text)
    assert store.memo("hashes") == {}
    model = tmp_path / "model.onnx"
    model.write_bytes(big(b"model bytes"))
    assert store.file_sha256(model) == hashlib.sha256(big(b"model bytes")).hexdigest()
    assert json.loads((store.root / MEMO / "hashes.json").read_text()) == {
        str(model.resolve()): {"stamp": stamp_of(model), "sha256": hashlib.sha256(big(b"model bytes")).hexdigest()}}


def test_remember_adds_one_entry_per_kind_and_leaves_no_temp_file(store: Store) -> None:
    assert store.memo("plans") == {}
    store.remember("plans", "a", {"backend": "tensorrt-rtx"})
    store.remember("plans", "b", [1, 2])
    store.remember("plans", "a", "replaced")
    store.remember("hashes", "c", 3)
    assert store.memo("plans") == {"a": "replaced", "b": [1, 2]}
    assert store.memo("hashes") == {"c": 3}
    assert sorted(p.name for p in (store.root / MEMO).iterdir()) == ["hashes.json", "plans.json"]


def test_remembering_in_a_store_that_cannot_be_written_is_skipped(tmp_path: Path) -> None:
    """Best effort: a store that cannot hold a memo (here a regular file) still hashes, and remembers nothing."""
    (tmp_path / "file").write_text("not a directory")
    store = Store(tmp_path / "file")
    store.remember("plans", "a", 1)
    assert Store(tmp_path / "file").memo("plans") == {}
    model = tmp_path / "model.onnx"
    model.write_bytes(big(b"model bytes"))
    assert store.file_sha256(model) == hashlib.sha256(big(b"model bytes")).hexdigest()
    assert (tmp_path / "file").read_text() == "not a directory"


def test_small_files_are_hashed_every_time_not_remembered(store: Store, tmp_path: Path) -> None:
    small = tmp_path / "small.onnx"
    small.write_bytes(b"x" * (MEMO_MIN_BYTES - 1))
    assert store.file_sha256(small) == hashlib.sha256(small.read_bytes()).hexdigest()
    assert store.memo("hashes") == {} and not store.root.exists()


def test_a_file_changed_within_the_racy_window_is_hashed_but_not_remembered(store: Store, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A same-size rewrite inside one timestamp tick would keep the stamp: a file this fresh is not trusted yet."""
    monkeypatch.setattr(store_module, "RACY_FINE_S", 60)  # however slow this machine is, the file is fresh
    model = tmp_path / "model.onnx"
    model.write_bytes(big(b"model bytes"))
    assert store.file_sha256(model) == hashlib.sha256(big(b"model bytes")).hexdigest()
    assert store.memo("hashes") == {}


def test_the_racy_window_is_short_where_timestamps_are_fine_and_long_where_they_are_whole_seconds(
        store: Store, tmp_path: Path) -> None:
    """A just-published engine is remembered by the next run a moment later (ext4 keeps nanoseconds), not only
    two seconds later; a file whose mtime is a whole second (FAT, some network file systems) waits the two."""
    fine, coarse = tmp_path / "fine.plan", tmp_path / "coarse.plan"
    fine.write_bytes(big(b"fine"))
    coarse.write_bytes(big(b"coarse"))
    second = int(time.time()) * 10**9
    os.utime(coarse, ns=(second, second))
    assume_fine = fine.stat().st_mtime_ns % 10**9 != 0
    time.sleep(store_module.RACY_FINE_S * 2)
    store.file_sha256(fine)
    store.file_sha256(coarse)
    assert str(coarse.resolve()) not in store.memo("hashes")
    assert (str(fine.resolve()) in store.memo("hashes")) == assume_fine


def test_a_file_that_changes_while_it_is_hashed_is_not_remembered(store: Store, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(big(b"first"))
    real = store_module.file_sha256

    def rewritten_meanwhile(path: Path) -> str:
        digest = real(path)
        path.write_bytes(big(b"other"))  # e.g. an export finishing while the build reads the model
        return digest

    monkeypatch.setattr(store_module, "file_sha256", rewritten_meanwhile)
    store.file_sha256(model)
    assert store.memo("hashes") == {}


# ---------------------------------------------------------------- leftovers, reclaim, leases


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited."""
    process = multiprocessing.get_context("spawn").Process(target=int)
    process.start()
    process.join()
    return process.pid


def test_reclaim_removes_what_dead_processes_left_and_nothing_else(store: Store, dead_pid: int) -> None:
    artifact = publish(store)
    staging = store.root / STAGING
    dead = [staging / f"tiny-sm89-{dead_pid}-abcd1234", staging / f"{TRASH}-{dead_pid}-tiny-abcd1234",
            staging / f"_lease-{dead_pid}-tiny-abcd1234"]
    for path in dead:
        path.mkdir(parents=True)
    temps = [store.root / "tiny" / f".{BUILDS}.{dead_pid}.tmp", staging / f".manifest.json.0a1b2c3d.{dead_pid}.tmp"]
    for path in temps:
        path.write_text("{")
    empty = store.root / "tiny" / "2.0.0+3"
    empty.mkdir()
    live, unknown = staging / f"tiny-{os.getpid()}-abcd1234", staging / "someone-elses"
    live.mkdir()
    unknown.mkdir()
    mine = store.root / "tiny" / f".{BUILDS}.{os.getpid()}.tmp"
    mine.write_text("{")

    found = {(left.kind, left.path, left.garbage) for left in store.leftovers()}
    assert found == {*(("staging", p, True) for p in dead), *(("temp", p, True) for p in temps),
                     ("empty", empty, True), ("staging", unknown, False)}
    assert sorted(str(left.path) for left in store.reclaim()) == sorted(str(p) for p in [*dead, *temps, empty])
    assert store.leftovers() == [next(left for left in store.leftovers() if left.path == unknown)]
    assert live.is_dir() and mine.is_file() and (artifact.path / MANIFEST).is_file()


def test_reclaim_in_a_missing_store_does_nothing(tmp_path: Path) -> None:
    assert Store(tmp_path / "missing").reclaim() == [] and not (tmp_path / "missing").exists()


def test_a_lease_holds_a_build_for_a_live_process_only(store: Store, dead_pid: int) -> None:
    artifact = publish(store)
    with store.lease(artifact):
        assert store.leased("tiny") == {("1.0.0", 1, SM89): os.getpid()}
        assert store.leased("other") == {}
    assert store.leased("tiny") == {} and leftovers(store) == []
    held = store.root / STAGING / f"_lease-{dead_pid}-tiny-abcd1234"
    held.mkdir()
    (held / store_module.LEASED).write_text(json.dumps({"version": "1.0.0", "build": 1, "tag": SM89}))
    assert store.leased("tiny") == {}  # its owner is gone


def test_a_lease_on_a_build_gone_meanwhile_is_one_store_error(store: Store) -> None:
    artifact = publish(store)
    with store.lock("tiny"):
        store.discard(artifact)
    with pytest.raises(StoreError, match=r"^tiny@1.0.0\+1 \[sm89.rtx-1.7.1\] is no longer in store .*gc\)$"):
        with store.lease(artifact):
            pass
    assert leftovers(store) == []


def test_replace_json_inside_an_artifact_writes_its_temp_file_in_staging(store: Store) -> None:
    artifact = publish(store)
    store.replace_json(artifact.path / "validation.json", {"status": "passed"})
    assert json.loads((artifact.path / "validation.json").read_text()) == {"status": "passed"}
    assert sorted(p.name for p in artifact.path.iterdir()) == ["engine.plan", MANIFEST, "validation.json"]
    assert leftovers(store) == []


def test_overlaps_is_the_root_what_is_under_it_and_what_holds_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "a" / "store")
    assert store.overlaps(tmp_path / "a" / "store") and store.overlaps(tmp_path / "a" / "store" / "x" / "y")
    assert store.overlaps(tmp_path / "a") and store.overlaps(tmp_path / "a" / "store" / ".." / "store")
    assert not store.overlaps(tmp_path / "a" / "other") and not store.overlaps(tmp_path / "a" / "store-2")


# ---------------------------------------------------------------- owners: flock, not only the pid

HOLDER = """
import sys
from pathlib import Path
from pipeline.store import Store
store = Store(Path(sys.argv[1]))
with store.staging("two-input") as staged, store.lease(store.resolve("two-input@1.0.0")):
    (staged / "engine.plan").write_bytes(b"half")
    print(staged.name, flush=True)
    sys.stdin.read()  # until the test closes it
"""


def exited() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_live_owner_whose_pid_means_nothing_here_keeps_its_staging_and_lease(store: Store) -> None:
    """An owner in another pid namespace (or on another host sharing the store) has a pid that is dead here: it
    holds its entries' flock, so reclaim leaves them and gc honours its lease; once it is gone they are garbage."""
    publish(store, name="two-input")
    publish(store, name="two")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store.root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        staged = holder.stdout.readline().strip()
        dead = exited()
        for entry in leftovers(store):  # the pid they carry now names no process here
            os.rename(store.root / STAGING / entry, store.root / STAGING / entry.replace(str(holder.pid), str(dead)))
        moved = leftovers(store)
        assert sorted(moved) == sorted([staged.replace(str(holder.pid), str(dead)), *[
            e for e in moved if e.startswith(f"_lease-{dead}-two-input-")]]) and len(moved) == 2
        assert store.reclaim() == [] and leftovers(store) == moved
        assert store.leased("two-input") == {("1.0.0", 1, SM89): dead}
        assert store.leased("two") == {}  # exact: a lease of two-input is not one of two
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    finally:
        holder.kill()
        holder.wait()
    assert store.leased("two-input") == {}
    assert sorted(left.path.name for left in store.reclaim()) == moved and leftovers(store) == []


def test_an_entry_of_an_owner_without_flock_still_counts_while_its_pid_lives(store: Store) -> None:
    """Entries made by an older version hold no flock: their pid still decides."""
    publish(store, name="tiny")
    lease = store.root / STAGING / f"_lease-{os.getpid()}-tiny-abcd1234"
    lease.mkdir(parents=True)
    (lease / "artifact.json").write_text(json.dumps({"version": "1.0.0", "build": 1, "tag": SM89}))
    assert store.leased("tiny") == {("1.0.0", 1, SM89): os.getpid()} and store.reclaim() == []
    dead = exited()
    lease.rename(lease.with_name(f"_lease-{dead}-tiny-abcd1234"))
    assert store.leased("tiny") == {} and [left.path.name for left in store.reclaim()] == [
        f"_lease-{dead}-tiny-abcd1234"]
