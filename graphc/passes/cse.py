"""Common-subexpression elimination over graph nodes."""

from __future__ import annotations

from collections.abc import Iterable

from graphc.graph import Node


def _attr(value: object) -> object:
    """An attribute as part of a key: itself when hashable (compared by ==, which for a
    record of sympy expressions costs far less than printing it), else its text."""
    try:
        hash(value)
    except TypeError:
        return str(value)
    return value


def _key(node: Node, rep: dict[Node, Node]) -> tuple | None:
    if not node.inputs:
        return None  # leaves are distinct by definition
    attrs = tuple(sorted((k, _attr(v)) for k, v in node.attrs.items() if k not in ("layer",)))
    return (repr(node.op), tuple(id(rep[x]) for x in node.inputs), node.shape, node.batched, attrs)


def common_subexpressions(nodes: Iterable[Node]) -> dict[Node, Node]:
    """Map every node to its representative: the first node computing the same value.

    Assumes ``nodes`` is in topological order and includes every input of every node.
    Guarantees rep[rep[x]] == rep[x]; the input nodes are not modified.
    """
    rep: dict[Node, Node] = {}
    seen: dict[tuple, Node] = {}
    for node in nodes:
        for x in node.inputs:
            rep.setdefault(x, x)
        key = _key(node, rep)
        if key is None:
            rep[node] = node
        elif key in seen:
            rep[node] = seen[key]
        else:
            seen[key] = node
            rep[node] = node
    return rep
