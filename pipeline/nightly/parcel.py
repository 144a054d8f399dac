"""What travels between a build farm's driver and its nodes, through Ray's object store (no shared filesystem).

Driver -> node: a model as a `Parcel`, its files in chunks of CHUNK_BYTES, each chunk one object put once per
model and night (every target and every validation of that model borrows the same objects). A node writes the
chunks into its model cache, checks each file's sha256, and reuses the cached files for later tasks.
Files a recipe names besides its model (plugin libraries, a timing cache) travel the same way, as `File`s of
their own (`put_file`, `fetch`), put for each build task that needs them.
Node -> driver: a staged directory's files as numpy arrays mapped from disk (Ray serializes them out of band:
no copy on the node's heap); the driver writes them into its store's staging directory and publishes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.files import write_bytes

CHUNK_BYTES = 128 << 20  # a chunk in memory at once on the driver while it is put, and on a node while written
OK = ".complete"  # written last into a cached model's directory: the files are whole and checked


@dataclass(frozen=True)
class File:
    name: str  # relative to the model's directory (external data sits beside the model, or below it)
    sha256: str
    size: int
    chunks: tuple[Any, ...]  # ray.ObjectRef of numpy uint8 arrays, in order


@dataclass(frozen=True)
class Parcel:
    """A model in the object store: the model file first, then its external data."""

    sha256: str  # the model file's: names the node's cache entry
    files: tuple[File, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def name(self) -> str:
        return self.files[0].name


def put_model(record: dict, put: Callable[[Any], Any]) -> Parcel:
    """The model of a model record (parse.digests: path, sha256, external_data [{path, sha256}]) into the object
    store with `put` (ray.put), one chunk at a time."""
    model = Path(record["path"])
    entries = [(model, record["sha256"])] + [(Path(d["path"]), d["sha256"]) for d in record["external_data"]]
    return Parcel(record["sha256"], tuple(put_file(path, str(path.relative_to(model.parent)), sha, put)
                                          for path, sha in entries))


def put_file(path: Path, name: str, sha256: str, put: Callable[[Any], Any]) -> File:
    """One file into the object store with `put`, one chunk at a time, as `name` on the other side."""
    return File(name, sha256, path.stat().st_size, tuple(put(chunk) for chunk in _chunks(path)))


def _chunks(path: Path) -> Iterator[Any]:
    import numpy as np

    with open(path, "rb") as handle:
        while True:
            chunk = np.fromfile(handle, dtype=np.uint8, count=CHUNK_BYTES)
            if not chunk.size:
                return
            yield chunk


def materialize(parcel: Parcel, cache: Path, get: Callable[[Any], Any]) -> tuple[Path, bool]:
    """The model's path in this node's cache, fetching it with `get` (ray.get) unless it is there already;
    (path, fetched). One task per node fetches a model; the others wait on its lock and reuse the files."""
    from filelock import FileLock

    folder = cache / parcel.sha256
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f"{parcel.sha256}.lock")):
        if (folder / OK).is_file():
            os.utime(folder / OK)  # last use, for `sweep`
            return folder / parcel.name, False
        shutil.rmtree(folder, ignore_errors=True)  # a fetch that died half-way
        for item in parcel.files:
            fetch(item, folder / item.name, get)
        write_bytes(folder / OK, b"")
    return folder / parcel.name, True


def fetch(item: File, path: Path, get: Callable[[Any], Any]) -> None:
    """Write a `File` at `path`, checking its sha256 (a damaged transfer is a PipelineError)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for ref in item.chunks:
            chunk = memoryview(get(ref))  # zero-copy view of the object on this node
            digest.update(chunk)
            out.write(chunk)
            del chunk
    if digest.hexdigest() != item.sha256:
        raise PipelineError(f"the file {item.name} arrived damaged (sha256 {digest.hexdigest()[:12]}, "
                            f"expected {item.sha256[:12]})", hint="run the night again; report it if it repeats")


def sweep(cache: Path, max_age_s: float) -> None:
    """Remove cached models not used for `max_age_s` (a node keeps what the recent nights used)."""
    now = time.time()
    for marker in cache.glob(f"*/{OK}"):
        with contextlib.suppress(OSError):
            if now - marker.stat().st_mtime > max_age_s:
                shutil.rmtree(marker.parent, ignore_errors=True)


# ---------------------------------------------------------------- a staged directory, node -> driver


def files_of(folder: Path, names: list[str]) -> dict[str, Any]:
    """Files of a staged directory as read-only arrays mapped from disk (an empty file: an empty array). They
    stay valid after the directory is removed: the mapping keeps the data."""
    import numpy as np

    found = {}
    for name in names:
        path = folder / name
        size = path.stat().st_size
        found[name] = np.memmap(path, dtype=np.uint8, mode="r") if size else np.empty(0, dtype=np.uint8)
    return found


def write_files(files: dict[str, Any], folder: Path) -> None:
    """Write arrays from `files_of` as files into `folder` (the store's staging; it fsyncs when it publishes)."""
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            out.write(memoryview(data))


def link_files(names: list[str], source: Path, dest: Path) -> None:
    """Hard links (copies where the filesystem has none), as the local build links its cleaned model."""
    for name in names:
        try:
            os.link(source / name, dest / name)
        except OSError:
            shutil.copyfile(source / name, dest / name)
