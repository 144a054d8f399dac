"""Fault points: places where the reliability tests kill the process for real.

`point("publish-rename")` does nothing unless TRT_PIPELINE_FAULT names that point; then the process sends itself
SIGKILL there (no cleanup, no handler runs: exactly what a power cut or the OOM killer does to it). Used only by
tests/test_faults.py; the cost in normal runs is one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "TRT_PIPELINE_FAULT"


def point(name: str) -> None:
    """SIGKILL this process here when $TRT_PIPELINE_FAULT is `name`."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
