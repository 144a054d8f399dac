"""graph-cleanup: onnx-graphsurgeon passes, the graph checked after each, the cleaned model kept with its hash."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

from pipeline.errors import BuildError
from pipeline.stages import graph_cleanup, parse
from pipeline.stages.context import Context
from pipeline.stages.graph_cleanup import (
    CLEANED_FILE,
    PASSES,
    CleanupSpec,
    planned_passes,
)
from tests.conftest import TINY_STAGES, run_stages

Recipe = Callable[..., Path]
ContextFor = Callable[..., Context]

CLEANUP_NEEDED = """\
name: cleanup-needed
version: 1.0.0
model: {{path: {{models}}/cleanup_needed.onnx}}
targets: [sm89]
stages:
  - parse: {{}}
{cleanup}  - network-flag: {{strongly_typed: true}}
  - memory-pool: {{workspace: 64MiB}}
  - serialize:
      profiles:
        - x: {{min: [1, 16], opt: [8, 16], max: [64, 16]}}
"""
FREEZE_MODE = "  - graph-cleanup: {freeze_inputs: {mode: 1}, fold_constants: true, passes: [cleanup, toposort]}\n"


def tiny_with(write_recipe: Recipe, cleanup: str) -> Path:
    stages = TINY_STAGES.replace("  - parse: {}\n", f"  - parse: {{}}\n  - graph-cleanup: {cleanup}\n")
    return write_recipe(f"name: t\nversion: 1.0.0\nmodel: {{path: {{models}}/tiny.onnx}}\ntargets: [sm89]\n{stages}")


def test_freezing_mode_makes_cleanup_needed_buildable(write_recipe: Recipe, build_context: ContextFor) -> None:
    ctx = build_context(write_recipe(CLEANUP_NEEDED.format(cleanup=FREEZE_MODE)))
    run_stages(ctx, "parse", "graph-cleanup")
    assert ctx.cleaned_path == ctx.onnx_path == ctx.scratch / CLEANED_FILE
    assert ctx.cleaned_sha256 == hashlib.sha256(ctx.cleaned_path.read_bytes()).hexdigest()
    cleaned = onnx.load(str(ctx.cleaned_path))
    onnx.checker.check_model(cleaned)
    assert [i.name for i in cleaned.graph.input] == ["x"]
    assert "If" not in {node.op_type for node in cleaned.graph.node}
    assert ctx.cleanup_record["passes"] == ["freeze_inputs", "fold_constants", "inline_ifs", "cleanup", "toposort"]
    assert ctx.cleanup_record["nodes_after"] < ctx.cleanup_record["nodes_before"]
    run_stages(ctx, "network-flag", "memory-pool", "serialize")
    assert ctx.network_record["inputs"] == {"x": {"dtype": "float", "shape": [-1, 16]}}
    assert ctx.network_record["outputs"]["y"]["shape"] == [-1, 4, 4]  # the `then` branch: mode == 1
    assert ctx.engine_path is not None and ctx.engine_path.stat().st_size > 0


def test_override_shapes_makes_an_input_static(write_recipe: Recipe, build_context: ContextFor) -> None:
    path = tiny_with(write_recipe, "{override_shapes: {x: [2, 4]}}")
    path.write_text(path.read_text().split("      profiles:")[0])  # a static input needs no profile
    ctx = build_context(path)
    run_stages(ctx, "parse", "graph-cleanup")
    cleaned = onnx.load(str(ctx.cleaned_path))
    dims = lambda value: [d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(cleaned.graph.input[0]) == [2, 4]
    assert dims(cleaned.graph.output[0]) == [2, 8]  # stale symbolic shapes were inferred again
    run_stages(ctx, "network-flag", "memory-pool", "serialize")
    assert ctx.network_record["inputs"] == {"x": {"dtype": "float", "shape": [2, 4]}}
    assert ctx.config_record["profiles"] == []
    assert ctx.engine_path is not None and ctx.engine_path.stat().st_size > 0


def test_cleaned_model_is_byte_stable(write_recipe: Recipe, build_context: ContextFor, tmp_path: Path) -> None:
    """The build key uses the cleaned model's hash: the same recipe must give the same bytes."""
    shas = []
    for _ in range(2):
        ctx = build_context(write_recipe(CLEANUP_NEEDED.format(cleanup=FREEZE_MODE)))
        run_stages(ctx, "parse", "graph-cleanup")
        shas.append(ctx.cleaned_sha256)
    assert shas[0] == shas[1]


def test_planned_passes() -> None:
    assert planned_passes(CleanupSpec()) == ["fold_constants", "inline_ifs", "cleanup", "toposort"]
    spec = CleanupSpec(fold_constants=False, freeze_inputs={"m": 1}, override_shapes={"x": (1,)},
                       passes=("toposort", "infer_shapes"))
    assert planned_passes(spec) == ["freeze_inputs", "override_shapes", "toposort", "infer_shapes"]


def test_infer_shapes_pass(write_recipe: Recipe, build_context: ContextFor) -> None:
    ctx = build_context(tiny_with(write_recipe, "{fold_constants: false, passes: [infer_shapes]}"))
    run_stages(ctx, "parse", "graph-cleanup")
    assert ctx.cleanup_record["passes"] == ["infer_shapes"]
    assert {v.name for v in onnx.load(str(ctx.cleaned_path)).graph.value_info} == {"matmul_out", "add_out"}


def drop_node(producing: str) -> Callable[[Any, CleanupSpec], Any]:
    """A deliberately broken pass: removes the node that produces `producing`."""

    def broken(graph: Any, spec: CleanupSpec) -> Any:
        graph.nodes = [node for node in graph.nodes if producing not in {t.name for t in node.outputs}]
        return graph

    return broken


