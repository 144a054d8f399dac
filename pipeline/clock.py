"""Times as the tool writes them: UTC, to the second, ISO 8601 ('2026-12-03T10:45:17Z')."""

from __future__ import annotations

import time

ISO = "%Y-%m-%dT%H:%M:%SZ"
COMPACT = "%Y%m%dT%H%M%SZ"  # in directory names: sortable, no colons


def utc(when: float | None = None) -> str:
    return time.strftime(ISO, time.gmtime(time.time() if when is None else when))


def compact(when: float | None = None) -> str:
    return time.strftime(COMPACT, time.gmtime(time.time() if when is None else when))
