"""The one family of user-facing errors. The CLI prints them as one line and exits 1."""

from __future__ import annotations

import re
from typing import Any


class PipelineError(Exception):
    """A problem the user can fix. `str(error)` is the whole message; `hint` says what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class RecipeError(PipelineError):
    """One or more problems in a recipe, each already formatted as FILE:LINE:COL: path: message, kept sorted by
    file, line and column (a problem without a line sorts first in its file). `recipe`: the recipe as far as it
    could be frozen despite the problems (recipe.load sets it), for later checks to add their problems to these."""

    def __init__(self, problems: list[str], hint: str | None = None, recipe: Any = None) -> None:
        problems = sorted(dict.fromkeys(problems), key=_place)
        super().__init__("\n".join(problems), hint)
        self.problems = problems
        self.recipe = recipe


_PLACE = re.compile(r"^(.*?):(\d+):(\d+): ")


def located(problem: str) -> bool:
    """Whether a problem names its FILE:LINE:COL (one about a command-line option does not)."""
    return _PLACE.match(problem) is not None


def _place(problem: str) -> tuple[str, int, int]:
    """(file, line, column) of 'FILE:LINE:COL: ...'; (the text before ': ', 0, 0) for an unlocated problem."""
    found = _PLACE.match(problem)
    if found:
        return found[1], int(found[2]), int(found[3])
    return problem.partition(": ")[0], 0, 0


class BackendError(PipelineError):
    """TensorRT is missing, or lacks a feature the recipe asks for."""


class BuildError(PipelineError):
    """A stage failed; the message names the stage."""


class StoreError(PipelineError):
    """An artifact could not be found, read or written."""


class CannotRunHere(PipelineError):
    """This machine cannot run the engine (no driver, no GPU, unsupported GPU). Distinct exit code.
    `reason` is the why alone, without the message's 'cannot run X here' (the whole message when not given)."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, reason: str | None = None) -> None:
        super().__init__(message, hint)
        self.reason = message if reason is None else reason


class PromotionError(PipelineError):
    """A promotion was refused (the message names the mismatch) or blocked by the production gate."""


class TagError(PipelineError):
    """Text that should be a GPU tag (e.g. sm89.rtx-1.7.1) is not one."""
