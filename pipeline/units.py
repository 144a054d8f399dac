"""Sizes as people write them ('2GiB') and as the tool shows them ('1.9 GiB')."""

from __future__ import annotations

import re

_UNITS = {
    "": 1, "B": 1,
    "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
}
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)$")


def size_bytes(value: int | str) -> int:
    """'2GiB' -> 2147483648; ints are bytes. The schema has already checked the form."""
    if isinstance(value, int):
        return value
    return int(size_value(value))  # type: ignore[arg-type]


def size_value(text: str) -> float | None:
    """'2GiB' -> 2147483648.0 (inf for absurdly many digits); None when `text` is not a size."""
    match = _SIZE.match(text.strip())
    if not match or match.group(2) not in _UNITS:
        return None
    return float(match.group(1)) * _UNITS[match.group(2)]


def size(nbytes: float | None) -> str:
    """Bytes for people: '512 B', '144.8 KiB', '2.0 GiB'; '-' for none."""
    if nbytes is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return str(nbytes)
