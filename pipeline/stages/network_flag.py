"""network-flag: create the network with the recipe's creation flags, then let the ONNX parser fill it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import interrupt
from pipeline.digest import file_sha256
from pipeline.errors import BuildError
from pipeline.stages.context import Context
from pipeline.stages.graph_cleanup import WRITE
from pipeline.stages.parse import CHECKER
from pipeline.stages.stage import Stage
from pipeline.trt.backend import Backend


@dataclass(frozen=True)
class FlagSpec:
    explicit_batch: bool = True
    strongly_typed: bool = False


def creation_flags(spec: FlagSpec, backend: Backend) -> tuple[int, list[str], list[str]]:
    """(bit mask, flags set, notes) for this backend. EXPLICIT_BATCH only exists before TensorRT 10 matters;
    STRONGLY_TYPED is always on in TensorRT 11, so it is not set there."""
    mask, names, notes = 0, [], []
    explicit = backend.member("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH")
    if spec.explicit_batch:
        if explicit is not None and not backend.is_rtx and backend.major < 10:
            mask |= 1 << int(explicit)
            names.append("EXPLICIT_BATCH")
        else:
            notes.append(f"explicit batch is the only mode in {backend.label()}; EXPLICIT_BATCH not set")
    if spec.strongly_typed:
        if not backend.is_rtx and backend.major >= 11:
            notes.append(f"{backend.label()} is always strongly typed; STRONGLY_TYPED not set")
        else:
            mask |= 1 << int(backend.require("NetworkDefinitionCreationFlag", "STRONGLY_TYPED", "strongly_typed"))
            names.append("STRONGLY_TYPED")
    return mask, names, notes


def parser_errors(parser: Any) -> list[str]:
    """Every error the ONNX parser recorded, as 'node NAME (OP): DESCRIPTION'."""
    found = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        name = error.node_name() if hasattr(error, "node_name") else f"#{error.node()}"
        op = error.node_operator() if hasattr(error, "node_operator") else "?"
        found.append(f"node '{name or '?'}' ({op or '?'}): {error.desc().strip()}")
    return found


def log_parser_errors(log: logging.Logger, errors: list[str]) -> None:
    """Each parser error's first line at ERROR (the console); TensorRT's multi-line rest (shape-analyzer
    internals, a misleading cudaError on CPU-only machines) at INFO: in build.log, on the console with -v."""
    for error in errors:
        first, _, rest = error.strip().partition("\n")
        log.error("ONNX parser: %s", first)
        if rest.strip():
            log.info("ONNX parser: %s (full text):\n%s", first, rest.rstrip())


def load_plugins(registry: Any, ctx: Context) -> list[dict]:
    """Load the recipe's plugin libraries before parsing, so the parser finds their creators; [{path, sha256}]."""
    loaded = []
    for path in ctx.recipe.spec("serialize").plugins:
        before = len(ctx.trt_logger.errors)
        if registry.load_library(str(path)) is None:
            detail = next(iter(ctx.trt_logger.errors[before:]), "no message from TensorRT")
            raise BuildError(f"network-flag: {ctx.backend.label()} cannot load plugin library {path}: {detail}")
        loaded.append({"path": str(path), "sha256": file_sha256(path)})
    return loaded


