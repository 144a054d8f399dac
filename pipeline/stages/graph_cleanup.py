"""graph-cleanup: onnx-graphsurgeon passes that make a graph buildable. A cheap structural check runs after every
pass, the ONNX checker once, on the model as written; only if it fails are the passes run again, the checker after
each, to name the pass that broke the graph.

Weights that parse left on disk (more than protobuf can hold) stay on disk: their files are put beside the cleaned
model before the passes (a reflink, else a copy inside the kernel; their hashes are known, not read again),
onnx-graphsurgeon reads one only if folding needs it, and weights the passes make go to a file of their own.
"""

from __future__ import annotations

import collections
import gc
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipeline.digest import file_sha256, model_sha256
from pipeline.errors import BuildError
from pipeline.files import clone, sync, write_bytes
from pipeline.stages.context import Context
from pipeline.stages.inline import folded_and_inlined
from pipeline.stages.parse import CHECKER, PROTO_LIMIT, describe, external_names, infer_shapes
from pipeline.stages.serialize import STREAM_FROM
from pipeline.stages.stage import Stage, frozen


@dataclass(frozen=True)
class CleanupSpec:
    fold_constants: bool = True
    freeze_inputs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    override_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=lambda: MappingProxyType({}))
    passes: tuple[str, ...] = ("cleanup", "toposort")


CLEANED_FILE = "model.cleaned.onnx"
WRITE = "cleaned_model_written"  # the background job that writes the cleaned model when it is the original file
CHECK = "cleanup_check"  # the name of its background job (pipeline.background)
WEIGHTS_FILE = f"{CLEANED_FILE}.data"
NEW_WEIGHTS_FILE = f"{CLEANED_FILE}.new.data"  # weights the passes made, beside the linked originals


def frozen_value(value: Any, dtype: Any, shape: Any) -> Any:
    """The constant an input is frozen to: `value` as `dtype`; a single value fills a static `shape`.
    The cleanup check feeds the original model these same values."""
    import numpy as np

    values = np.array(value, dtype=dtype)
    if values.size == 1 and shape is not None and all(isinstance(dim, int) for dim in shape):
        values = np.full(shape, values.reshape(()), dtype=values.dtype)
    return values


def _freeze_inputs(graph: Any, spec: CleanupSpec) -> Any:
    """Turn each named input into its frozen constant."""
    for name, value in spec.freeze_inputs.items():
        var = next(v for v in graph.inputs if v.name == name)
        graph.inputs.remove(var)
        var.to_constant(frozen_value(value, var.dtype, var.shape))  # in place: every consumer now reads it
    return graph


