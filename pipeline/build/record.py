"""manifest.json: exactly what produced an engine, so that anyone can reproduce it."""

from __future__ import annotations

import platform
import socket
from typing import Any

from pipeline import __version__, clock
from pipeline.build.cache import build_key, source_key
from pipeline.digest import file_sha256, plain
from pipeline.stages.context import Context

SCHEMA = 1
def manifest(ctx: Context, stages: list[dict[str, Any]], started: float, waited: float = 0.0,
             check: dict | None = None, precision_check: dict | None = None) -> dict:
    """`waited`: seconds the build waited after its stages for the checks running beside it; `check`: the
    cleanup check's record (None without graph-cleanup); `precision_check`: the precision check's (its accuracy
    delta), kept in the `precision` block (None without a precision stage)."""
    recipe, target = ctx.recipe, ctx.target
    engine = ctx.engine_path
    model = dict(ctx.model_record)
    model.update(cleaned_sha256=ctx.cleaned_sha256,
                 cleaned_file=ctx.cleaned_path.name if ctx.cleaned_path else None)
    return {
        "schema": SCHEMA,
        "recipe": {"name": recipe.name, "version": recipe.version, "path": str(recipe.path.resolve()),
                   "sha256": recipe.sha256},
        "model": model,
        "cleanup": ctx.cleanup_record or None,
        "cleanup_check": check,
        "precision": {**ctx.precision_record, "check": precision_check} if ctx.precision_record else None,
        "backend": {"name": ctx.backend.name, "version": ctx.backend.version},
        "target": {"name": target.name, "tag": target.tag, "compute_capability": target.compute_capability,
                   "gpu": target.gpu},
        "network": ctx.network_record,
        "config": ctx.config_record,
        "engine": ctx.engine_record or {"file": engine.name, "sha256": file_sha256(engine),
                                        "bytes": engine.stat().st_size},
        "build": {
            "number": None,  # set by the store when it publishes
            "key": build_key(recipe, ctx.cleaned_sha256, ctx.backend, target),
            "source_key": source_key(recipe, ctx.model_record, ctx.backend, target),
            "created_at": clock.utc(started),
            "duration_s": round(sum(stage["seconds"] for stage in stages) + waited, 3),
            "waited_s": waited,
            "host": socket.gethostname(),
            "tool": {"name": "trt-pipeline", "version": __version__, "python": platform.python_version()},
            "stages": stages,
        },
        "validate": plain(recipe.validate),  # the recipe's validate: block as built (None: defaults)
        "validation": {"status": "not-run", "reason": "no validation has run on this artifact yet"},
    }
