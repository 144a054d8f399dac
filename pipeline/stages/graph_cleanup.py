"""graph-cleanup: onnx-graphsurgeon passes that make a graph buildable. The graph is checked after every pass."""

from __future__ import annotations

from typing import Any, Callable

from pipeline.context import Context
from pipeline.digest import file_sha256
from pipeline.errors import BuildError
from pipeline.recipe import CleanupSpec
from pipeline.stages.parse import PROTO_LIMIT

CLEANED_FILE = "model.cleaned.onnx"


def _freeze_inputs(graph: Any, spec: CleanupSpec) -> Any:
    """Turn each named input into a constant of its dtype (a scalar value fills the input's static shape)."""
    import numpy as np

    for name, value in spec.freeze_inputs.items():
        var = next(v for v in graph.inputs if v.name == name)
        values = np.array(value, dtype=var.dtype)
        static = var.shape is not None and all(isinstance(d, int) for d in var.shape)
        if values.size == 1 and static:
            values = np.full(var.shape, values.reshape(()), dtype=var.dtype)
        graph.inputs.remove(var)
        var.to_constant(values)  # in place: every consumer, in subgraphs too, now reads the constant
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
    """Fold, then drop what folding disconnected (e.g. the untaken branch of an `If`): graphsurgeon leaves it
    dangling, and the graph is only valid again after cleanup."""
    return graph.fold_constants().cleanup()


def _infer_shapes(graph: Any, spec: CleanupSpec) -> Any:
    import onnx
    import onnx_graphsurgeon as gs

    return gs.import_onnx(onnx.shape_inference.infer_shapes(gs.export_onnx(graph), data_prop=True))


PASSES: dict[str, Callable[[Any, CleanupSpec], Any]] = {
    "freeze_inputs": _freeze_inputs,
    "override_shapes": _override_shapes,
    "fold_constants": _fold_constants,
    "cleanup": lambda graph, spec: graph.cleanup(),
    "toposort": lambda graph, spec: graph.toposort(),
    "infer_shapes": _infer_shapes,
}


def planned_passes(spec: CleanupSpec) -> list[str]:
    """Freeze, override, fold (when asked), then the recipe's `passes` in order."""
    first = [name for name in ("freeze_inputs", "override_shapes") if getattr(spec, name)]
    return first + (["fold_constants"] if spec.fold_constants else []) + list(spec.passes)


def check_graph(graph: Any, after: str) -> None:
    """Every consumed tensor is produced, and the ONNX checker accepts the exported model."""
    import onnx
    import onnx_graphsurgeon as gs

    produced = {t.name for t in graph.inputs} | {out.name for node in graph.nodes for out in node.outputs}
    for node in graph.nodes:
        for tensor in node.inputs:
            if isinstance(tensor, gs.Variable) and tensor.name and tensor.name not in produced:
                raise BuildError(f"graph-cleanup: pass '{after}' broke the graph: node '{node.name}' ({node.op}) "
                                 f"consumes '{tensor.name}', which nothing produces")
    for tensor in graph.outputs:
        if isinstance(tensor, gs.Variable) and tensor.name not in produced:
            raise BuildError(f"graph-cleanup: pass '{after}' broke the graph: output '{tensor.name}' is not produced")
    model = gs.export_onnx(graph)
    if model.ByteSize() < PROTO_LIMIT:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as error:
            first = str(error).strip().splitlines()[0]
            raise BuildError(f"graph-cleanup: pass '{after}' broke the graph: ONNX checker: {first}") from None


def cleaned_model_from_model(ctx: Context) -> None:
    import onnx
    import onnx_graphsurgeon as gs

    spec: CleanupSpec = ctx.recipe.spec("graph-cleanup")
    graph = gs.import_onnx(ctx.model)
    nodes_before = len(graph.nodes)
    for name in planned_passes(spec):
        graph = PASSES[name](graph, spec)
        check_graph(graph, name)
        ctx.log.debug("graph-cleanup: %s -> %d nodes", name, len(graph.nodes))
    model = gs.export_onnx(graph)
    path = ctx.scratch / CLEANED_FILE
    large = model.ByteSize() >= PROTO_LIMIT
    onnx.save(model, str(path), save_as_external_data=large, location=f"{CLEANED_FILE}.data" if large else None)
    ctx.model = model
    ctx.onnx_path = ctx.cleaned_path = path
    ctx.cleaned_sha256 = file_sha256(path)
    ctx.cleanup_record = {"passes": planned_passes(spec), "nodes_before": nodes_before, "nodes_after": len(graph.nodes)}
