"""What a model is, before any recipe exists: its inputs and outputs, opset, weights, and what TensorRT cannot
parse (`trt-pipeline inspect`), and the starting recipe written from it (`trt-pipeline init`)."""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from pipeline.build.support import Unsupported, unsupported
from pipeline.errors import PipelineError
from pipeline.stages import parse
from pipeline.trt.backend import Backend

# Dynamic dimensions: the first one of an input is taken for a batch; any other (height, width, sequence) gets a
# range a user should check. Values a TensorRT profile can take for every common model family.
BATCH = (1, 8, 32)
OTHER = (16, 256, 1024)
DEFAULT_TARGETS = ("sm86", "sm89", "sm120")


def facts(path: Path, backend: Backend | None, log: logging.Logger) -> dict:
    """Inputs and outputs (dtype, dims; dynamic ones by name), opset, weights bytes and external data files, and
    the nodes `backend`'s parser cannot take (None when no backend is given)."""
    import onnx

    model = parse.read_model(path, weights=False)
    described = parse.describe(model)
    weights = sum(_tensor_bytes(init) for init in model.graph.initializer)
    refused: list[Unsupported] | None = None if backend is None else unsupported(backend, path, log)
    return {
        "model": str(path), "bytes": path.stat().st_size, "opset": described["opset"],
        "ir_version": model.ir_version, "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": described["inputs"], "outputs": described["outputs"],
        "dynamic": {name: [d for d in info["shape"] if isinstance(d, str)] for name, info in described["inputs"].items()
                    if any(isinstance(d, str) for d in info["shape"])},
        "nodes": len(model.graph.node),
        "ops": _ops(model),
        "weights_bytes": weights,
        "external_data": parse.external_names(model),
        "domains": sorted({o.domain or "ai.onnx" for o in model.opset_import}),
        "backend": backend.label() if backend else None,
        "unsupported": None if refused is None else [vars(node) for node in refused],
        "onnx": onnx.__version__,
    }


def _tensor_bytes(tensor: Any) -> int:
    import onnx

    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):  # string tensors and types numpy has no dtype for
        itemsize = 1
    return math.prod(tensor.dims) * itemsize


def _ops(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[op] = counts.get(op, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


# ---------------------------------------------------------------- init


def profile(shape: list) -> dict[str, list[int]] | None:
    """min/opt/max for an input with dynamic dimensions (None when it is static)."""
    if all(isinstance(d, int) and d > 0 for d in shape):
        return None
    points: dict[str, list[int]] = {"min": [], "opt": [], "max": []}
    for index, dim in enumerate(shape):
        fixed = dim if isinstance(dim, int) and dim > 0 else None
        chosen = BATCH if index == 0 else OTHER
        for label, value in zip(("min", "opt", "max"), chosen):
            points[label].append(fixed or value)
    return points


def recipe_name(path: Path) -> str:
    """A recipe name the schema accepts, from the model's file name: 'My Model.v2.onnx' -> 'my-model.v2'."""
    name = re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-._")
    return name or "model"


def recipe_text(model: Path, recipe: Path, found: dict, targets: tuple[str, ...] = DEFAULT_TARGETS) -> str:
    """A commented recipe for `model`, to be written at `recipe`; `check` accepts it as it is."""
    relative = os.path.relpath(model.resolve(), recipe.resolve().parent)
    lines = [
        f"# Written by `trt-pipeline init {model}`: a starting point. `trt-pipeline check {recipe}` checks it.",
        f"# Model: {len(found['inputs'])} input(s), {len(found['outputs'])} output(s), opset {found['opset']}, "
        f"{found['nodes']} nodes.",
        f"name: {recipe_name(model)}",
        "version: 1.0.0",
        "model:",
        f"  path: {relative}   # relative to this file",
        "backend: auto        # tensorrt when it imports (data-centre GPUs), else tensorrt-rtx",
        f"targets: [{', '.join(targets)}]   # one engine per GPU architecture; 'local' = this machine's GPU",
        "stages:",
        "  - parse: {check: true, infer_shapes: true}",
        "  - graph-cleanup: {fold_constants: true}   # freeze_inputs: {NAME: VALUE} cures an If on a scalar input",
        "  - network-flag: {strongly_typed: true}",
        "  - memory-pool: {workspace: 1GiB}",
        "  - serialize:",
        "      builder_optimization_level: 3",
    ]
    lines += _profile_lines(found)
    lines += [
        "validate:            # on a GPU: the engine against ONNX Runtime on the original model",
        "  atol: 1.0e-3",
        "  rtol: 1.0e-3",
        "  shapes: [min, opt, max]",
    ]
    return "\n".join(lines) + "\n"


def _profile_lines(found: dict) -> list[str]:
    profiles = {name: profile(info["shape"]) for name, info in found["inputs"].items()}
    dynamic = {name: points for name, points in profiles.items() if points}
    if not dynamic:
        return ["      # every input is static: no optimization profile needed"]
    lines = ["      profiles:   # one profile; the first dynamic dimension is taken for the batch"]
    for position, (name, points) in enumerate(dynamic.items()):
        named = [d for d in found["inputs"][name]["shape"][1:] if isinstance(d, str)]
        note = f"   # check the range of {', '.join(named)}" if named else ""
        prefix = "        - " if position == 0 else "          "
        lines.append(f"{prefix}{_key(name)}: {{min: {points['min']}, opt: {points['opt']}, "
                     f"max: {points['max']}}}{note}")
    return lines


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name) else f'"{name}"'


def write_recipe(path: Path, text: str, force: bool) -> None:
    """Create the recipe file (and its folder); an existing file is kept unless `force`."""
    if path.exists() and not force:
        raise PipelineError(f"{path} exists; not overwritten", hint="pass --force to replace it, or -o another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
