"""Named channels (candidate, production, ...) per recipe and GPU tag, with an append-only history.

Layout, in the store's `channels_dir(name)` (ROOT/<name>/_channels/):
        <gpu-tag>.json  {"name", "tag", "channels": {channel: pointer}, "events": {channel: id of its last event}}
        history.jsonl   one event per line: who, when, which build, from where, why; then {"commit": id}.
History and channels agree after any fault: an event is appended (with its id) before the channel file is
replaced, and counts only once committed: its commit line follows the replace, and a channel file naming the id
commits it too (a process killed between the two). An event whose channel file was never replaced (killed before
the rename, a full disk) is not history: `history` leaves it out. An append that fails (a full disk) is cut off
again; a last line without its newline (a process killed while appending) never counts, and the next append or
`fsck --repair` cuts it off. Events of older stores have no id and no commit line: they all count.
A pointer names a published build: version, build number and the tag of its directory (which differs from
the channel's tag when an engine is reused on another GPU type). Every change is made under the store's lock
for the recipe, so two promotions racing each other are both applied and both recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline import faults, interrupt
from pipeline.errors import StoreError
from pipeline.files import replace_json
from pipeline.store import Artifact, Store

HISTORY = "history.jsonl"
CANDIDATE, PRODUCTION = "candidate", "production"
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def check_name(channel: str) -> str:
    if not _NAME.match(channel):
        raise StoreError(f"invalid channel name '{channel}': use lower-case letters, digits, '-' or '_', "
                         f"e.g. {CANDIDATE} or {PRODUCTION}")
    return channel


def pointer(artifact: Artifact, **extra: Any) -> dict:
    """What a channel stores about the build it points at."""
    return {"ref": artifact.ref, "version": artifact.version, "build": artifact.build, "tag": artifact.tag,
            "engine_sha256": artifact.manifest().engine.sha256, **extra}


def resolve(store: Store, name: str, entry: dict) -> Artifact:
    """The artifact a pointer names (StoreError if it is gone)."""
    artifact = store.published(name, entry["version"], entry["build"], entry["tag"])
    if artifact is None:
        raise StoreError(f"channel points at {entry['ref']} {entry['tag']}, which is not in store {store.root}")
    return artifact


def _dir(store: Store, name: str) -> Path:
    return store.channels_dir(name)


def read(store: Store, name: str, tag: str) -> dict[str, dict]:
    """channel -> pointer for one recipe and GPU tag ({} when nothing was promoted there)."""
    return _file(store, name, tag)["channels"]


def _file(store: Store, name: str, tag: str) -> dict:
    """A channel file: {"channels": {...}, "events": {...}} (both {} when there is none)."""
    path = _dir(store, name) / f"{tag}.json"
    try:
        found = json.loads(path.read_text())
        return {"channels": dict(found["channels"]), "events": dict(found.get("events") or {})}
    except FileNotFoundError:
        return {"channels": {}, "events": {}}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StoreError(f"cannot read channel file {path}: {error}") from None


def tags(store: Store, name: str) -> list[str]:
    """GPU tags that have a channel file."""
    return sorted(p.name[:-5] for p in _dir(store, name).glob("*.json"))


def everything(store: Store, name: str) -> Iterator[tuple[str, str, dict]]:
    """(tag, channel, pointer) for every channel of a recipe."""
    for tag in tags(store, name):
        for channel, entry in sorted(read(store, name, tag).items()):
            yield tag, channel, entry


def history(store: Store, name: str) -> list[dict]:
    """The events that took effect, oldest first (an event written before a fault stopped its channel change is
    left out; events of older stores, without ids, all count)."""
    records = _records(store, name)
    committed = {r["commit"] for r in records if "commit" in r} | _applied(store, name)
    return [r for r in records if "commit" not in r and ("id" not in r or r["id"] in committed)]


def _records(store: Store, name: str) -> list[dict]:
    """The history's records; a last line without its newline (a write that never finished) is left out."""
    path = _dir(store, name) / HISTORY
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        raise StoreError(f"cannot read history {path}: {error}") from None
    lines = text.split("\n")[:-1]  # the part after the last newline is a torn write, or ""
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as error:
            where = f"line {number} column {getattr(error, 'colno', '?')}: {getattr(error, 'msg', error)}"
            raise StoreError(f"cannot read history {path}: {where} (not a record the pipeline "
                             "wrote: restore the file from a backup, or remove that line by hand)") from None
    return records


def torn(store: Store, name: str) -> tuple[Path, int] | None:
    """(history path, bytes of its last line) when that line lacks its newline: a write that never finished
    (a process killed in the middle of it). It never counts; `fsck --repair` and the next append cut it off."""
    path = _dir(store, name) / HISTORY
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StoreError(f"cannot read history {path}: {error.strerror}") from None
    if not data or data.endswith(b"\n"):
        return None
    return path, len(data) - (data.rfind(b"\n") + 1)


