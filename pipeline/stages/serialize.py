"""serialize: build_serialized_network, then the plan goes into this target's staged artifact directory."""

from __future__ import annotations

from pipeline.context import Context
from pipeline.errors import BuildError
from pipeline.store import write_bytes

ENGINE_FILE = "engine.plan"


def engine_from_network(ctx: Context) -> None:
    plan = ctx.builder.build_serialized_network(ctx.network, ctx.config)
    if plan is None:
        detail = "; ".join(ctx.trt_logger.errors[-3:]) or "no message from TensorRT"
        raise BuildError(f"serialize: {ctx.backend.label()} could not build the engine for {ctx.target.tag}: {detail}",
                         hint="run with -v for TensorRT's full log (also in the scratch build.log)")
    ctx.engine_path = ctx.staged / ENGINE_FILE
    write_bytes(ctx.engine_path, memoryview(plan))
    del plan
