"""graph-cleanup: onnx-graphsurgeon passes, the graph checked after each, the cleaned model kept with its hash."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from models.make_models import MODELS
from pipeline.digest import model_sha256
from pipeline.errors import BuildError
from pipeline.stages import graph_cleanup, parse
from pipeline.stages.context import Context
from pipeline.stages.graph_cleanup import (
    CHECK,
    CLEANED_FILE,
    PASSES,
    CleanupSpec,
    planned_passes,
    unchanged,
)
from tests.conftest import TINY_STAGES, run_stages
from tests.stages.test_parse import unsorted_tiny

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
    """Shapes only annotate the graph: it is written with them (not the original file), and the cleanup check has
    nothing to compare."""
    ctx = build_context(tiny_with(write_recipe, "{fold_constants: false, passes: [infer_shapes]}"))
    run_stages(ctx, "parse", "graph-cleanup")
    assert ctx.cleanup_record["passes"] == ["infer_shapes"]
    assert ctx.cleanup_record["unchanged"] is True and ctx.background.result(CHECK)["status"] == "skipped"
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


# ---------------------------------------------------------------- weights on disk: put beside, not rewritten

DOUBLED = """\
name: doubled
version: 1.0.0
model: {{path: {model}}}
targets: [sm89]
stages:
  - parse: {{}}
  - graph-cleanup: {{fold_constants: false{freeze}}}
  - network-flag: {{}}
  - memory-pool: {{workspace: 64MiB}}
  - serialize:
      profiles:
        - x: {{min: [1, 64], opt: [2, 64], max: [4, 64]}}
