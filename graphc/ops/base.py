"""The Op base class, graph leaves (inputs, parameters) and shared construction helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from graphc.errors import GraphError, ShapeError
from graphc.graph import Graph, Node, shape_str, user_line

if TYPE_CHECKING:
    from graphc.autodiff import Adjoints


class Op:
    """An operation: how a node's value is defined and how δ flows back through it.

    ``adjoint(node, delta, ad)`` returns ``{input_index: contribution}`` where each
    contribution is a node of the input's shape, built with ``ad.graph``.
    """

    name = "op"
    #: why differentiating through this op is impossible (None when it is fine)
    not_differentiable: str | None = None
    #: whether its kernel ends in a pass over its output that can also compute the
    #: elementwise nodes after it (its ``lower`` then uses ``low.output_pass(node)``)
    absorbs_elementwise: bool = False
    #: whether its value is a further output of the kernel computing its first input (a
    #: multi-output kernel): it gets no kernel; that op's ``lower`` writes it, found with
    #: ``low.companions(producer)``
    written_by_input: bool = False

    def grad_inputs(self, node: Node) -> tuple[int, ...]:
        """Indices of the inputs δ can flow into (the others are read, not differentiated)."""
        return tuple(range(len(node.inputs)))

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        """Backward nodes for each input that needs a gradient."""
        raise GraphError(f"op {self.name!r} of node {node.name!r} has no adjoint")

    def flops(self, node: Node) -> int:
        """Floating-point operations per sample of the forward value (for summaries)."""
        return node.size

    def lower(self, node: Node, low: Any) -> Any:
        """The kernel record computing ``node`` (``low`` is a passes.fuse.Lowering)."""
        raise GraphError(f"op {self.name!r} of node {node.name!r} has no kernel")

    def formula(self, node: Node, args: list[str]) -> str:
        """A one-line human formula of the node given its input texts (for explain)."""
        return f"{self.name}({', '.join(args)})"

    def __repr__(self) -> str:
        return f"<op {self.name}>"


class Leaf(Op):
    """Inputs and parameters: values that come from outside the graph."""

    def __init__(self, name: str) -> None:
        self.name = name

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        return {}

    def flops(self, node: Node) -> int:
        return 0

    def formula(self, node: Node, args: list[str]) -> str:
        return node.name


INPUT = Leaf("input")
PARAM = Leaf("param")


def make_node(
    graph: Graph,
    op: Op,
    inputs: Sequence[Node],
    shape: tuple[int, ...],
    batched: bool,
    name: str | None,
    default_name: str,
    dtype: str = "real",
    attrs: dict | None = None,
) -> Node:
    """Create, name and register a node in ``graph``."""
    node = Node(
        graph,
        op,
        inputs,
        shape,
        batched,
        dtype,
        graph.claim_name(name, default_name),
        attrs=attrs,
        where=user_line(),
    )
    return graph.add(node)


def as_node(value: Any, what: str) -> Node:
    """Check that ``value`` is a graph node."""
    if not isinstance(value, Node):
        raise GraphError(f"{what}: expected a graph node, got {type(value).__name__} {value!r}")
    return value


def same_graph(nodes: Sequence[Node], what: str) -> Graph:
    """The graph all ``nodes`` belong to; an error if they come from different graphs."""
    graph = nodes[0].graph
    for n in nodes[1:]:
        if n.graph is not graph:
            raise GraphError(
                f"{what}: {n.name!r} belongs to graph {n.graph.name!r} but "
                f"{nodes[0].name!r} to graph {graph.name!r}"
            )
    return graph


def broadcast_shapes(nodes: Sequence[Node], what: str) -> tuple[tuple[int, ...], bool]:
    """Numpy broadcasting of per-sample shapes; batched if any input is batched.

    An unbatched operand (a parameter) may not have more axes than the batched ones:
    otherwise its leading axes would be matched against the batch.
    """
    batched = any(n.batched for n in nodes)
    rank = max(len(n.shape) for n in nodes)
    out = [1] * rank
    for n in nodes:
        if (
            batched
            and not n.batched
            and len(n.shape) > max(len(m.shape) for m in nodes if m.batched)
        ):
            raise ShapeError(_mismatch(what, nodes))
        padded = (1,) * (rank - len(n.shape)) + n.shape
        for axis, size in enumerate(padded):
            if size == 1:
                continue
            if out[axis] not in (1, size):
                raise ShapeError(_mismatch(what, nodes))
            out[axis] = size
    return tuple(out), batched


def _mismatch(what: str, nodes: Sequence[Node]) -> str:
    parts = ", ".join(f"{n.name!r} {shape_str(n)}" for n in nodes)
    where = nodes[-1].where if nodes else "<unknown>"
    return f"{what}: shapes do not broadcast: {parts} (at {user_line()}; inputs defined at {where})"
