"""inline_ifs: an `If` whose condition is constant (a frozen sample rate) gives way to the branch it takes; the
audio_if model builds with TensorRT-RTX for each rate, with the numerics of the original."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.make_models import audio_if, write_model
from pipeline import cli
from pipeline.stages.graph_cleanup import PASSES, CleanupSpec, check_graph, planned_passes
from pipeline.stages.inline import folded_and_inlined, inline_constant_ifs

AUDIO_IF = """\
name: audio-if
version: 1.0.0
model: {{path: {{models}}/audio_if.onnx}}
backend: tensorrt-rtx
targets: [sm89]
stages:
  - parse: {{}}
  - graph-cleanup: {{freeze_inputs: {{sample_rate: {rate}}}}}
  - network-flag: {{strongly_typed: true}}
  - memory-pool: {{workspace: 64MiB}}
  - serialize:
      profiles:
        - audio: {{min: [1, 512], opt: [2, 1024], max: [4, 4096]}}
"""
AUDIO = np.random.default_rng(7).standard_normal((3, 1600)).astype(np.float32)  # 0.1 s at 16 kHz, three clips


@pytest.fixture(scope="session")
def audio_model(models_dir: Path) -> Path:
    path = models_dir / "audio_if.onnx"
    write_model(audio_if(), path)
    return path


def run(model: onnx.ModelProto | Path, **feed: np.ndarray) -> list[np.ndarray]:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {name: value for name, value in feed.items()
                              if name in {i.name for i in session.get_inputs()}})


def cleaned(model: onnx.ModelProto | Path, spec: CleanupSpec) -> onnx.ModelProto:
    """The graph-cleanup passes of `spec`, in order, each checked as the stage checks it; the ONNX checker last."""
    graph = gs.import_onnx(onnx.load(str(model)) if isinstance(model, Path) else model)
    for name in planned_passes(spec):
        graph = PASSES[name](graph, spec)
        check_graph(graph, name, ordered=name == "toposort")
    result = gs.export_onnx(graph)
    onnx.checker.check_model(result, full_check=True)
    return result


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def rate(value: int) -> np.ndarray:
    return np.array(value, np.int64)


@pytest.mark.parametrize(("sample_rate", "resize_scale"), [(16000, None), (8000, 2.0), (48000, 1 / 3)])
def test_freezing_the_rate_inlines_the_branch_it_takes(audio_model: Path, sample_rate: int,
                                                        resize_scale: float | None) -> None:
    model = cleaned(audio_model, CleanupSpec(freeze_inputs={"sample_rate": sample_rate}))
    assert "If" not in ops(model)
    assert [i.name for i in model.graph.input] == ["audio"]
    assert [o.name for o in model.graph.output] == ["speech", "frames"]
    resizes = [node for node in model.graph.node if node.op_type == "Resize"]  # 8000 and 48000: the nested If
    scales = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert [float(scales[node.input[2]][-1]) for node in resizes] == ([] if resize_scale is None
                                                                      else [pytest.approx(resize_scale)])
    # what the branch made of the rate alone (rate / 16000) is a constant now: the output graphsurgeon lost
    assert "Cast" not in ops(model) and "Div" not in ops(model)
    for want, got in zip(run(audio_model, audio=AUDIO, sample_rate=rate(sample_rate)), run(model, audio=AUDIO)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_graphsurgeons_own_flattening_loses_an_if_output(audio_model: Path) -> None:
    """Why inline_ifs exists: fold_constants' flatten_subgraphs leaves the `If` output `scale` (the branch's
    rate / 16000, folded to a constant) with no producer. If onnx-graphsurgeon fixes it, this fails: the pass may
    then go."""
    graph = gs.import_onnx(onnx.load(str(audio_model)))
    sample_rate = graph.tensors()["sample_rate"]
    graph.inputs.remove(sample_rate)
    sample_rate.to_constant(rate(16000))
    graph.fold_constants().cleanup()
    with pytest.raises(Exception, match="consumes 'scale', which nothing produces"):
        check_graph(graph, "fold_constants")


def test_an_if_on_a_live_input_is_left_alone(audio_model: Path) -> None:
    model = cleaned(audio_model, CleanupSpec())  # sample_rate not frozen: the condition is not a constant
    assert ops(model).count("If") == 1
    graph = gs.import_onnx(model)
    assert inline_constant_ifs(graph) == 0
    for value in (16000, 8000, 48000):
        for want, got in zip(run(audio_model, audio=AUDIO, sample_rate=rate(value)),
                             run(model, audio=AUDIO, sample_rate=rate(value))):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("sample_rate", [16000, 8000])
def test_audio_if_builds_end_to_end(write_recipe: Callable[..., Path], audio_model: Path, tmp_path: Path,
                                    sample_rate: int) -> None:
    """`trt-pipeline build` in a temp store: graph-cleanup inlines the `If`, the cleanup check (ONNX Runtime on the
    original with this sample_rate vs the cleaned graph) passes, and TensorRT-RTX builds the engine."""
    store = tmp_path / "store"
    assert cli.main(["--store", str(store), "-q", "build", str(write_recipe(AUDIO_IF.format(rate=sample_rate)))]) == 0
    (artifact,) = (store / "audio-if" / "1.0.0").glob("sm89.*")
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["cleanup"]["passes"] == ["freeze_inputs", "fold_constants", "inline_ifs", "cleanup", "toposort"]
    check = manifest["cleanup_check"]
    assert check["status"] == "passed" and check["frozen_inputs"] == {"sample_rate": sample_rate}
    assert {name for row in check["results"] for name in row["outputs"]} == {"speech", "frames"}
    engines = [path for path in artifact.iterdir() if path.suffix in {".engine", ".plan"}]
    assert engines and all(path.stat().st_size > 0 for path in engines)


# ---------------------------------------------------------------- small graphs for the corner cases


def _graph(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializers),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _vector(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [3])


def _branch(name: str, nodes: list[onnx.NodeProto], outputs: list[str],
            initializers: tuple[onnx.TensorProto, ...] = ()) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [_vector(out) for out in outputs], list(initializers))


def test_branch_outputs_that_are_graph_outputs_initializers_or_shared_keep_their_names() -> None:
    """The taken branch returns an initializer of its own (no node makes it), and one of its tensors twice, for
    three If outputs that are graph outputs, one of which is read in the outer graph too; a tensor of the same
    name sits in the other branch."""
    weights = numpy_helper.from_array(np.array([0.5, 1.5, -1.0], np.float32), "w")
    then = _branch("then", [helper.make_node("Neg", ["x"], ["t"], name="neg")], ["w", "t", "t"], (weights,))
    other = _branch("else", [helper.make_node("Abs", ["x"], ["u"], name="abs"),
                             helper.make_node("Identity", ["u"], ["t"], name="copy")], ["u", "t", "u"])
    model = _graph([helper.make_node("Neg", ["x"], ["outer_t"], name="t"),
                    helper.make_node("If", ["flag"], ["a", "b", "c"], name="choose", then_branch=then,
                                     else_branch=other),
                    helper.make_node("Add", ["outer_t", "a"], ["d"], name="d")],
                   [_vector("x"), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                   [_vector("a"), _vector("b"), _vector("c"), _vector("d")], [])
    x = np.array([1.0, -2.0, 3.0], np.float32)
    # Expected values by hand: ONNX Runtime 1.32 itself gets this If wrong (a branch that returns one tensor for
    # two outputs gives zeros for one of them, and the else branch's first output is then's initializer).
    expected = {True: [numpy_helper.to_array(weights), -x, -x, numpy_helper.to_array(weights) - x],
                False: [abs(x), abs(x), abs(x), abs(x) - x]}
    for flag in (True, False):
        result = cleaned(model, CleanupSpec(freeze_inputs={"flag": flag}))
        assert "If" not in ops(result)
        assert [o.name for o in result.graph.output] == ["a", "b", "c", "d"]
        for want, got in zip(expected[flag], run(result, x=x)):
            np.testing.assert_array_equal(got, want)


def test_tensor_names_that_clash_are_made_unique() -> None:
    """Two Ifs whose branches use the same local name: both inlined, every name still unique."""
    def if_node(name: str, inputs: str, output: str) -> onnx.NodeProto:
        return helper.make_node("If", ["flag"], [output], name=name,
                                then_branch=_branch("then", [helper.make_node("Relu", [inputs], ["tmp"])], ["tmp"]),
                                else_branch=_branch("else", [helper.make_node("Neg", [inputs], ["tmp"])], ["tmp"]))

    model = _graph([if_node("first", "x", "y1"), if_node("second", "y1", "y2")],
                   [_vector("x"), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])], [_vector("y2")], [])
    result = cleaned(model, CleanupSpec(freeze_inputs={"flag": False}))
    # four tensors were named `tmp`: the first If's is named after it; the second's makes the graph output `y2`
    assert [(node.op_type, list(node.output)) for node in result.graph.node] == [
        ("Neg", ["first/tmp"]), ("Neg", ["y2"])]
    x = np.array([1.0, -2.0, 3.0], np.float32)
    np.testing.assert_array_equal(run(result, x=x)[0], run(model, x=x, flag=np.array(False))[0])


def test_nested_if_in_the_taken_branch_is_inlined_too() -> None:
    """The inner If's condition reads the frozen input from two scopes up; folding inside the branch makes it a
    constant, and folded_and_inlined keeps going until no If is left."""
    inner = helper.make_node("If", ["inner_flag"], ["inner_out"], name="inner",
                             then_branch=_branch("it", [helper.make_node("Mul", ["x", "x"], ["sq"])], ["sq"]),
                             else_branch=_branch("ie", [helper.make_node("Sqrt", ["x"], ["rt"])], ["rt"]))
    then = _branch("then", [helper.make_node("Greater", ["mode", "one"], ["inner_flag"]), inner],
                   ["inner_out"])
    model = _graph([helper.make_node("Greater", ["mode", "zero"], ["outer_flag"]),
                    helper.make_node("If", ["outer_flag"], ["y"], name="outer", then_branch=then,
                                     else_branch=_branch("else", [helper.make_node("Abs", ["x"], ["ab"])], ["ab"]))],
                   [_vector("x"), helper.make_tensor_value_info("mode", TensorProto.INT64, [])], [_vector("y")],
                   [numpy_helper.from_array(np.array(0, np.int64), "zero"),
                    numpy_helper.from_array(np.array(1, np.int64), "one")])
    x = np.array([1.0, 4.0, 9.0], np.float32)
    for mode, op in ((2, "Mul"), (1, "Sqrt"), (0, "Abs")):
        result = cleaned(model, CleanupSpec(freeze_inputs={"mode": mode}))
        assert ops(result) == [op]
        np.testing.assert_array_equal(run(result, x=x)[0], run(model, x=x, mode=rate(mode))[0])


def test_folded_and_inlined_leaves_a_graph_without_constant_ifs_as_it_is(audio_model: Path) -> None:
    graph = gs.import_onnx(onnx.load(str(audio_model)))
    before = [(node.op, node.name) for node in graph.nodes]
    assert [(node.op, node.name) for node in folded_and_inlined(graph).nodes] == before
