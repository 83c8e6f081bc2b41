"""Softmax over the last axis."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphc.graph import Node
from graphc.kernels import Dim, SoftmaxKernel
from graphc.ops.base import Op, as_node, make_node
from graphc.ops.linalg import matrix_dims
from graphc.symbolic import X

if TYPE_CHECKING:
    from graphc.autodiff import Adjoints


class Softmax(Op):
    """O_k = exp(I_k - max I) / Σ_j exp(I_j - max I) along the last axis."""

    name = "softmax"

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        (x,) = node.inputs
        if not ad.needs(x):
            return {}
        # δ_I = O ⊙ (δ_O − Σ_k O_k δ_O,k): the softmax Jacobian applied to δ_O
        weighted = ad.elementwise(
            "softmax_weight", X[0] * X[1], [delta, node], shape=node.shape, batched=node.batched
        )
        keep = node.shape[:-1] + (1,)
        total = ad.reduce(weighted, keep, node.batched)
        result = ad.elementwise(
            "d_softmax",
            X[1] * (X[0] - X[2]),
            [delta, node, total],
            wrt=x,
            shape=node.shape,
            batched=node.batched,
        )
        return {0: result}

    def lower(self, node: Node, low) -> SoftmaxKernel:
        rows, cols = matrix_dims(node)
        return SoftmaxKernel(
            low.table.namer(f"k_{node.name}"),
            f"{node.name} = softmax({low.resolved(node, 0).name}) over the last axis",
            Dim(rows, node.batched),
            cols,
            low.table(low.source(node, 0)),
            low.table(node),
        )

    def formula(self, node: Node, args: list[str]) -> str:
        return f"softmax({args[0]})"


SOFTMAX = Softmax()


def softmax(x: Node, name: str | None = None) -> Node:
    """Softmax over the last axis."""
    x = as_node(x, "softmax")
    return make_node(x.graph, SOFTMAX, [x], x.shape, x.batched, name, "softmax")
