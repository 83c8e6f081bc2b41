"""The δ pass: a reverse sweep from the loss that builds backward nodes in the same IR.

Input: a Graph with a loss.  Output: a ``Backward`` record holding the new nodes (δ of
every node that depends on a trainable parameter, and the gradient of every trainable
parameter), built in a separate graph so the user's graph is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from graphc.errors import GraphError
from graphc.graph import Graph, Node
from graphc.ops.base import Op, make_node
from graphc.ops.elementwise import apply
from graphc.ops.linalg import make_matmul
from graphc.ops.reduce import reduce_to
from graphc.ops.shape import reshape
from graphc.symbolic import X


class Const(Op):
    """A constant scalar (the seed δ of the loss, which is 1)."""

    name = "const"

    def formula(self, node: Node, args: list[str]) -> str:
        return str(node.attrs["value"])


CONST = Const()


@dataclass
class Backward:
    """What the δ pass produced."""

    graph: Graph  # holds the backward nodes
    nodes: list[Node]  # backward nodes in execution order
    deltas: dict[Node, Node]  # forward node -> its δ (∂E/∂node)
    grads: dict[Node, Node]  # trainable parameter -> its gradient
    seed: Node
    frozen: list[Node] = field(default_factory=list)


def ancestors(roots: list[Node]) -> set[Node]:
    """Every node the roots depend on (the roots included)."""
    seen: set[Node] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(node.inputs)
    return seen


def delta_name(node: Node, is_param: bool) -> str:
    """grad_P for a parameter, delta_L for a layer's pre-activation, d_X otherwise."""
    if is_param:
        return f"grad_{node.name}"
    if "layer" in node.attrs:
        return f"delta_{node.attrs['layer']}"
    return f"d_{node.name}"


