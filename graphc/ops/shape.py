"""Shape-only ops: reshape and flatten are views, they move no data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from graphc.errors import ShapeError
from graphc.graph import Graph, Node, shape_str, user_line
from graphc.ops.base import Op, as_node, make_node

if TYPE_CHECKING:
    from graphc.autodiff import Adjoints


class Reshape(Op):
    """The same elements, row-major, seen with another per-sample shape."""

    name = "reshape"

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        (x,) = node.inputs
        if not ad.needs(x):
            return {}
        return {0: ad.reshape(delta, x, base=node)}

    def formula(self, node: Node, args: list[str]) -> str:
        return f"{args[0]} as {shape_str(node)}"


RESHAPE = Reshape()


def reshape(
    x: Node, shape: Sequence[int], name: str | None = None, graph: Graph | None = None
) -> Node:
    """View ``x`` with a new per-sample shape holding the same number of elements."""
    x = as_node(x, "reshape")
    shape = tuple(int(s) for s in shape)
    size = 1
    for s in shape:
        size *= s
    if size != x.size:
        raise ShapeError(
            f"reshape: {x.describe()} has {x.size} elements per sample, shape {shape} has {size} "
            f"(at {user_line()})"
        )
    if shape == x.shape:
        return x
    return make_node(graph or x.graph, RESHAPE, [x], shape, x.batched, name, "reshape")


def flatten(x: Node, name: str | None = None) -> Node:
    """Flatten the per-sample axes in row-major (C, H, W) order, as PyTorch does."""
    x = as_node(x, "flatten")
    return reshape(x, (x.size,), name=name) if len(x.shape) != 1 else x
