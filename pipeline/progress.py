"""What long work reports as it goes. The CLI draws it (pipeline.commands.output); a worker logs it; tests
collect it. Finished lines are calls; a status line for work in progress, and what it is doing now, are optional."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class Progress(Protocol):
    def __call__(self, line: str) -> None:
        """A finished step, one line."""

    def started(self, line: str) -> None:
        """Work that has begun and is not finished (a terminal shows it as a status line, with elapsed time)."""

    def detail(self, text: str) -> None:
        """What the work in progress is doing now, e.g. TensorRT's current build phase."""


class Lines:
    """Progress that only passes finished lines on (to a logger's info, a list's append, ...)."""

    def __init__(self, write: Callable[[str], object] = lambda line: None) -> None:
        self.write = write

    def __call__(self, line: str) -> None:
        self.write(line)

    def started(self, line: str) -> None:
        pass

    def detail(self, text: str) -> None:
        pass


def as_progress(progress: Callable[[str], object] | None) -> Progress:
    """Progress as given, or a plain callable (such as `log.info`) wrapped as finished lines only."""
    if isinstance(progress, Progress):
        return progress
    return Lines(progress or (lambda line: None))
