"""The stage registry: every stage a recipe can name, in pipeline order.

Adding a stage is one module here (its spec, `freeze` and `run`, and a `STAGE` entry), one line below and one
entry in recipe.schema.json. A stage is a plain function from the build context to None.
"""

from __future__ import annotations

from pipeline.stages import (
    graph_cleanup,
    memory_pool,
    network_flag,
    parse,
    precision,
    serialize,
)
from pipeline.stages.stage import Stage

REGISTRY: dict[str, Stage] = {stage.name: stage for stage in (
    parse.STAGE,
    graph_cleanup.STAGE,
    precision.STAGE,
    network_flag.STAGE,
    memory_pool.STAGE,
    serialize.STAGE,
)}
ORDER = tuple(REGISTRY)
KEY_STAGES = tuple(name for name, stage in REGISTRY.items() if stage.in_key)
