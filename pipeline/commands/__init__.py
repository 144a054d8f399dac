"""CLI commands, one module per area. Each module has `register(command)` that adds its sub-commands.

A command function takes the parsed arguments and the project logger and returns an exit code.

The modules are imported only when their commands run: `COMMANDS` names each command's module and one-line help,
so `trt-pipeline --help` lists every command without importing any, and `trt-pipeline list` does not import the
nightly, the farm or the Triton export. `module()` is the one way a command module is loaded on demand.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType

# command -> (its module in pipeline.commands, the one line `--help` shows for it), in `--help`'s order
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("core", "validate recipes without building"),
    "build": ("core", "build engines from a recipe"),
    "list": ("core", "list artifacts in the store"),
    "diff": ("core", "what differs between two artifacts"),
    "show": ("core", "show one artifact's manifest"),
    "inspect": ("model", "show a model's inputs, outputs, ops and what TensorRT cannot parse"),
    "init": ("model", "write a starting recipe for a model"),
    "promote": ("lifecycle", "put a build on a channel of a GPU tag (reuse, rebuild or refuse)"),
    "channel": ("lifecycle", "show a recipe's channels"),
    "history": ("lifecycle", "show a recipe's promotion history"),
    "export": ("lifecycle", "export a channel to a Triton model repository"),
    "gc": ("lifecycle", "remove old builds that no channel points at"),
    "fsck": ("lifecycle", "check the whole store (and remove leftovers with --repair)"),
    "nightly": ("nightly", "rebuild every recipe for every target, find regressions"),
    "validate": ("validation", "compare an engine with ONNX Runtime (needs a GPU)"),
    "infer": ("validation", "run an engine on .npy inputs (needs a GPU)"),
    "bench": ("validation", "measure an engine's latency (needs a GPU)"),
    "worker": ("farm", "join this machine to a build farm (a Ray cluster)"),
}

MODULES = tuple(dict.fromkeys(owner for owner, _ in COMMANDS.values()))  # each command module once, in that order


def module(name: str) -> ModuleType:
    """The command module `name` (e.g. "farm"), imported on first use."""
    return importlib.import_module(f"{__name__}.{name}")


def modules_for(words: Iterable[str]) -> list[str]:
    """The modules that the command named among `words` (a command line) needs; every module when none is named
    (`trt-pipeline --help`, a typo) so that argparse can describe or suggest all of them."""
    named = {COMMANDS[word][0] for word in words if word in COMMANDS}
    return [m for m in MODULES if m in named or not named]
