"""Content hashes: files in chunks, and canonical JSON for keys."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def json_sha256(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def plain(value: Any) -> Any:
    """Frozen recipe objects (dataclasses, mappingproxy, tuples, paths) as plain JSON values."""
    import dataclasses
    from collections.abc import Mapping

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def model_sha256(model_file: str, external_data: list[str]) -> str:
    """One content hash for a model: its file's sha256, or, when weights live in external-data files, the
    sha256 of canonical JSON of the file's and the data files' hashes (so new weights make a new hash)."""
    return model_file if not external_data else json_sha256({"model": model_file, "external_data": external_data})
