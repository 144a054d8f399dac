"""What commands print: tables, progress and status lines on stderr, JSON on stdout. Only commands print."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.progress import Lines

Command = Callable[[str, Callable, str], argparse.ArgumentParser]  # adds a sub-command: name, function, description


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table on stdout, the human counterpart of --json."""
    table = [tuple(header)] + [tuple(str(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


COLOURS = {"green": "32", "red": "31", "yellow": "33", "dim": "2", "bold": "1"}


def paint(text: str, colour: str, stream: Any, environ: Mapping[str, str] = os.environ) -> str:
    """`text` in colour when `stream` is a terminal and NO_COLOR (https://no-color.org) is unset."""
    if environ.get("NO_COLOR") or not getattr(stream, "isatty", lambda: False)():
        return text
    return f"\x1b[{COLOURS[colour]}m{text}\x1b[0m"


class Progress:
    """Progress lines on stderr (pipeline.progress.Progress). On a terminal, `started(line)` shows a status line
    that the next line overwrites (\r), redrawn each second with the time it has taken so far and `detail` (e.g.
    TensorRT's build phase), so long work is visible while it runs; elsewhere only finished lines are written."""

    pending: Progress | None = None  # the instance whose status line is on screen, unfinished
    _lock = threading.RLock()  # the ticker thread and the main thread draw on the same line
    _ticker: threading.Thread | None = None  # one per process: redraws whichever status line is pending

    def __init__(self, stream: Any, tty: bool | None = None, clock: bool = True) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)()) if tty is None else tty
        self.clock = clock  # redraw with the elapsed time (a caller that draws its own clock says False)
        self._line, self._detail, self._since = "", "", 0.0

    def __call__(self, line: str) -> None:
        with Progress._lock:
            Progress.end_status()
            print(line, file=self.stream, flush=True)

    def started(self, line: str) -> None:
        """Show `line` as the status line (cut to the terminal's width: a wrapped line could not be redrawn)."""
        if not self.tty:
            return
        with Progress._lock:
            self._line, self._detail, self._since = line, "", time.monotonic()
            self._draw()
        if self.clock and Progress._ticker is None:
            Progress._ticker = threading.Thread(target=Progress._tick, name="pipeline-progress", daemon=True)
            Progress._ticker.start()

    def detail(self, text: str) -> None:
        with Progress._lock:
            if self.tty and Progress.pending is self:
                self._detail = text
                self._draw()

    def _draw(self) -> None:
        Progress.end_status()
        elapsed = time.monotonic() - self._since
        line = self._line + (f" {elapsed:.0f}s" if self.clock and elapsed >= 1 else "") + \
            (f"  {self._detail}" if self._detail else "")
        width = shutil.get_terminal_size().columns - 1
        self.stream.write(line if len(line) <= width else line[:width - 1] + "…")
        self.stream.flush()
        Progress.pending = self

    @staticmethod
    def _tick() -> None:
        while True:
            time.sleep(1.0)
            with Progress._lock:
                if Progress.pending is not None and Progress.pending.clock:
                    Progress.pending._draw()

    @staticmethod
    def end_status() -> None:
        """Clear an unfinished status line, so whatever is written next starts on a clean line."""
        with Progress._lock:
            status, Progress.pending = Progress.pending, None
            if status is not None:
                status.stream.write("\r\x1b[K")
                status.stream.flush()


def progress(args: argparse.Namespace) -> Lines | Progress:
    """The progress of a command: nothing with -q; else lines on stderr (see Progress)."""
    if args.quiet:
        return Lines()
    return Progress(sys.stderr)


class _Emitted:
    documents = 0  # JSON documents this process wrote to stdout


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")
    _Emitted.documents += 1


def reset_emitted() -> None:
    _Emitted.documents = 0


def emitted_json() -> bool:
    """Whether a JSON document is already on stdout (a command that failed after its result says so in it)."""
    return _Emitted.documents > 0