def _override_shapes(graph: Any, spec: CleanupSpec) -> Any:
    """Set static input shapes, forget stale intermediate shapes, and infer them again."""
    import onnx_graphsurgeon as gs

    for name, shape in spec.override_shapes.items():
        next(v for v in graph.inputs if v.name == name).shape = list(shape)
    keep = {t.name for t in graph.inputs + graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.name not in keep:
            tensor.shape = None
    return _infer_shapes(graph, spec)


def _fold_constants(graph: Any, spec: CleanupSpec) -> Any:
    """Fold, then drop what folding disconnected: graphsurgeon leaves it dangling, and the graph is only valid
    again after cleanup. An `If` whose condition folded is left to inline_ifs (graphsurgeon's own flattening can
    leave an output of the `If` with no producer)."""
    return graph.fold_constants(flatten_subgraphs=False).cleanup()


def _infer_shapes(graph: Any, spec: CleanupSpec) -> Any:
    """onnx shape inference (data_prop) on the exported graph; the weights are not sent through it."""
    import onnx_graphsurgeon as gs

    return _readable(gs.import_onnx(infer_shapes(gs.export_onnx(graph))), _weights_dir(graph))


PASSES: dict[str, Callable[[Any, CleanupSpec], Any]] = {
    "freeze_inputs": _freeze_inputs,
    "override_shapes": _override_shapes,
    "fold_constants": _fold_constants,
    "inline_ifs": lambda graph, spec: folded_and_inlined(graph),
    "cleanup": lambda graph, spec: graph.cleanup(),
    "toposort": lambda graph, spec: graph.toposort(),
    "infer_shapes": _infer_shapes,
}


def planned_passes(spec: CleanupSpec) -> list[str]:
    """Freeze, override, fold and inline constant `If`s (when asked), then the recipe's `passes` in order."""
    first = [name for name in ("freeze_inputs", "override_shapes") if getattr(spec, name)]
    return first + (["fold_constants", "inline_ifs"] if spec.fold_constants else []) + list(spec.passes)


def check_graph(graph: Any, after: str, ordered: bool = False) -> None:
    """Every consumed tensor and every output is produced; when `ordered` (the graph was sorted), by a node
    before its consumers. Cheap enough for every pass: the ONNX checker runs once, on the written model."""
    import onnx_graphsurgeon as gs

    broke = f"graph-cleanup: pass '{after}' broke the graph"
    produced = {t.name for t in graph.inputs} | {out.name for node in graph.nodes for out in node.outputs}
    earlier = {t.name for t in graph.inputs}
    for node in graph.nodes:
        for tensor in node.inputs:
            if not isinstance(tensor, gs.Variable) or not tensor.name:
                continue
            if tensor.name not in produced:
                raise BuildError(f"{broke}: node '{node.name}' ({node.op}) consumes '{tensor.name}', "
                                 "which nothing produces")
            if ordered and tensor.name not in earlier:
                raise BuildError(f"{broke}: node '{node.name}' ({node.op}) consumes '{tensor.name}' "
                                 "before it is produced")
        earlier.update(out.name for out in node.outputs)
    for tensor in graph.outputs:
        if isinstance(tensor, gs.Variable) and tensor.name not in produced:
            raise BuildError(f"{broke}: output '{tensor.name}' is not produced")


def _passes(graph: Any, spec: CleanupSpec) -> Iterator[tuple[str, Any]]:
    """Run the planned passes on `graph`, yielding each pass's name and the graph it returned."""
    for name in planned_passes(spec):
        graph = PASSES[name](graph, spec)
        yield name, graph


def cleaned_model_from_model(ctx: Context) -> None:
    import onnx_graphsurgeon as gs

    spec: CleanupSpec = ctx.recipe.spec("graph-cleanup")
    hashes = {data["path"]: data["sha256"] for data in ctx.model_record.get("external_data", [])}
    linked = _link_weights(ctx.model, ctx.recipe.model_path.parent, ctx.scratch, hashes, ctx.weight_copies)
    on_disk = bool(linked)
    weights_dir = str(ctx.scratch) if on_disk else None
    graph = _readable(gs.import_onnx(ctx.model), weights_dir)  # a new graph: ctx.model is not changed
    ordered = False
    for name, graph in _passes(graph, spec):  # noqa: B020 - each pass takes the graph the last one made
        ordered = ordered or name == "toposort"
        check_graph(graph, name, ordered)
        ctx.log.debug("graph-cleanup: %s -> %d nodes", name, len(graph.nodes))
    nodes_after = len(graph.nodes)
    same = unchanged(ctx.model, graph)
    # The original file serves as the cleaned model unless a pass was asked to annotate it (value_info)
    copy = same and "infer_shapes" not in planned_passes(spec)
    original, ctx.model_bytes = ctx.model_bytes if copy else None, None
    if original is None:  # the graph is exported: the checker's verdict now frees the bytes it holds before that
        ctx.background.result(CHECKER)
    if original is not None and not ctx.recipe.spec("parse").check and _checker_error(original):
        original = None  # not checked by parse, and the checker rejects it (nodes out of order): export the graph
    model = ctx.model if original is not None else gs.export_onnx(graph)
    del graph
    gc.collect()  # graphsurgeon's graph is a web of cycles (nodes <-> tensors): only a collection frees its arrays
    path = ctx.scratch / CLEANED_FILE
    if original is not None:
        # Nothing that computes changed, in a model parse read whole, which the ONNX checker accepts: the cleaned
        # model is the original file byte for byte (its sha256 known) rather than the same graph re-exported.
        # TensorRT's parser takes the bytes; the file is written (past the page cache, fsync'd) beside it.
        ctx.background.start(WRITE, write_bytes, path, original, True, True)
        ctx.onnx_bytes = (path, original)
        sha256, written = ctx.cleaned_sha256, None
    else:
        sha256, written = _save(model, path, linked)
    files = [] if original is not None else cleaned_files(path)
    del original
    if files and sum(file.stat().st_size for file in files) < STREAM_FROM:
        # To disk now, beside the build, rather than when publishing. Not a big model's: its engine is streamed to
        # disk as it is built, and flushing gigabytes of weights meanwhile slowed the build more than the flush
        # costs when publishing (2.25 GiB: 14.3 s -> 12.8 s, 3 runs each).
        ctx.background.start("cleaned_model_synced", sync, files)
    complaint = _checker_error(written) if written is not None and planned_passes(spec) else None
    del written  # the serialized model (as big as its weights) is not needed past the checker
    if complaint:
        raise BuildError(_broken_pass(ctx, spec, weights_dir) or f"graph-cleanup: the ONNX checker rejects the "
                                                                 f"cleaned model: {complaint}")
    ctx.cleanup_record = {"passes": planned_passes(spec), "nodes_before": len(ctx.model.graph.node),
                          "nodes_after": nodes_after, "unchanged": same}
    ctx.cleaned_sha256 = sha256
    ctx.onnx_path = ctx.cleaned_path = path
    # Beside the TensorRT build, joined before publishing. Weights left on disk (more than 2 GiB) are checked
    # before it instead: ONNX Runtime and TensorRT would otherwise hold them in memory at the same time.
    ctx.background.start(CHECK, ctx.checker(ctx.recipe, path, ctx.model_record, describe(model)["inputs"], ctx.log,
                                            ctx.background.stopping, same))
    del model
    ctx.model = None  # parse's model and the cleaned one are freed: the next stages read the cleaned file
    if on_disk:
        ctx.background.result(CHECK)


def unchanged(original: Any, graph: Any) -> bool:
    """The cleaned `graph` (onnx-graphsurgeon's) computes exactly what the `original` ModelProto does, by
    construction: the same opsets and functions, the same graph inputs and outputs in the same order, the same
    initializers (each still the original's tensor, untouched), and the same nodes, at most in another order
    (toposort of a graph that was already sorted another way). Compared piece by piece as graphsurgeon would
    export them, without exporting the weights. Annotations that compute nothing (value_info, the names and doc
    strings of graph and model) are not compared; anything else that differs makes it False."""
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, update_import_domains
    from onnx_graphsurgeon.ir.tensor import LazyValues

    a = original.graph
    if sorted((o.domain, o.version) for o in original.opset_import) != sorted(
            (o.domain, o.version) for o in update_import_domains(graph)):
        return False
    pairs = [(original.functions, map(OnnxExporter.export_function, graph.functions)),
             (a.input, (OnnxExporter.export_value_info_proto(t, False) for t in graph.inputs)),
             (a.output, (OnnxExporter.export_value_info_proto(t, False) for t in graph.outputs))]
    if a.sparse_initializer or any(_serialized(first) != _serialized(second) for first, second in pairs):
        return False
    weights = {tensor.name: tensor for tensor in a.initializer}
    constants = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    untouched = lambda t: isinstance(t._values, LazyValues) and weights.get(t.name) == t._values.tensor  # noqa: E731
    if not len(constants) == len(weights) == len(a.initializer) or not all(map(untouched, constants)):
        return False
    return collections.Counter(_serialized(a.node)) == collections.Counter(
        _serialized(map(OnnxExporter.export_node, graph.nodes)))


def _serialized(messages: Any) -> list[bytes]:
    return [message.SerializeToString(deterministic=True) for message in messages]


def cleaned_files(path: Path) -> list[Path]:
    """The cleaned model at `path` and its external data, if any: what goes next to every engine."""
    return sorted(path.parent.glob(f"{path.name}*"))


def _checker_error(model: bytes | Path) -> str | None:
    """The first line of the ONNX checker's complaint about a serialized model, or a saved one (by path: the
    checker then finds its external data); None when it has none."""
    import onnx

    try:
        onnx.checker.check_model(model if isinstance(model, bytes) else str(model))
    except onnx.checker.ValidationError as error:
        return str(error).strip().splitlines()[0]
    return None


def _broken_pass(ctx: Context, spec: CleanupSpec, weights_dir: str | None) -> str | None:
    """Once the cleaned model has failed the ONNX checker: the error naming the first pass after which the checker
    rejects the graph. The passes run again on a new graph of parse's model (ctx.model, unchanged), each result
    checked as a file in the scratch directory, where its external data is if it has any."""
    import onnx_graphsurgeon as gs

    graph = _readable(gs.import_onnx(ctx.model), weights_dir)
    for name, graph in _passes(graph, spec):  # noqa: B020 - each pass takes the graph the last one made
        try:
            data = gs.export_onnx(graph).SerializeToString()
        except Exception:  # protobuf's EncodeError: more than 2 GiB, which the checker cannot read either
            continue
        with tempfile.NamedTemporaryFile(dir=ctx.scratch, suffix=".onnx") as file:
            file.write(data)
            file.flush()
            complaint = _checker_error(Path(file.name)) if len(data) < PROTO_LIMIT else None
        if complaint:
            return f"graph-cleanup: pass '{name}' broke the graph: ONNX checker: {complaint}"
    return None


def _save(model: Any, path: Path, linked: Mapping[str, str]) -> tuple[str, bytes | Path]:
    """Write the cleaned model as onnx.save does, serializing it once. `linked`: the external-data files that
    _link_weights put beside `path` (name -> sha256); weights made in memory (folded, frozen) then go to
    NEW_WEIGHTS_FILE, never into a linked file (a reflink or copy of the original, unchanged). Without them,
    external data (WEIGHTS_FILE) only when the model is more than protobuf holds. Returns the model's sha256
    (model_sha256 of the file and its data files: a linked file's hash is known, only what is written here is
    read again) and what the ONNX checker reads: the bytes written, or `path` when they point at external data."""
    import onnx
    from onnx.external_data_helper import (
        convert_model_to_external_data,
        write_external_data_tensors,
    )

    if linked:
        convert_model_to_external_data(model, all_tensors_to_one_file=True, location=NEW_WEIGHTS_FILE)
        write_external_data_tensors(model, str(path.parent))
    try:
        data = model.SerializeToString()
    except Exception:  # protobuf's EncodeError: more than 2 GiB
        data = None
    if data is None or len(data) >= PROTO_LIMIT:
        onnx.save(model, str(path), save_as_external_data=True, location=WEIGHTS_FILE)
        return model_sha256(file_sha256(path), [file_sha256(path.parent / WEIGHTS_FILE)]), path
    path.write_bytes(data)
    sha256 = hashlib.sha256(data).hexdigest()
    if linked:
        names = external_names(model)
        names += [name for name in linked if name not in names]  # beside the engine, even if no longer used
        hashes = [linked[name] if name in linked else file_sha256(path.parent / name) for name in names]
        return model_sha256(sha256, hashes), path
    return sha256, data


def _link_weights(model: Any, source: Path, dest: Path, hashes: Mapping[str, str],
                  copies: dict[str, Path]) -> dict[str, str]:
    """Put each external-data file that `model` still points at (parse leaves the weights on disk when they are
    more than protobuf holds) beside the cleaned model, WEIGHTS_FILE, WEIGHTS_FILE.1, ... in first-use order, as a
    reflink where the file system allows, else copied inside the kernel (files.clone), and point the model's
    tensors at it (same offsets). The files are the originals byte for byte: their hashes are not read again.
    `source`: the original model's folder; `hashes`: the sha256 of its external-data files by path, as parse
    recorded them; `copies`: those already copied into the scratch directory while they were hashed (by path),
    moved instead (and taken out of `copies`). Returns {linked name: sha256}, empty when every weight is in
    memory."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    linked: dict[str, str] = {}
    names: dict[str, str] = {}  # location in the original -> name beside the cleaned model
    for tensor in (tensor for tensor in _get_all_tensors(model) if uses_external_data(tensor)):
        info = ExternalDataInfo(tensor)
        if info.location not in names:
            file = (source / info.location).resolve()
            if not file.is_relative_to(source.resolve()) or not file.is_file():
                raise BuildError(f"graph-cleanup: tensor '{tensor.name}' names external data {info.location!r}, "
                                 f"which is not a file inside {source}")
            name = names[info.location] = WEIGHTS_FILE + (f".{len(names)}" if names else "")
            copy = copies.pop(str(source / info.location), None)
            if copy is not None:  # copied beside its hash, before the build (cache.model_record): moved
                os.replace(copy, dest / name)
            else:
                clone(file, dest / name)
            known = hashes.get(str(source / info.location))
            linked[name] = known or file_sha256(dest / name)
        _point_at(tensor, names[info.location], info.offset, info.length, info.checksum)
    return linked


def _point_at(tensor: Any, location: str, offset: int, length: int, checksum: str | None = None) -> None:
    """Make `tensor` a reference to `length` bytes at `offset` of external data file `location`."""
    import onnx

    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length), ("checksum", checksum)):
        if value is not None:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)


def _readable(graph: Any, weights_dir: str | None) -> Any:
    """Let onnx-graphsurgeon read constants whose data is in external data (relative to `weights_dir`) when
    folding needs their values; exporting still writes the reference, not the data."""
    if weights_dir is None:
        return graph
    from onnx.external_data_helper import uses_external_data
    from onnx_graphsurgeon.ir.tensor import LazyValues

    class OnDisk(LazyValues):
        def load(self) -> Any:
            import numpy as np
            import onnx

            copy = onnx.TensorProto()
            copy.CopyFrom(self.tensor)  # no data in it: to_array reads it into the copy, not into the model
            return np.array(onnx.numpy_helper.to_array(copy, base_dir=self.weights_dir))

    for sub in [graph, *graph.subgraphs(recursive=True)]:
        for tensor in sub.tensors().values():
            values = getattr(tensor, "_values", None)  # graphsurgeon's own LazyValues, as imported
            if type(values) is LazyValues and uses_external_data(values.tensor):
                tensor._values = OnDisk(values.tensor)
                tensor._values.weights_dir = weights_dir
    return graph


def _weights_dir(graph: Any) -> str | None:
    """Where _readable() told the graph's on-disk constants to read from, if anywhere."""
    for tensor in graph.tensors().values():
        weights_dir = getattr(getattr(tensor, "_values", None), "weights_dir", None)
        if weights_dir:
            return weights_dir
    return None


def _freeze(body: Mapping[str, Any], base: Path) -> CleanupSpec:
    return CleanupSpec(**{key: frozen(value) for key, value in body.items()})


STAGE = Stage("graph-cleanup", CleanupSpec, _freeze, cleaned_model_from_model, optional=True)
