"""Durable file writes: fsync'd, atomically replaced, every OS error one StoreError that names the file."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from pipeline import faults
from pipeline.errors import StoreError


def write_bytes(path: Path, data: bytes | memoryview, durable: bool = True) -> None:
    """Write and fsync (unless not `durable`: a cache); a full disk or other OS error becomes a StoreError naming
    the file."""
    try:
        with open(path, "wb") as handle:
            handle.write(data)
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
