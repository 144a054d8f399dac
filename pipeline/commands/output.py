"""What commands print: tables, progress and status lines on stderr, JSON on stdout. Only commands print."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from typing import Any, Callable, Sequence

Command = Callable[[str, Callable, str, str], argparse.ArgumentParser]  # adds a sub-command


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table on stdout, the human counterpart of --json."""
    table = [tuple(header)] + [tuple(str(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


class Progress:
    """Progress lines on stderr. On a terminal, `started(line)` shows a status line that the next line
    overwrites (\r), so long work is visible while it runs; elsewhere only the finished lines are written."""

    pending: "Progress | None" = None  # the instance whose status line is on screen, unfinished

    def __init__(self, stream: Any, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)()) if tty is None else tty

    def __call__(self, line: str) -> None:
        Progress.end_status()
        print(line, file=self.stream, flush=True)

    def started(self, line: str) -> None:
        """Show `line` as the status line (cut to the terminal's width: a wrapped line could not be redrawn)."""
        if self.tty:
            Progress.end_status()
            width = shutil.get_terminal_size().columns - 1
            self.stream.write(line if len(line) <= width else line[:width - 1] + "…")
            self.stream.flush()
            Progress.pending = self

    @staticmethod
    def end_status() -> None:
        """Clear an unfinished status line, so whatever is written next starts on a clean line."""
        status, Progress.pending = Progress.pending, None
        if status is not None:
            status.stream.write("\r\x1b[K")
            status.stream.flush()


def progress(args: argparse.Namespace) -> Callable[[str], None]:
    """The progress callback of a command: nothing with -q; else lines on stderr (see Progress)."""
    if args.quiet:
        return lambda line: None
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
