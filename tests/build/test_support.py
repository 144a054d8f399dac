"""pipeline.build.support: the parser's own support query on real models."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from pipeline.build.support import summary, unsupported
from pipeline.trt.backend import Backend

LOG = logging.getLogger("test.support")


def custom_op_model(path: Path) -> Path:
    """Relu, then com.microsoft's FastGelu, which TensorRT has no importer for."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu0"),
             helper.make_node("FastGelu", ["r"], ["y"], domain="com.microsoft", name="gelu0")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))
    return path


def test_a_model_the_parser_takes_whole_has_nothing_unsupported(models_dir: Path, rtx_backend: Backend) -> None:
    assert unsupported(rtx_backend, models_dir / "two_input.onnx", LOG) == []


def test_a_custom_op_is_named_with_its_domain_and_the_parsers_reason(tmp_path: Path, rtx_backend: Backend) -> None:
    (node,) = unsupported(rtx_backend, custom_op_model(tmp_path / "custom.onnx"), LOG)
    assert (node.index, node.name, node.op) == (1, "gelu0", "com.microsoft::FastGelu")
    assert "Plugin not found" in node.reason
    assert summary([node]).startswith("1 node(s) TensorRT's parser cannot take: op(s) com.microsoft::FastGelu (1); "
                                      "first: node 1 'gelu0' (com.microsoft::FastGelu): ")


def test_the_node_where_parsing_stops_is_named_not_its_neighbours(models_dir: Path, rtx_backend: Backend) -> None:
    """cleanup_needed: an If on a scalar input leaves the Reshape after it without a shape (graph-cleanup's cure)."""
    (node,) = unsupported(rtx_backend, models_dir / "cleanup_needed.onnx", LOG)
    assert (node.name, node.op) == ("y", "Reshape")
    assert not node.reason.startswith("Invalid Node") and "cudaError" not in node.reason