def cut_torn(store: Store, name: str) -> bool:
    """Remove a torn last line of the history (see `torn`), under the recipe's lock; True if one was cut."""
    with store.lock(name):
        return _cut_torn(_dir(store, name) / HISTORY)


def _cut_torn(path: Path) -> bool:
    try:
        with open(path, "r+b") as handle:
            data = handle.read()
            if not data or data.endswith(b"\n"):
                return False
            handle.truncate(data.rfind(b"\n") + 1)
            os.fsync(handle.fileno())
            return True
    except FileNotFoundError:
        return False
    except OSError as error:
        raise StoreError(f"cannot repair history {path}: {error.strerror}") from None


def _applied(store: Store, name: str) -> set[str]:
    """Ids of the events the channel files name (applied, whether or not their commit line was written)."""
    return {event for tag in tags(store, name) for event in _file(store, name, tag)["events"].values()}


def _append(path: Path, record: dict) -> None:
    """One JSON line, appended and fsynced (the history is never rewritten). Call under the recipe's lock.

    A write that fails (a full disk) is cut off again, so no half line stays behind; a half line left by a
    process killed while writing is cut off first.
    """
    _cut_torn(path)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as error:
        raise StoreError(f"cannot append to {path}: {error.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
                os.fsync(fd)
            raise StoreError(f"cannot append to {path}: {error.strerror}") from None
    finally:
        os.close(fd)


def set_(store: Store, name: str, tag: str, channel: str, entry: dict, event: dict) -> dict | None:
    """Point `channel` of `tag` at `entry`, recording `event` in the history; returns the previous pointer.

    Read-modify-write under the recipe's lock: the event is appended first (with a new id), then the channel
    file is replaced atomically (naming that id), then the event is committed; see the module's doc. The
    artifact is checked again inside the lock: a gc that removed it after the caller resolved it makes this a
    StoreError.
    """
    check_name(channel)
    with store.lock(name):
        folder = _dir(store, name)
        folder.mkdir(parents=True, exist_ok=True)
        current = _file(store, name, tag)
        channels, events = current["channels"], current["events"]
        if store.published(name, entry["version"], entry["build"], entry["tag"]) is None:
            path = store.artifact_dir(name, entry["version"], entry["build"], entry["tag"])
            raise StoreError(f"cannot point {channel} of {tag} at {entry.get('ref', path)} [{entry['tag']}]: it is "
                             f"no longer in store {store.root} (removed meanwhile, e.g. by gc); channel unchanged")
        _commit_applied(store, name)  # the pointer replaced below may be the only record of an earlier commit
        previous = channels.get(channel)
        channels[channel] = entry
        events[channel] = uuid.uuid4().hex
        _append(folder / HISTORY, {**event, "name": name, "tag": tag, "channel": channel,
                                   "artifact": entry, "previous": previous, "id": events[channel]})
        faults.point("channel-appended")
        with interrupt.deferred():
            replace_json(folder / f"{tag}.json", {"name": name, "tag": tag, "events": dict(sorted(events.items())),
                                                  "channels": dict(sorted(channels.items()))})
            interrupt.published(f"{channel} of {tag} -> {entry.get('ref')} [{entry['tag']}]")
        faults.point("channel-replaced")
        with contextlib.suppress(StoreError):  # the channel file names the event: it is committed already
            _append(folder / HISTORY, {"commit": events[channel]})
    return previous


def _commit_applied(store: Store, name: str) -> None:
    """Write the commit line of every event a channel file names but the history has not committed (its writer
    was killed after replacing the channel file). Call under the recipe's lock."""
    records = _records(store, name)
    committed = {r["commit"] for r in records if "commit" in r}
    for event in sorted(_applied(store, name) - committed):
        _append(_dir(store, name) / HISTORY, {"commit": event})


def pointing_at(store: Store, name: str) -> dict[tuple[str, int, str], list[str]]:
    """(version, build, artifact tag) -> ['production', 'candidate@sm86.rtx-1.7.1', ...] for `list`."""
    found: dict[tuple[str, int, str], list[str]] = {}
    for tag, channel, entry in everything(store, name):
        label = channel if tag == entry["tag"] else f"{channel}@{tag}"
        found.setdefault((entry["version"], entry["build"], entry["tag"]), []).append(label)
    return found


def annotate(store: Store, rows: list[dict]) -> None:
    """Add 'channels' (as in `pointing_at`) to `list` rows, which carry name, version, build and tag."""
    found: dict[str, dict] = {}
    for row in rows:
        if row["name"] not in found:
            found[row["name"]] = pointing_at(store, row["name"])
        row["channels"] = found[row["name"]].get((row["version"], row["build"], row["tag"]), [])
