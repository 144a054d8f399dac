"""CLI commands, one module per area. Each module has `register(command)` that adds its sub-commands.

A command function takes the parsed arguments and the project logger and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Callable

Command = Callable[[str, Callable, str, str], argparse.ArgumentParser]

MODULES = ("core", "lifecycle", "nightly", "validation")


def register_all(command: Command) -> None:
    for name in MODULES:
        importlib.import_module(f"pipeline.commands.{name}").register(command)