class Adjoints:
    """Builder handed to each op's ``adjoint``: creates backward nodes and names them."""

    def __init__(self, forward: Graph, loss: Node, frozen: set[str]) -> None:
        self.forward = forward
        self.graph = Graph(forward.name)
        self.graph._names = set(n.name for n in forward.nodes)
        self.relevant = ancestors([loss])
        self.trainable = [
            p
            for p in forward.params
            if p in self.relevant and p.attrs["trainable"] and p.name not in frozen
        ]
        # nodes through which some trainable parameter reaches the loss
        self._needs: set[Node] = set(self.trainable)
        self._consumers: dict[Node, int] = {}
        for node in forward.nodes:
            if node not in self.relevant:
                continue
            inputs = [node.inputs[i] for i in node.op.grad_inputs(node)]
            for x in inputs:
                self._consumers[x] = self._consumers.get(x, 0) + 1
            if any(x in self._needs for x in inputs):
                self._needs.add(node)
        self.nodes: list[Node] = []
        self.seed = self._track(
            make_node(self.graph, CONST, [], (), False, "seed", "seed", attrs={"value": 1})
        )

    # --- questions ops ask ----------------------------------------------------------------
    def needs(self, node: Node) -> bool:
        """Whether the loss's gradient must flow into ``node``."""
        return node in self._needs

    def consumers(self, node: Node) -> int:
        """How many nodes on the way to the loss read ``node``."""
        return self._consumers.get(node, 0)

    def is_seed(self, delta: Node) -> bool:
        """True for the δ of the loss itself (the constant 1)."""
        return delta is self.seed

    # --- builders ops call ----------------------------------------------------------------
    def _track(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def _name(self, wrt: Node | None, label: str) -> str | None:
        if wrt is None:
            return self.graph.unique_name(label)
        base = delta_name(wrt, wrt in self.trainable)
        if self.consumers(wrt) > 1:
            base += "_part"
        return self.graph.unique_name(base)

    def elementwise(
        self,
        label: str,
        expr: sp.Expr,
        operands: list[Node],
        wrt: Node | None = None,
        shape: tuple[int, ...] | None = None,
        batched: bool | None = None,
    ) -> Node:
        """An elementwise backward node; reduced to ``wrt``'s shape when broadcasting made it larger."""
        reduce = wrt is not None and (shape != wrt.shape or batched != wrt.batched)
        name = self._name(None if reduce else wrt, label)
        node = self._track(
            apply(label, expr, operands, name=name, graph=self.graph, shape=shape, batched=batched)
        )
        return self.reduce_to(node, wrt) if reduce else node

    def matmul(
        self,
        a: Node,
        b: Node,
        trans_a: bool = False,
        trans_b: bool = False,
        wrt: Node | None = None,
    ) -> Node:
        """A matrix product in the backward pass."""
        node = make_matmul(a, b, trans_a, trans_b, name=self._name(wrt, "matmul"), graph=self.graph)
        return self._track(node)

    def reduce(self, x: Node, shape: tuple[int, ...], batched: bool) -> Node:
        """Sum ``x`` into a broadcastable shape (an intermediate of an adjoint)."""
        return self._track(reduce_to(x, shape, batched, self.graph, name=self._name(None, "sum")))

    def reduce_to(self, contribution: Node, wrt: Node) -> Node:
        """Sum a broadcast contribution back into the shape of ``wrt``."""
        if contribution.shape == wrt.shape and contribution.batched == wrt.batched:
            return contribution
        return self._track(
            reduce_to(contribution, wrt.shape, wrt.batched, self.graph, name=self._name(wrt, "sum"))
        )

    def apply(self, op: Op, inputs: list[Node], wrt: Node, attrs: dict | None = None) -> Node:
        """A backward node of any op, shaped like ``wrt`` (for ops whose adjoint is their own kind)."""
        name = self._name(wrt, op.name)
        node = make_node(self.graph, op, inputs, wrt.shape, wrt.batched, name, op.name, attrs=attrs)
        return self._track(node)

    def node(
        self,
        op: Op,
        inputs: list[Node],
        shape: tuple[int, ...],
        batched: bool,
        label: str,
        wrt: Node | None = None,
        attrs: dict | None = None,
    ) -> Node:
        """A backward node of any op and shape, named as the δ of ``wrt`` when given."""
        name = self._name(wrt, label)
        node = make_node(self.graph, op, inputs, shape, batched, name, label, attrs=attrs)
        return self._track(node)

    def reshape(self, delta: Node, wrt: Node, base: Node) -> Node:
        """δ seen with the shape of the reshape's input."""
        return self._track(
            reshape(delta, wrt.shape, name=self._name(wrt, "reshape"), graph=self.graph)
        )

    def accumulate(self, wrt: Node, parts: list[Node]) -> Node:
        """Sum the contributions of several consumers into one δ."""
        if len(parts) == 1:
            return parts[0]
        expr = sp.Add(*X[: len(parts)])
        name = self.graph.unique_name(delta_name(wrt, wrt in self.trainable))
        return self._track(apply("sum_deltas", expr, parts, name=name, graph=self.graph))


def differentiate(graph: Graph, frozen: set[str] | None = None) -> Backward:
    """Run the δ pass over ``graph`` (which must have a loss)."""
    if graph.loss is None:
        raise GraphError(f"graph {graph.name!r} has no loss; call g.minimize(loss) to train it")
    ad = Adjoints(graph, graph.loss, frozen or set())
    if not ad.trainable:
        raise GraphError(
            f"the loss of graph {graph.name!r} depends on no trainable parameter; nothing to train"
        )
    parts: dict[Node, list[Node]] = {graph.loss: [ad.seed]}
    deltas: dict[Node, Node] = {}
    for node in reversed(graph.nodes):
        if node not in parts:
            continue
        delta = ad.accumulate(node, parts.pop(node))
        deltas[node] = delta
        for key, contribution in node.op.adjoint(node, delta, ad).items():
            target = node.inputs[key] if isinstance(key, int) else key
            if not ad.needs(target):
                continue
            if contribution.shape != target.shape or contribution.batched != target.batched:
                raise GraphError(
                    f"internal error: δ for {target.name!r} from {node.name!r} has the wrong shape"
                )
            parts.setdefault(target, []).append(contribution)
    grads = {p: deltas[p] for p in ad.trainable if p in deltas}
    return Backward(ad.graph, ad.nodes, deltas, grads, ad.seed)