def network_from_onnx(ctx: Context) -> None:
    trt = ctx.backend.trt
    mask, asked, notes = creation_flags(ctx.recipe.spec("network-flag"), ctx.backend)
    ctx.builder = trt.Builder(ctx.trt_logger)
    plugins = load_plugins(ctx.builder.get_plugin_registry(), ctx)
    ctx.network = ctx.builder.create_network(mask)
    # Record the flags the network really has: TensorRT-RTX, for one, is strongly typed whether asked or not.
    names = [name for name, flag in trt.NetworkDefinitionCreationFlag.__members__.items()
             if ctx.network.get_flag(flag)]
    notes += [f"{ctx.backend.label()} sets {name} on every network" for name in names if name not in asked]
    for note in notes:
        ctx.log.info("network-flag: %s", note)
    parser = trt.OnnxParser(ctx.network, ctx.trt_logger)
    # Only a model with external data has any (graph-cleanup and precision write none into an embedded model).
    external = bool(ctx.model_record.get("external_data"))
    ctx.background.release()  # TensorRT's parser and builder let go of the GIL: parse's ONNX checker runs meanwhile
    held, ctx.onnx_bytes = ctx.onnx_bytes, None
    data = held[1] if held is not None and held[0] == ctx.onnx_path else None
    if data is None:
        ctx.background.result(WRITE)  # the file, when graph-cleanup writes it beside the first target's parse
    with interrupt.deferred():  # as for the build: a signal raised inside TensorRT's logger callback is only printed
        if external:
            parsed, ctx.parser_weights = parse_onnx(parser, ctx.onnx_path)
        else:  # the cleaned model's bytes when graph-cleanup holds them, else its file
            parsed = parser.parse(data, str(ctx.onnx_path)) if data is not None else \
                parser.parse_from_file(str(ctx.onnx_path))
    del held, data
    ctx.background.result(CHECKER)  # the checker's verdict on the model comes first, and before any engine is built
    if not parsed:
        errors = parser_errors(parser) or ctx.trt_logger.errors[-1:] or ["no detail given"]
        log_parser_errors(ctx.log, errors)
        raise BuildError(f"network-flag: the TensorRT ONNX parser reported {len(errors)} error(s) in "
                         f"{ctx.onnx_path.name}; first: {errors[0].splitlines()[0]}",
                         hint="graph-cleanup (freeze_inputs, override_shapes, fold_constants) often cures this; "
                              "each parser error's full text is in the build log (-v: also on the terminal)")
    ctx.parser = parser
    ctx.network_record = {"flags": names, "plugins": plugins, "notes": notes, "layers": ctx.network.num_layers,
                          "inputs": tensors(ctx.network, ctx.network.num_inputs, ctx.network.get_input),
                          "outputs": tensors(ctx.network, ctx.network.num_outputs, ctx.network.get_output)}


def parse_onnx(parser: Any, path: Path) -> tuple[bool, list[Any]]:
    """Fill the parser's network from the model at `path`. Initializers in external data are handed to the
    parser from a read-only memory map of their file (`load_model_proto` + `load_initializer`): the parser reads
    the pages it needs from the page cache instead of copying every weight into memory of its own. Returns
    whether it parsed and the maps, which must outlive the parser (and the network that borrows its weights).
    A model without external data, or a parser without `load_initializer`, is parsed from the file."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    external = [tensor for tensor in model.graph.initializer if uses_external_data(tensor)]
    if not external or not hasattr(parser, "load_initializer"):
        return parser.parse_from_file(str(path)), []
    if not parser.load_model_proto(model.SerializeToString(), str(path)):
        return False, []
    del model
    maps: dict[str, Any] = {}
    for tensor in external:
        info = ExternalDataInfo(tensor)
        if info.location not in maps:
            maps[info.location] = _mapped(path.parent / info.location)
        view, offset = maps[info.location], info.offset or 0
        length = info.length if info.length is not None else view.size - offset
        if offset + length > view.size or not parser.load_initializer(tensor.name, view.ctypes.data + offset,
                                                                       length):
            return False, list(maps.values())
    return parser.parse_model_proto(), list(maps.values())


def _mapped(path: Path) -> Any:
    """A read-only memory map of a file, as a numpy byte array (whose address the parser takes)."""
    import mmap

    import numpy as np

    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return np.zeros(0, np.uint8)
        return np.frombuffer(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)


def tensors(network: Any, count: int, get: Any) -> dict[str, dict]:
    """The engine's I/O as the network sees it: name -> dtype and shape (-1 for a dynamic dimension)."""
    found = {}
    for index in range(count):
        tensor = get(index)
        found[tensor.name] = {"dtype": str(tensor.dtype).rsplit(".", 1)[-1].lower(), "shape": list(tensor.shape)}
    return found


def _freeze(body: Mapping[str, Any], base: Path) -> FlagSpec:
    return FlagSpec(**body)


STAGE = Stage("network-flag", FlagSpec, _freeze, network_from_onnx, per_target=True, in_key=True)
