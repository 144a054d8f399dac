"""CLI commands, one module per area. Each module has `register(command)` that adds its sub-commands.

A command function takes the parsed arguments and the project logger and returns an exit code.
"""

from __future__ import annotations

from pipeline.commands import core, farm, lifecycle, model, nightly, validation
from pipeline.commands.output import Command


def register_all(command: Command) -> None:
    for module in (core, model, lifecycle, nightly, validation, farm):
        module.register(command)
