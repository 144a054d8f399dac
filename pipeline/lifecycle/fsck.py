"""fsck: check a whole store, and remove what is provably garbage.

Checked: every artifact's manifest parses and its engine matches it (size, sha256); every channel points at a
published build with the engine it recorded, and is the last event of its channel in the history; every build the
history names still exists. Garbage (what `repair` removes): staging, trash and lease directories and
`.<name>.<pid>.tmp` files of processes that are gone, empty version directories (Store.leftovers, which every
writing run reclaims too), hash-memo entries of files gone or changed, and a history's torn last line (a write
that never finished: it never counted, and the next promotion cuts it off too).
Nothing else is ever removed: a damaged artifact, a broken channel or a directory of unknown owner is reported
only (the user decides).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.lifecycle import channel as channels
from pipeline.store import HASHES, Leftover, Store


@dataclass(frozen=True)
class Problem:
    kind: str  # damaged | incomplete | channel | history | torn | staging | temp | empty | memo
    where: str  # a path (a memo entry: the file's), or 'NAME channel C of TAG'
    message: str
    garbage: bool = False  # `repair` removes it

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "where": self.where, "message": self.message, "garbage": self.garbage}


def check(store: Store) -> list[Problem]:
    """Every problem in the store, artifacts first, then channels and history, then leftovers."""
    store.recipes()  # a regular file given as the store is a StoreError
    return [*_artifacts(store), *_channels(store), *_leftovers(store)]


def _artifacts(store: Store) -> Iterator[Problem]:
    for artifact in store.artifacts():
        try:
            problem = store.engine_problem(artifact)
        except PipelineError as error:
            problem = str(error)
        if problem:
            yield Problem("damaged", str(artifact.path), f"damaged artifact {artifact.ref} [{artifact.tag}]: {problem}")
    for name in store.recipes():
        for path in store.unpublished(name):
            yield Problem("incomplete", str(path), "a directory without a manifest among the builds (not an artifact)")


def _channels(store: Store) -> Iterator[Problem]:
    for name in store.recipes():
        try:
            half = channels.torn(store, name)
        except PipelineError as error:
            half = None
            yield Problem("history", name, str(error))
        if half:
            yield Problem("torn", str(half[0]), f"a half-written last line ({half[1]} bytes) of a write that never "
                                                "finished; it does not count", garbage=True)
        try:
            events = channels.history(store, name)
            current = list(channels.everything(store, name))
        except PipelineError as error:
            yield Problem("channel", name, str(error))
            continue
        last: dict[tuple[str, str], dict] = {}
        for event in events:
            last[(event.get("tag"), event.get("channel"))] = event.get("artifact") or {}
            named = event.get("artifact") or {}
            if named and store.published(name, named["version"], named["build"], named["tag"]) is None:
                yield Problem("history", f"{name} history",
                              f"{event.get('at', '?')}: {named.get('ref')} [{named['tag']}] (promoted to "
                              f"{event.get('channel')} of {event.get('tag')}) is not in the store")
        for tag, channel, entry in current:
            where = f"{name} channel {channel} of {tag}"
            yield from _pointer(store, name, where, entry, last.get((tag, channel)))


def _pointer(store: Store, name: str, where: str, entry: dict, recorded: dict | None) -> Iterator[Problem]:
    same = ("version", "build", "tag")
    if recorded is None:
        yield Problem("channel", where, f"points at {entry.get('ref')} [{entry.get('tag')}], which no history "
                                        "event records")
    elif tuple(recorded.get(k) for k in same) != tuple(entry.get(k) for k in same):
        yield Problem("channel", where, f"points at {entry.get('ref')} [{entry.get('tag')}], but its last history "
                                        f"event says {recorded.get('ref')} [{recorded.get('tag')}]")
    artifact = store.published(name, entry.get("version"), entry.get("build"), entry.get("tag"))
    if artifact is None:
        yield Problem("channel", where, f"points at {entry.get('ref')} [{entry.get('tag')}], which is not in the store")
        return
    try:
        sha256 = artifact.manifest().engine.sha256
    except PipelineError:  # reported with the artifact
        return
    if sha256 != entry.get("engine_sha256"):
        yield Problem("channel", where, f"{artifact.ref} [{artifact.tag}] has engine sha256 {sha256[:12]}, the "
                                        f"channel recorded {str(entry.get('engine_sha256'))[:12]}")


def _leftovers(store: Store) -> Iterator[Problem]:
    for left in store.leftovers():
        yield Problem(left.kind, str(left.path), left.message, garbage=left.garbage)
    for key in store.dead_hashes():
        yield Problem("memo", key, "hash memo entry of a file that is gone or changed since", garbage=True)


def repair(store: Store, problems: list[Problem]) -> list[Problem]:
    """Remove the garbage among `problems`; returns the ones removed (a directory that filled up meanwhile, or
    a temp file already gone, is left alone)."""
    removed = []
    dead_keys = [p.where for p in problems if p.kind == "memo"]
    if dead_keys:
        store.forget(HASHES, dead_keys)
        removed += [p for p in problems if p.kind == "memo"]
    for problem in problems:
        if not problem.garbage or problem.kind == "memo":
            continue
        if problem.kind == "torn":
            if channels.cut_torn(store, Path(problem.where).parent.parent.name):
                removed.append(problem)
            continue
        if store.remove_leftover(Leftover(problem.kind, Path(problem.where), problem.message, problem.garbage)):
            removed.append(problem)
    return removed
