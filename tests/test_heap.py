"""heap: trim() gives the memory the process freed back to the operating system."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline import heap

REPO = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter, so the test process's own heap is not measured. Every 64 KiB block (below glibc's
# mmap threshold: it comes from the heap) is followed by a small block that is kept, and FIXED_MALLOC turns off
# glibc's own trimming of the heap top, so free() alone gives nothing back; only malloc_trim does.
FREED_THEN_TRIMMED = """\
from pipeline import heap

def rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

blocks, kept = [], []
for _ in range(3200):  # ~200 MiB, every page written
    blocks.append(b"\\x01" * (64 * 1024))
    kept.append(b"\\x02" * 1024)
full = rss()
del blocks
freed = rss()
heap.trim()
print(full, freed, rss())
"""


# glibc's tunables as environment variables: a fixed mmap threshold (no adjusting it while the test runs) and a
# trim threshold no heap reaches, so free() never returns memory by itself, whatever the allocation order was.
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def has_malloc_trim() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "malloc_trim")
    except OSError:
        return False


@pytest.mark.skipif(not has_malloc_trim(), reason="no glibc malloc_trim here (musl, macOS): trim() is a no-op")
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc/self/status (Linux)")
def test_trim_returns_freed_memory_to_the_os() -> None:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(FREED_THEN_TRIMMED)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True, env={**os.environ, **FIXED_MALLOC})
    full, freed, trimmed = (int(n) for n in done.stdout.split())
    assert full - freed < 50 * 2**20, "free() alone already gave the blocks back: this test would prove nothing"
    assert freed - trimmed >= 100 * 2**20


def test_without_malloc_trim_trim_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """musl and macOS have no malloc_trim: trim() is then a no-op, not an AttributeError."""

    class NoMallocTrim:  # a C library without the symbol, as ctypes.CDLL(None) is there
        pass

    heap._malloc_trim.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: NoMallocTrim())
    try:
        assert heap._malloc_trim() is None
        assert heap.trim() is None
    finally:
        heap._malloc_trim.cache_clear()  # the real one again for later tests
