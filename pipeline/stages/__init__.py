"""The five stages, keyed by the name used in recipes, in pipeline order.

A stage is a plain function from the build context to None; it reads earlier stages' results from the
context and leaves its own there. `PER_TARGET` stages run once per build target, the others once.
"""

from __future__ import annotations

from typing import Callable

from pipeline.stages.context import Context
from pipeline.stages import graph_cleanup, memory_pool, network_flag, parse, serialize

Stage = Callable[[Context], None]

STAGES: dict[str, Stage] = {
    "parse": parse.model_from_onnx,
    "graph-cleanup": graph_cleanup.cleaned_model_from_model,
    "network-flag": network_flag.network_from_onnx,
    "memory-pool": memory_pool.config_from_recipe,
    "serialize": serialize.engine_from_network,
}

PER_TARGET = frozenset({"network-flag", "memory-pool", "serialize"})