def test_a_pass_that_orphans_a_tensor_is_named(write_recipe: Recipe, build_context: ContextFor,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PASSES, "toposort", drop_node("add_out"))
    ctx = build_context(tiny_with(write_recipe, "{}"))
    run_stages(ctx, "parse")
    with pytest.raises(BuildError) as caught:
        run_stages(ctx, "graph-cleanup")
    assert str(caught.value) == ("graph-cleanup: pass 'toposort' broke the graph: node 'y' (Relu) consumes "
                                 "'add_out', which nothing produces")
    assert ctx.cleaned_path is None


def test_a_pass_that_drops_an_output_is_named(write_recipe: Recipe, build_context: ContextFor,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PASSES, "cleanup", drop_node("y"))
    ctx = build_context(tiny_with(write_recipe, "{}"))
    run_stages(ctx, "parse")
    with pytest.raises(BuildError) as caught:
        run_stages(ctx, "graph-cleanup")
    assert str(caught.value) == "graph-cleanup: pass 'cleanup' broke the graph: output 'y' is not produced"


def unknown_op(graph: Any, spec: CleanupSpec) -> Any:
    """A deliberately broken pass that only the ONNX checker notices."""
    graph.nodes[-1].op = "NoSuchOp"
    return graph


def test_a_pass_the_checker_rejects_is_named(write_recipe: Recipe, build_context: ContextFor,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PASSES, "toposort", unknown_op)
    ctx = build_context(tiny_with(write_recipe, "{}"))
    run_stages(ctx, "parse")
    parsed = ctx.model.SerializeToString()
    with pytest.raises(BuildError) as caught:
        run_stages(ctx, "graph-cleanup")
    assert str(caught.value).startswith("graph-cleanup: pass 'toposort' broke the graph: ONNX checker: ")
    assert "NoSuchOp" in str(caught.value)
    assert ctx.model.SerializeToString() == parsed  # the passes ran twice, on parse's model as it was
    assert ctx.cleaned_path is None


def test_the_onnx_checker_runs_once(write_recipe: Recipe, build_context: ContextFor,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Not after every pass: once, on the bytes written (the passes are re-run with it only on failure)."""
    ctx = build_context(write_recipe(CLEANUP_NEEDED.format(cleanup=FREEZE_MODE)))
    run_stages(ctx, "parse")
    checked: list[Any] = []
    check_model = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model", lambda model, *a, **k: checked.append(model) or
                        check_model(model, *a, **k))
    run_stages(ctx, "graph-cleanup")
    assert checked == [ctx.cleaned_path.read_bytes()]


def reverse_nodes(graph: Any, spec: CleanupSpec) -> Any:
    graph.nodes.reverse()
    return graph


def test_order_is_checked_once_the_graph_is_sorted(write_recipe: Recipe, build_context: ContextFor,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PASSES, "cleanup", reverse_nodes)  # before toposort: an unsorted graph is fine
    ctx = build_context(tiny_with(write_recipe, "{}"))
    run_stages(ctx, "parse", "graph-cleanup")
    assert [n.op_type for n in onnx.load(str(ctx.cleaned_path)).graph.node] == ["MatMul", "Add", "Relu"]
    ctx = build_context(tiny_with(write_recipe, "{passes: [toposort, cleanup]}"))
    run_stages(ctx, "parse")
    with pytest.raises(BuildError) as caught:
        run_stages(ctx, "graph-cleanup")
    assert str(caught.value) == ("graph-cleanup: pass 'cleanup' broke the graph: node 'y' (Relu) consumes "
                                 "'add_out' before it is produced")


@pytest.fixture
def on_disk_recipe(write_recipe: Recipe, models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tiny with its weights in external data, and a protobuf limit small enough that parse leaves them on disk."""
    model = tmp_path / "external" / "tiny.onnx"
    model.parent.mkdir()
    onnx.save(onnx.load(str(models_dir / "tiny.onnx")), str(model), save_as_external_data=True,
              all_tensors_to_one_file=True, location="tiny.onnx.data", size_threshold=0)
    for module in (parse, graph_cleanup):  # the model file is 356 bytes, its weights 160
        monkeypatch.setattr(module, "PROTO_LIMIT", 500)
    recipe = tiny_with(write_recipe, "{}")
    recipe.write_text(recipe.read_text().replace(str(models_dir / "tiny.onnx"), str(model)))
    return recipe


def test_weights_left_on_disk_are_checked_beside_the_cleaned_model(
        on_disk_recipe: Path, build_context: ContextFor, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = build_context(on_disk_recipe)
    run_stages(ctx, "parse")
    assert not ctx.model.graph.initializer[0].raw_data  # left on disk
    run_stages(ctx, "graph-cleanup")
    cleaned = onnx.load(str(ctx.cleaned_path), load_external_data=False)
    assert {entry.value for tensor in cleaned.graph.initializer for entry in tensor.external_data
            if entry.key == "location"} == {graph_cleanup.WEIGHTS_FILE}
    monkeypatch.setitem(PASSES, "cleanup", unknown_op)
    ctx = build_context(on_disk_recipe)
    run_stages(ctx, "parse")
    with pytest.raises(BuildError, match="^graph-cleanup: pass 'cleanup' broke the graph: ONNX checker: .*NoSuchOp"):
        run_stages(ctx, "graph-cleanup")
    assert sorted(p.name for p in ctx.scratch.iterdir()) == [CLEANED_FILE, graph_cleanup.WEIGHTS_FILE]


def test_check_graph_accepts_the_shipped_models(models_dir: Path) -> None:
    import onnx_graphsurgeon as gs

    for name in ("tiny", "two_input", "cleanup_needed"):
        graph_cleanup.check_graph(gs.import_onnx(onnx.load(str(models_dir / f"{name}.onnx"))), "import", True)