"""


@pytest.fixture
def doubled_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """y = x @ (w * s): w [64, 64] in external data (16 KiB), and a protobuf limit that makes parse leave it there;
    freezing input s [64, 64] makes it a new weight of the same size."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(3).standard_normal((64, 64), dtype=np.float32)
    io = lambda name, *dims: helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))  # noqa: E731
    graph = helper.make_graph([helper.make_node("Mul", ["w", "s"], ["ws"]), helper.make_node("MatMul", ["x", "ws"], ["y"])],
                              "doubled", [io("x", "batch", 64), io("s", 64, 64)], [io("y", "batch", 64)],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "doubled" / "doubled.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path), save_as_external_data=True, location="doubled.onnx.data", size_threshold=1024)
    for module in (parse, graph_cleanup):
        monkeypatch.setattr(module, "PROTO_LIMIT", 4096)
    return path


def cleaned_location(ctx: Context, name: str) -> str:
    cleaned = onnx.load(str(ctx.cleaned_path), load_external_data=False)
    tensor = next(t for t in cleaned.graph.initializer if t.name == name)
    return next(entry.value for entry in tensor.external_data if entry.key == "location")


def test_unchanged_external_data_is_put_beside_the_cleaned_model_and_not_hashed_again(
        write_recipe: Recipe, doubled_model: Path, build_context: ContextFor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without passes that touch it the weight is unchanged: its file is put beside the cleaned model byte for byte, in a file of
    its own (a reflink where the file system has them, here ext4: a copy inside the kernel; never a hard link,
    which the ONNX checker refuses), and its hash is the one parse recorded, not read again."""
    data = doubled_model.with_name("doubled.onnx.data")
    ctx = build_context(write_recipe(DOUBLED.format(model=doubled_model, freeze="")))
    run_stages(ctx, "parse")
    hashed: list[Path] = []
    monkeypatch.setattr(graph_cleanup, "file_sha256", lambda path: hashed.append(path) or sha256(path))
    run_stages(ctx, "graph-cleanup")
    ctx.background.wait()
    linked = ctx.scratch / graph_cleanup.WEIGHTS_FILE
    assert cleaned_location(ctx, "w") == graph_cleanup.WEIGHTS_FILE
    assert linked.read_bytes() == data.read_bytes()
    assert linked.stat().st_ino != data.stat().st_ino and linked.stat().st_nlink == data.stat().st_nlink == 1
    assert hashed == []  # the cleaned model file was hashed from its bytes in memory, the weights not at all
    assert ctx.cleaned_sha256 == model_sha256(sha256(ctx.cleaned_path), [sha256(data)])
    assert graph_cleanup.cleaned_files(ctx.cleaned_path) == [ctx.cleaned_path, linked]


def test_a_changed_weight_is_written_not_linked(write_recipe: Recipe, doubled_model: Path,
                                                build_context: ContextFor) -> None:
    """Freezing s makes a new 16 KiB weight: it goes into a file of its own, the put-beside original stays the user's
    bytes (the user's file is untouched), the cleaned model holds both, and TensorRT builds from it."""
    import numpy as np
    from onnx import numpy_helper

    data = doubled_model.with_name("doubled.onnx.data")
    before = data.read_bytes()
    ctx = build_context(write_recipe(DOUBLED.format(model=doubled_model, freeze=", freeze_inputs: {s: 2.0}")))
    run_stages(ctx, "parse", "graph-cleanup")
    ctx.background.wait()
    cleaned = onnx.load(str(ctx.cleaned_path))  # with its external data, through onnx's own checks
    made = next(t for t in cleaned.graph.initializer if t.name == "s")
    assert cleaned_location(ctx, "s") == graph_cleanup.NEW_WEIGHTS_FILE
    assert cleaned_location(ctx, "w") == graph_cleanup.WEIGHTS_FILE
    assert np.array_equal(numpy_helper.to_array(made), np.full((64, 64), 2.0, np.float32))
    assert data.read_bytes() == before == (ctx.scratch / graph_cleanup.WEIGHTS_FILE).read_bytes()
    names = parse.external_names(onnx.load(str(ctx.cleaned_path), load_external_data=False))  # as hashed
    assert sorted(names) == [graph_cleanup.WEIGHTS_FILE, graph_cleanup.NEW_WEIGHTS_FILE]
    assert ctx.cleaned_sha256 == model_sha256(sha256(ctx.cleaned_path), [sha256(ctx.scratch / n) for n in names])
    run_stages(ctx, "network-flag", "memory-pool", "serialize")  # TensorRT builds from the files beside it
    assert ctx.engine_record["bytes"] == ctx.engine_path.stat().st_size > 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_cleanup_that_changes_nothing_keeps_the_original_file(write_recipe: Recipe, build_context: ContextFor,
                                                               models_dir: Path) -> None:
    """tiny has nothing to fold or drop, and is sorted already: the cleaned model is the original file byte for byte
    (its sha256 the one parse checked), and the cleanup check records why it ran nothing."""
    ctx = build_context(tiny_with(write_recipe, "{}"))
    run_stages(ctx, "parse", "graph-cleanup")
    assert ctx.cleaned_path.read_bytes() == (models_dir / "tiny.onnx").read_bytes()
    assert ctx.cleaned_sha256 == ctx.model_record["sha256"] == sha256(models_dir / "tiny.onnx")
    assert ctx.cleanup_record["unchanged"] is True and ctx.model_bytes is None
    check = ctx.background.wait()[CHECK]
    assert (check["status"], check["results"], check["seconds"]) == ("skipped", [], 0.0)
    assert check["reason"].startswith("graph-cleanup changed only the order of the graph's nodes")


def test_a_cleanup_that_drops_something_is_written_and_checked(write_recipe: Recipe, build_context: ContextFor,
                                                               tmp_path: Path, models_dir: Path) -> None:
    """An unused initializer, which the cleanup pass drops: the graph is exported and written, and ONNX Runtime
    compares it with the original."""
    model = MODELS["tiny"]()
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "unused"))
    onnx.save(model, str(tmp_path / "unused.onnx"))
    ctx = build_context(write_recipe(tiny_with(write_recipe, "{}").read_text().replace(
        str(models_dir / "tiny.onnx"), str(tmp_path / "unused.onnx"))))
    run_stages(ctx, "parse", "graph-cleanup")
    assert ctx.cleanup_record["unchanged"] is False
    assert "unused" not in {i.name for i in onnx.load(str(ctx.cleaned_path)).graph.initializer}
    assert ctx.cleaned_sha256 == sha256(ctx.cleaned_path) != ctx.model_record["sha256"]
    check = ctx.background.wait()[CHECK]
    assert check["status"] == "passed" and len(check["results"]) == 1


def test_an_unchecked_model_out_of_order_is_written_sorted(write_recipe: Recipe, build_context: ContextFor,
                                                           tmp_path: Path, models_dir: Path) -> None:
    """parse did not run the checker (check: false) and the nodes are out of order: toposort's graph computes the
    same, but the original file is no valid cleaned model, so the sorted graph is written."""
    model = unsorted_tiny(tmp_path / "unsorted.onnx")
    body = tiny_with(write_recipe, "{}").read_text().replace(str(models_dir / "tiny.onnx"), str(model))
    ctx = build_context(write_recipe(body.replace("- parse: {}", "- parse: {check: false}")))
    run_stages(ctx, "parse", "graph-cleanup")
    assert ctx.cleanup_record["unchanged"] is True and ctx.background.wait()[CHECK]["status"] == "skipped"
    cleaned = onnx.load(str(ctx.cleaned_path))
    assert [n.op_type for n in cleaned.graph.node] == ["MatMul", "Add", "Relu"]
    onnx.checker.check_model(cleaned)


def _tiny_graph() -> tuple[Any, Any]:
    import onnx_graphsurgeon as gs

    model = MODELS["tiny"]()
    return model, gs.import_onnx(model)


def _set_op(graph: Any) -> None:
    graph.nodes[2].op = "Sigmoid"


def _set_weight(graph: Any) -> None:
    graph.tensors()["fc.bias"].values = np.zeros(8, np.float32)


def _set_input_shape(graph: Any) -> None:
    graph.inputs[0].shape = [2, 4]


def _drop_output(graph: Any) -> None:
    graph.outputs = [graph.nodes[1].outputs[0]]
    graph.cleanup()


def _rename_tensor(graph: Any) -> None:
    graph.tensors()["add_out"].name = "renamed"


@pytest.mark.parametrize("change", [_set_op, _set_weight, _set_input_shape, _drop_output, _rename_tensor])
def test_unchanged_notices_what_computes(change: Callable[[Any], None]) -> None:
    model, graph = _tiny_graph()
    change(graph)
    assert not unchanged(model, graph)


def test_unchanged_ignores_node_order_and_annotations() -> None:
    model, graph = _tiny_graph()
    graph.nodes.reverse()
    graph.toposort()
    graph.name, graph.doc_string = "another", "annotated"
    graph.tensors()["add_out"].shape = ["batch", 8]  # value_info
    assert unchanged(model, graph)
    graph.nodes.reverse()
    assert unchanged(model, graph)  # a multiset: order is toposort's business (checked by check_graph)
