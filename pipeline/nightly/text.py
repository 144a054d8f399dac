"""How a night and its values read: night ids as dates, metrics with their units."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pipeline.units import size


def value(metric: str, number: Any) -> str:
    """A regression's before/after as people read it."""
    if metric == "engine_bytes" and isinstance(number, (int, float)):
        return f"{number} B" if abs(number) < 1024 else f"{size(number)} ({number} B)"
    if metric == "build_s" and isinstance(number, (int, float)):
        return f"{number:.2f}s"
    if isinstance(number, float):
        return f"{number:.3g}"
    return "-" if number is None else str(number)


def night_time(run: str) -> datetime | None:
    """A night's id is its UTC start, 20261118T020000Z (then -2, -3 when two start in the same second)."""
    try:
        return datetime.strptime(run[:16], "%Y%m%dT%H%M%SZ")
    except ValueError:
        return None


def night_text(run: str) -> str:
    """A night as a date to read: '2026-11-18 02:00:00 UTC' (its -2 kept); an id that is no date as it is."""
    when = night_time(run)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC") + run[16:] if when else run


_BREAK = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines breaks at: a bare \r ends a table row too
_MARKDOWN = re.compile(rf"[\\`*\[\]|~<&]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|\s*[{_BREAK}]\s*|:(?=//)|(?<=www)\.",
                       re.IGNORECASE)
_ENTITIES = {"<": "&lt;", "&": "&amp;", ":": "&#58;", ".": "&#46;"}  # ':' of '://', '.' of 'www.': no autolink


def markdown_text(text: Any) -> str:
    """Text from a recipe, a model path or an error, safe in Markdown (summary.md, a CI job's summary page): no
    raw HTML (< and & become entities; a > opens no tag), no links (nor autolinks: '://' and 'www.' are broken
    by an entity), code, emphasis or table cells of its own (their characters backslash-escaped; an underscore
    inside a word is left alone, as it emphasises nothing), one line (every line break becomes a space)."""
    return _MARKDOWN.sub(lambda m: _ENTITIES.get(m[0]) or (" " if m[0].isspace() else "\\" + m[0]), str(text))
