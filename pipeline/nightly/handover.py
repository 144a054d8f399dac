"""Files handed over by path between a build farm's driver and a node that sees the driver's files (the same
machine, or a shared filesystem such as NFS): no copy through Ray's object store.

Nothing is taken on trust. The driver makes a handover directory in its store's staging (`Store.staging`: held
by the driver, so fsck and reclaim treat it as any staging once the driver is gone) and writes a random token
into it. A node uses the path only after reading that token there (`visible`); a model file only when its
size, mtime, inode and device are the driver's (`in_place`; on another filesystem view, its sha256 decides).
A node that sees the directory builds into a fresh box inside it and hands each file over with a rename
(`hand_over`), returning names, sizes and sha256s; the driver checks them and renames the files into its
staging (`receive`), publishing as usual. Whatever a check refuses goes through the object store, as before.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.digest import file_sha256
from pipeline.errors import PipelineError
from pipeline.files import write_bytes

PATH, OBJECT_STORE = "path", "object-store"  # how a task's files travelled (a night records it per pair)
TRANSPORTS = ("auto", OBJECT_STORE)  # auto: by path where a node proves it sees the driver's files
TOKEN = "token"


@dataclass(frozen=True)
class Handover:
    """The driver's handover directory and the token a node must read there before using it."""

    path: str
    token: str


@dataclass(frozen=True)
class Stamp:
    """A driver's file as the driver sees it: what a node compares before using the file in place."""

    path: str
    sha256: str
    size: int
    mtime_ns: int
    inode: int
    device: int
    ctime_ns: int  # any write changes it, and no tool sets it back (mtime can be)


def make(folder: Path) -> Handover:
    """The driver's half: a fresh token in `folder` (a staging directory of the store)."""
    token = secrets.token_hex(16)
    write_bytes(folder / TOKEN, token.encode(), durable=False)
    return Handover(str(folder), token)


def visible(handover: Handover | None) -> bool:
    """Whether this process reads the driver's token at the driver's path (same machine, or a shared
    filesystem)."""
    if handover is None:
        return False
    try:
        found = (Path(handover.path) / TOKEN).read_bytes()
    except OSError:
        return False
    return hmac.compare_digest(found, handover.token.encode())


def stamp(path: Path, sha256: str) -> Stamp:
    found = path.stat()
    return Stamp(str(path), sha256, found.st_size, found.st_mtime_ns, found.st_ino, found.st_dev, found.st_ctime_ns)


def model_stamps(record: dict) -> tuple[Stamp, ...]:
    """The model file and its external data (a model record: parse.digests), stamped now."""
    entries = [(record["path"], record["sha256"])] + [(d["path"], d["sha256"]) for d in record["external_data"]]
    return tuple(stamp(Path(path), sha256) for path, sha256 in entries)


def in_place(stamps: tuple[Stamp, ...], seen: bool) -> bool:
    """Whether every stamped file can be used where it is: the same size and mtime, and either the same inode,
    device and ctime in a view of the driver's files this process has proved (`seen`: the token) or, otherwise, the
    sha256 the driver recorded (read here: still cheaper than a fetch, which also hashes)."""
    if not stamps:
        return False
    for item in stamps:
        try:
            found = os.stat(item.path)
        except OSError:
            return False
        if (found.st_size, found.st_mtime_ns) != (item.size, item.mtime_ns):
            return False
        same = (found.st_ino, found.st_dev, found.st_ctime_ns) == (item.inode, item.device, item.ctime_ns)
        if not (seen and same) and file_sha256(Path(item.path)) != item.sha256:
            return False
    return True


def box(handover: Handover, prefix: str) -> Path | None:
    """A fresh directory for one task inside the handover directory; None where this process cannot make one
    (another user's directory on a shared filesystem, a read-only mount): the object store then."""
    try:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=handover.path))
    except OSError:
        return None


def hand_over(source: Path, names: list[str], folder: Path, known: dict[str, str]) -> dict[str, list]:
    """Move the files `names` of `source` into `folder` (a rename; a copy across filesystems) and say what they
    are: {name: [size, sha256]}. `known`: sha256s computed while the files were written (the engine's, the
    cleaned model's); the others are hashed here."""
    folder.mkdir(parents=True, exist_ok=True)
    handed = {}
    for name in names:
        target = folder / name
        _move(source / name, target)
        handed[name] = [target.stat().st_size, known.get(name) or file_sha256(target)]
    return handed


def _move(source: Path, target: Path) -> None:
    """A rename; a copy where `target` is on another filesystem (the store's staging fsyncs when it publishes)."""
    try:
        os.rename(source, target)
    except OSError:
        shutil.copyfile(source, target)


def inside(handover: Handover, path: str) -> Path:
    """A node's box or file, refused unless it lies in the handover directory (a node names it)."""
    root, found = Path(handover.path).resolve(), Path(path).resolve()
    if found == root or not found.is_relative_to(root):
        raise PipelineError(f"a node handed over {path}, outside the handover directory {root}",
                            hint="this is a bug: report it")
    return found


def receive(handover: Handover, folder: str, handed: dict[str, list], dest: Path) -> int:
    """The driver's half: the files a node handed over in `folder`, checked (plain names, sizes) and renamed
    into `dest` (the store's staging: the same filesystem); the bytes received."""
    source = inside(handover, folder)
    total = 0
    for name, (size, _sha256) in handed.items():
        if Path(name).name != name or name in ("", ".", ".."):
            raise PipelineError(f"a node handed over a file named {name!r}", hint="this is a bug: report it")
        found = (source / name).stat().st_size
        if found != size:
            raise PipelineError(f"{source / name} has {found} bytes; the node wrote {size}",
                                hint="run the night again; report it if it repeats")
        _move(source / name, dest / name)
        total += size
    return total


def remove(handover: Handover, folder: str) -> None:
    """A task's box, once the driver has taken what it wants from it."""
    with contextlib.suppress(PipelineError):
        shutil.rmtree(inside(handover, folder), ignore_errors=True)
