"""manifest.json: exactly what produced an engine, so that anyone can reproduce it."""

from __future__ import annotations

import platform
import socket
import time
from typing import Any

from pipeline import __version__
from pipeline.digest import file_sha256, json_sha256, plain
from pipeline.recipe import Recipe
from pipeline.stages import KEY_STAGES, ORDER, REGISTRY
from pipeline.stages.context import Context
from pipeline.trt.backend import Backend, installed_version
from pipeline.trt.target import Target

SCHEMA = 1
TOOLS = ("onnx", "onnx-graphsurgeon", "onnxruntime", "numpy")


def _settings(recipe: Recipe, stages: tuple[str, ...]) -> dict:
    """Stage settings as written (an absent stage is None), with files named by content: the timing cache and
    plugin libraries by sha256, not path. A recipe without plugins keeps the keys it had before they existed; a
    stage with its own `key` (precision: calibration data by sha256) gives its settings, and is left out when
    absent, so recipes without it keep their keys too."""
    settings = {stage: plain(recipe.stages.get(stage)) if REGISTRY[stage].key is None else REGISTRY[stage].key(
        recipe.stages[stage]) for stage in stages if stage in recipe.stages or REGISTRY[stage].key is None}
    serialize, written = recipe.spec("serialize"), settings.get("serialize")
    if written:
        cache = serialize.timing_cache
        if cache:
            written["timing_cache"] = file_sha256(cache.path) if cache.path.is_file() else None
        written["plugins"] = [file_sha256(p) if p.is_file() else None for p in serialize.plugins]
        if not written["plugins"]:
            del written["plugins"]
    return settings


def _target_key(target: Target) -> str:
    """'sm89' for TensorRT-RTX; full TensorRT builds for one GPU model, so 'sm80 NVIDIA A100-SXM4-80GB'."""
    return target.sm if target.gpu is None else f"{target.sm} {target.gpu}"


def build_key_inputs(recipe: Recipe, cleaned_sha256: str, backend: Backend, target: Target) -> dict:
    """Everything that determines the engine bytes, and nothing cosmetic (names, paths, comments)."""
    return {
        "settings": _settings(recipe, KEY_STAGES),
        "cleaned_sha256": cleaned_sha256,
        "backend": {"name": backend.name, "version": backend.version},
        "target": _target_key(target),
    }


def build_key(recipe: Recipe, cleaned_sha256: str, backend: Backend, target: Target) -> str:
    return json_sha256(build_key_inputs(recipe, cleaned_sha256, backend, target))


def source_key(recipe: Recipe, model: dict, backend: Backend, target: Target) -> str:
    """Like the build key, but from the inputs before any stage runs: the original model's hashes, every
    stage's settings and the versions of the tools that transform the graph. Cheap to compute, so an
    unchanged rebuild can be recognised without parsing or cleaning the model."""
    return json_sha256({
        "settings": _settings(recipe, ORDER),
        "model": {"sha256": model["sha256"], "external_data": [d["sha256"] for d in model["external_data"]]},
        "backend": {"name": backend.name, "version": backend.version},
        "target": _target_key(target),
        "tools": {name: installed_version(name) for name in TOOLS} | {"trt-pipeline": __version__},
    })


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
        "engine": {"file": engine.name, "sha256": file_sha256(engine), "bytes": engine.stat().st_size},
        "build": {
            "number": None,  # set by the store when it publishes
            "key": build_key(recipe, ctx.cleaned_sha256, ctx.backend, target),
            "source_key": source_key(recipe, ctx.model_record, ctx.backend, target),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "duration_s": round(sum(stage["seconds"] for stage in stages) + waited, 3),
            "waited_s": waited,
            "host": socket.gethostname(),
            "tool": {"name": "trt-pipeline", "version": __version__, "python": platform.python_version()},
            "stages": stages,
        },
        "validate": plain(recipe.validate),  # the recipe's validate: block as built (None: defaults)
        "validation": {"status": "not-run", "reason": "no validation has run on this artifact yet"},
    }
