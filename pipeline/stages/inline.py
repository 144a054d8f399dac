"""Inline an `If` whose condition is a constant: the branch it takes replaces it, in the graph that holds it.

onnx-graphsurgeon's own flattening (fold_constants' `flatten_subgraphs`) loses an output of the `If` when the
branch returns a value it does not compute itself: a constant (what the branch made from a frozen input folds to
one), an outer-scope value or an initializer. The `If`'s output is then left with no producer. Here each `If`
output is instead connected to whatever the branch returns, whatever made it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def inline_constant_ifs(graph: Any, names: dict[str, set[int]] | None = None) -> int:
    """Replace, in `graph` and its subgraphs, every `If` whose condition is a constant by the nodes of the branch
    it takes; branches inlined this way are searched too (a nested `If`). Returns how many were inlined. `names`:
    every tensor name in use (a subgraph's must not clash with its outer scopes' either)."""
    import onnx_graphsurgeon as gs

    names = _names(graph) if names is None else names
    inlined, index = 0, 0
    while index < len(graph.nodes):
        node = graph.nodes[index]
        if node.op == "If" and isinstance(node.inputs[0], gs.Constant):
            replacement = _inlined(graph, node, names)
            graph.nodes[index:index + 1] = replacement
            inlined += 1
            continue  # the branch's own nodes are looked at next: one of them may be an `If` too
        index += 1
    for node in graph.nodes:
        for subgraph in _subgraphs(node):
            inlined += inline_constant_ifs(subgraph, names)
    return inlined


def _inlined(graph: Any, node: Any, names: dict[str, set[int]]) -> list[Any]:
    """The nodes that replace the `If` `node`: its taken branch's nodes (a branch tensor renamed only where another
    tensor has its name: the other branch's, another `If`'s). An `If` output that is an output of `graph` keeps its
    name: the branch node that made the value makes it under that name, or an Identity copies a value the branch
    did not make (or returns twice). Any other consumer of an `If` output reads the branch's output instead."""
    import onnx_graphsurgeon as gs

    taken = bool(node.inputs[0].values.reshape(-1)[0])
    branch = node.attrs["then_branch" if taken else "else_branch"]
    for tensor in branch.tensors().values():  # outer-scope values are the very same objects: never renamed
        if tensor.name and names.get(tensor.name, set()) - {id(tensor)}:
            tensor.name = _unique(f"{node.name or 'If'}/{tensor.name}", tensor, names)
    nodes = list(branch.nodes)
    own = {id(each) for each in nodes}
    returned_by = [id(tensor) for tensor in branch.outputs]
    graph_outputs = {id(tensor) for tensor in graph.outputs}
    node.inputs.clear()
    for result, returned in zip(list(node.outputs), branch.outputs):
        result.inputs.clear()  # the `If` no longer produces it
        if id(result) not in graph_outputs:
            _read_instead(result, returned)
        elif returned.inputs and id(returned.inputs[0]) in own and returned_by.count(id(returned)) == 1:
            _read_instead(returned, result)
            producer = returned.inputs[0]
            producer.outputs[[id(out) for out in producer.outputs].index(id(returned))] = result
        else:
            nodes.append(gs.Node("Identity", _unique(f"{result.name}/identity", None, names), inputs=[returned],
                                 outputs=[result]))
    node.outputs.clear()
    return nodes


def _read_instead(tensor: Any, replacement: Any) -> None:
    """Every node that reads `tensor`, in this graph or a subgraph, reads `replacement` instead."""
    for consumer in list(tensor.outputs):
        for position, each in enumerate(consumer.inputs):
            if each is tensor:
                consumer.inputs[position] = replacement


def _subgraphs(node: Any) -> Iterator[Any]:
    import onnx_graphsurgeon as gs

    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            yield value


def _names(graph: Any) -> dict[str, set[int]]:
    """Every tensor name in `graph` and its subgraphs, with the tensors (by id) that have it."""
    names: dict[str, set[int]] = {}
    for each in [graph, *graph.subgraphs(recursive=True)]:
        for tensor in each.tensors().values():
            names.setdefault(tensor.name, set()).add(id(tensor))
    return names


def _unique(name: str, tensor: Any, names: dict[str, set[int]]) -> str:
    """`name`, or `name` with the first free `_N` suffix, recorded as the name of `tensor`."""
    candidate, number = name, 1
    while candidate in names:
        candidate, number = f"{name}_{number}", number + 1
    names[candidate] = {id(tensor)}
    return candidate


def folded_and_inlined(graph: Any) -> Any:
    """The graph-cleanup pass: inline every `If` with a constant condition, fold what the inlined branches compute
    from constants (a nested `If`'s condition among them), again until none is left, then drop what is unused."""
    inlined = 0
    while count := inline_constant_ifs(graph):
        inlined += count
        graph.fold_constants(flatten_subgraphs=False)
    return graph.cleanup() if inlined else graph
