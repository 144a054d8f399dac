"""Files users name (recipes, models, external data): regular files only, opened without blocking, read bounded.

A FIFO would block the reader, /dev/zero never ends, a directory or a symlink loop raises something unexpected:
each is refused up front with a word for what it is.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


class NotRegular(OSError):
    """The path exists but is not a regular file; `kind` says what it is ('a directory', ...)."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(errno.EINVAL, f"expected a regular file, got {kind}", str(path))
        self.kind = kind


def kind(mode: int) -> str:
    """'a directory', 'a named pipe (FIFO)', ... for a st_mode that is not a regular file's."""
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def problem(path: Path) -> str | None:
    """What is wrong with reading `path` as a regular file: 'missing', 'a symlink loop', 'a directory', 'a path
    that cannot be read (...)'; None for a regular file (following symlinks)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symlink loop"
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return "missing"
        return f"a path that cannot be read ({(error.strerror or str(error)).lower()})"  # e.g. permission denied
    return None if stat.S_ISREG(mode) else kind(mode)


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file, at most `limit` + 1 of them (so a caller sees that it is over `limit`).
    Opened with O_NONBLOCK and checked on the open descriptor: a FIFO swapped in meanwhile cannot block the read.
    Raises OSError (NotRegular for a directory, FIFO, device, ...)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegular(path, kind(mode))
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        return handle.read() if limit is None else handle.read(limit + 1)


def absolute(base: Path, relative: str) -> Path:
    """`relative` (or absolute) against `base` (a recipe's folder), symlinks resolved; a symlink loop is kept as
    written (made absolute) for whoever reads the file to report it."""
    try:
        return (base / relative).resolve()
    except (OSError, RuntimeError):  # "Symlink loop from ..." (RuntimeError before Python 3.13)
        return Path(os.path.abspath(base / relative))
