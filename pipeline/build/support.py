"""Which nodes of a model TensorRT's ONNX parser cannot take, from the parser's own support query.

`OnnxParser.supports_model_v2` splits the graph into subgraphs and says which it can import; its errors name
the node, its operator and why. Nothing is built, so it costs a fraction of a second (ResNet-50: ~0.1 s).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.recipe import Recipe
from pipeline.stages.network_flag import FlagSpec, creation_flags
from pipeline.trt.backend import Backend, make_logger


@dataclass(frozen=True)
class Unsupported:
    index: int  # position in graph.node
    name: str
    op: str
    reason: str  # the first line of the parser's error ('' when the node only sits outside every supported part)

    def line(self) -> str:
        return f"node {self.index} '{self.name}' ({self.op})" + (f": {self.reason}" if self.reason else "")


def unsupported(backend: Backend, path: Path, log: logging.Logger) -> list[Unsupported]:
    """The nodes the parser of `backend` refuses, in graph order; [] when it takes the whole model. These are the
    nodes its errors name when it has any (the rest of their unsupported part is collateral), else the nodes
    outside every supported part. TensorRT's own messages go to `log` (the build log), not to the terminal."""
    import onnx

    trt = backend.trt
    logger = make_logger(backend, log.getChild("trt"))
    builder = trt.Builder(logger)
    network = builder.create_network(creation_flags(FlagSpec(), backend)[0])
    parser = trt.OnnxParser(network, logger)
    if parser.supports_model_v2(path.read_bytes(), str(path)):
        return []
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    covered = {index for i in range(parser.num_subgraphs) if parser.is_subgraph_supported(i)
               for index in parser.get_subgraph_nodes(i)}
    reasons = {}
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        reasons.setdefault(error.node(), _reason(error.desc()))
    refused = {i for i in reasons if 0 <= i < len(nodes)}  # where parsing stopped: the cause, not its neighbours
    found = sorted(refused or set(range(len(nodes))) - covered)
    return [Unsupported(i, nodes[i].name or f"#{i}", _op(nodes[i]), reasons.get(i, "")) for i in found]


def _reason(desc: str) -> str:
    """The informative line of a parser error: not its 'Invalid Node - NAME' header, nor the CUDA complaint a
    CPU-only machine adds; TensorRT's '[file::function::line] ' prefix dropped."""
    lines = [line.strip() for line in desc.strip().splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("Invalid Node") and "cudaError" not in line]
    return re.sub(r"^\[[^\]]*\]\s*", "", (useful or lines or [""])[0])


def _op(node: object) -> str:
    domain = getattr(node, "domain", "")
    return f"{domain}::{node.op_type}" if domain not in ("", "ai.onnx") else node.op_type  # type: ignore[attr-defined]


def summary(found: list[Unsupported], limit: int = 5) -> str:
    """'3 node(s) TensorRT cannot parse: ops FastGelu (2), DynamicQuantizeLinear (1); first: node 4 ...'."""
    ops: dict[str, int] = {}
    for node in found:
        ops[node.op] = ops.get(node.op, 0) + 1
    listed = ", ".join(f"{op} ({count})" for op, count in sorted(ops.items(), key=lambda item: -item[1])[:limit])
    return f"{len(found)} node(s) TensorRT's parser cannot take: op(s) {listed}; first: {found[0].line()}"


NO_IMPORTER = "Plugin not found"  # the parser's words for an op it has no importer for (and no plugin provides)


def problems(recipe: Recipe, backend: Backend, log: logging.Logger) -> list[str]:
    """`check`'s support query, as recipe problems at model.path. With graph-cleanup, only ops no importer takes
    count (folding and freezing inputs cure the rest, as the shipped cleanup_needed recipe shows); with plugin
    libraries, nothing is asserted (the query cannot load them)."""
    if recipe.spec("serialize").plugins:
        return []
    found = unsupported(backend, recipe.model_path, log)
    if "graph-cleanup" in recipe.stages:
        found = [node for node in found if NO_IMPORTER in node.reason]
    if not found:
        return []
    return [recipe.problem(("model", "path"), f"{summary(found)} (see `trt-pipeline inspect {recipe.model_path}`)")]
