"""The one family of user-facing errors. The CLI prints them as one line and exits 1."""

from __future__ import annotations


class PipelineError(Exception):
    """A problem the user can fix. `str(error)` is the whole message; `hint` says what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class RecipeError(PipelineError):
    """One or more problems in a recipe, each already formatted as FILE:LINE:COL: path: message."""

    def __init__(self, problems: list[str], hint: str | None = None) -> None:
        super().__init__("\n".join(problems), hint)
        self.problems = problems


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
