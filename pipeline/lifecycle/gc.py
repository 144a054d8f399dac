"""Garbage collection: keep the newest N builds per recipe and GPU tag, and every build a channel points at
or ever pointed at (a promoted build is never removed, so the history can always be followed back), and every
build a live process holds a lease on (the source of a promotion in progress: Store.lease).

Removal happens under the recipe's lock, the plan is made again inside it, and each artifact is removed by the
store (`Store.discard`: renamed out of view first), so a reader never sees half of a removed artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

from pipeline import ref as refs
from pipeline.errors import StoreError
from pipeline.lifecycle import channel as channels
from pipeline.store import Artifact, Store


@dataclass(frozen=True)
class Sweep:
    remove: tuple[Artifact, ...]
    protected: tuple[tuple[Artifact, str], ...]  # old builds kept, with why
    kept: int  # builds kept because they are among the newest N


def _promoted(store: Store, name: str) -> dict[tuple[str, int, str], str]:
    """(version, build, tag) -> why it must stay: on a channel now, or named by a promotion in the history."""
    why: dict[tuple[str, int, str], str] = {}
    for event in channels.history(store, name):
        artifact, source = event.get("artifact") or {}, event.get("from") or {}
        if artifact:
            why[(artifact["version"], artifact["build"], artifact["tag"])] = (
                f"was promoted to {event['channel']} on {event['tag']} at {event['at']}")
        if source.get("ref"):
            named = refs.parse(source["ref"])
            why.setdefault((named.version, named.build or 1, source["tag"]),
                           f"source of a promotion to {event['tag']} at {event['at']}")
    for tag, channel, entry in channels.everything(store, name):
        why[(entry["version"], entry["build"], entry["tag"])] = f"on channel {channel} of {tag}"
    for key, pid in store.leased(name).items():
        why.setdefault(key, f"source of a promotion in progress (process {pid})")
    return why


def plan(store: Store, keep: int, name: str | None = None) -> Sweep:
    if keep < 0:
        raise StoreError(f"--keep must be 0 or more, got {keep}")
    remove: list[Artifact] = []
    protected: list[tuple[Artifact, str]] = []
    kept = 0
    artifacts = store.artifacts(name)
    names = sorted({a.name for a in artifacts})
    promoted = {n: _promoted(store, n) for n in names}
    by_group = sorted(artifacts, key=lambda a: (a.name, a.tag, a.sort_key))
    for _, group in groupby(by_group, key=lambda a: (a.name, a.tag)):
        builds = list(group)
        old = builds[:max(len(builds) - keep, 0)]
        kept += len(builds) - len(old)
        for artifact in old:
            why = promoted[artifact.name].get((artifact.version, artifact.build, artifact.tag))
            if why:
                protected.append((artifact, why))
            else:
                remove.append(artifact)
    return Sweep(tuple(remove), tuple(protected), kept)


def collect(store: Store, keep: int, name: str | None = None, dry_run: bool = False) -> Sweep:
    """Remove what `plan` says, re-planning under each recipe's lock so a promotion cannot race the removal."""
    if not dry_run:
        store.reclaim()
    sweep = plan(store, keep, name)
    if dry_run or not sweep.remove:
        return sweep
    removed: list[Artifact] = []
    for recipe in sorted({a.name for a in sweep.remove}):
        with store.lock(recipe):
            for artifact in plan(store, keep, recipe).remove:
                store.discard(artifact)
                removed.append(artifact)
    final = plan(store, keep, name)
    return Sweep(tuple(removed), final.protected, final.kept)
