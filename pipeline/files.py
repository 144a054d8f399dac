"""Durable file writes: fsync'd, atomically replaced, every OS error one StoreError that names the file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import mmap
import os
import secrets
import shutil
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from pipeline import faults
from pipeline.errors import StoreError

BLOCK = 4096  # O_DIRECT's unit: buffer addresses, lengths and file offsets are multiples of it
DIRECT_BUFFER = 4 << 20  # Direct's buffer: 4 MiB, whole blocks

FICLONE = 0x40049409  # ioctl: make a file share another's blocks (linux/fs.h)


def write_bytes(path: Path, data: bytes | memoryview, durable: bool = True, direct: bool = False) -> None:
    """Write and fsync (unless not `durable`: a cache); a full disk or other OS error becomes a StoreError naming
    the file. `direct`: past the page cache (Direct), where the file system allows it."""
    try:
        with _created(path, direct) as handle:
            out = _writer(handle)
            out.write(data)
            if isinstance(out, Direct):
                out.finish()
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
    except OSError as error:
        raise StoreError(f"cannot write {path}: {error.strerror}") from None


def json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=False) + "\n").encode()


def write_json(path: Path, value: Any) -> None:
    write_bytes(path, json_bytes(value))


def replace_bytes(path: Path, data: bytes | memoryview, durable: bool = True, scratch: Path | None = None) -> None:
    """Atomically replace a file: temp file beside it (or in `scratch`, a directory on the same filesystem: a
    published artifact's files are replaced so), fsync (when `durable`), os.replace; errors become a StoreError.
    The temp file's name ends in .<pid>.tmp, so what a killed writer left can be told from a live one's."""
    name = f".{path.name}.{secrets.token_hex(4)}.{os.getpid()}.tmp" if scratch else f".{path.name}.{os.getpid()}.tmp"
    tmp = (scratch or path.parent) / name
    try:
        write_bytes(tmp, data, durable)
        faults.point(f"replace {path.name}")
        os.replace(tmp, path)
    except OSError as error:
        raise StoreError(f"cannot write {path}: {error.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def replace_json(path: Path, value: Any, durable: bool = True, scratch: Path | None = None) -> None:
    """Atomically replace a JSON file."""
    replace_bytes(path, json_bytes(value), durable, scratch)


def sync(paths: list[Path]) -> None:
    """fsync files written without it (e.g. by onnx), so that publishing them costs no wait; an OS error
    becomes a StoreError naming the file."""
    for path in paths:
        try:
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        except OSError as error:
            raise StoreError(f"cannot write {path}: {error.strerror}") from None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clone(source: Path, dest: Path) -> None:
    """`dest` with the bytes of `source`: a reflink where the file system has them (btrfs, XFS: a file of its own
    sharing the blocks until either is written, no byte read), else a copy inside the kernel (copy_file_range).
    Never a hard link: the ONNX checker and loader refuse external data with more than one link (onnx >= 1.17,
    "potential hardlink attack"), and a user's file changed in place would change the artifact's."""
    with open(source, "rb", buffering=0) as src, open(dest, "wb", buffering=0) as out:
        try:
            fcntl.ioctl(out.fileno(), FICLONE, src.fileno())
        except OSError:  # EOPNOTSUPP (ext4, tmpfs), EXDEV (another file system)
            _copy_rest(src, out)


def _copy_rest(source: Any, out: Any) -> None:
    """Copy the rest of `source` to `out` (unbuffered files), inside the kernel when it can."""
    try:
        while os.copy_file_range(source.fileno(), out.fileno(), 1 << 30):
            pass
    except (AttributeError, OSError):  # no copy_file_range here, or not between these two files
        shutil.copyfileobj(source, out, 1 << 24)


class Direct:
    """Writes to a file opened with O_DIRECT: the bytes go from an aligned buffer of the process to the disk, not
    through the page cache. For big files written once and not read back soon (a streamed engine): on this VM,
    putting 2.25 GiB into the page cache costs 4-6 s of first-touched pages; through O_DIRECT, ~1 s.
    Pieces of any size are gathered in a page-aligned buffer (an anonymous map of DIRECT_BUFFER bytes) and
    written a full buffer at a time; `finish` writes the rest, its last block padded, and truncates the file to
    its size. A file system that refuses O_DIRECT writes (EINVAL) gets them as ordinary writes."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = mmap.mmap(-1, DIRECT_BUFFER)
        self._fill = 0  # bytes at the start of the buffer not yet written
        self._offset = os.lseek(fd, 0, os.SEEK_CUR)  # where the next block goes

    def write(self, data: bytes | memoryview) -> int:
        with memoryview(data) as view, view.cast("B") as piece:
            taken = 0
            while taken < len(piece):
                count = min(len(self._buffer) - self._fill, len(piece) - taken)
                self._buffer[self._fill:self._fill + count] = piece[taken:taken + count]
                self._fill, taken = self._fill + count, taken + count
                if self._fill == len(self._buffer):
                    self._put(self._fill)
            return len(piece)

    def finish(self) -> None:
        """Write what is left, the last block padded, and give the file its size."""
        size = self._offset + self._fill
        padded = -(-self._fill // BLOCK) * BLOCK
        self._buffer[self._fill:padded] = bytes(padded - self._fill)
        self._put(padded)
        os.ftruncate(self._fd, size)
        self._buffer.close()

    def _put(self, end: int) -> None:
        """Write the buffer's first `end` bytes (whole blocks) at the file's end; the buffer is then empty."""
        start = 0
        with memoryview(self._buffer) as view:
            while start < end:
                try:
                    written = os.write(self._fd, view[start:end])
                except OSError as error:
                    flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
                    if error.errno != errno.EINVAL or not flags & os.O_DIRECT:
                        raise
                    fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)  # the rest as ordinary writes
                    continue
                start += written
        self._offset += end
        self._fill = 0


class StagedFile:
    """A file written in pieces to a staged name beside its `path`, hashed as the pieces arrive: `write` appends a
    piece while the previous one is hashed on a thread of its own (hashlib and file writes both release the GIL: a
    2.25 GiB engine is hashed in the time it takes to write it); `sha256` and `size` describe what was written.
    Made by `staged_file`, which renames it into place (fsync'd) only when the writing finished."""

    def __init__(self, out: BinaryIO | Direct, hasher: ThreadPoolExecutor) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self._hasher = hasher
        self._pending: Future | None = None
        self.size = 0
        self.pieces = 0

    def write(self, data: bytes | memoryview) -> int:
        self._settle()
        self._pending = self._hasher.submit(self._hash.update, data)  # keeps `data` alive until it is hashed
        written = self._out.write(data)
        self.size += len(data)
        self.pieces += 1
        return written

    def _settle(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    @property
    def sha256(self) -> str:
        self._settle()
        return self._hash.hexdigest()


@contextlib.contextmanager
def staged_file(path: Path, direct: bool = False) -> Iterator[StagedFile]:
    """Write `path` atomically in pieces: a temp file beside it, fsync, os.replace when the block ends normally.
    When it raises (an error, Ctrl-C), neither the temp file nor anything at `path` is left. OS errors become a
    StoreError naming the file. `direct`: past the page cache (Direct), where the file system allows it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="sha256") as hasher, _created(tmp, direct) as handle:
            out = _writer(handle)
            staged = StagedFile(out, hasher)
            yield staged
            if isinstance(out, Direct):
                out.finish()
            handle.flush()
            os.fsync(handle.fileno())
            staged.sha256  # noqa: B018 - the last piece hashed before the file is in place
        os.replace(tmp, path)
    except OSError as error:
        raise StoreError(f"cannot write {path}: {error.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _writer(handle: BinaryIO) -> BinaryIO | Direct:
    """What writes to a file made by _created: Direct when it was opened with O_DIRECT, else the handle."""
    return Direct(handle.fileno()) if fcntl.fcntl(handle.fileno(), fcntl.F_GETFL) & os.O_DIRECT else handle


def _created(path: Path, direct: bool) -> BinaryIO:
    """A new file, as open(path, "wb") makes it; with O_DIRECT (unbuffered) when asked and the file system has it
    (where it has not: EINVAL, an ordinary file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    if direct:
        try:
            return open(os.open(path, flags | os.O_DIRECT, 0o666), "wb", buffering=0)  # open()'s mode
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
    return open(os.open(path, flags, 0o666), "wb")
