"""Matrix products over the last axis.

A node is seen as a matrix of ``rows x cols`` where cols is its last axis and rows is
every other axis (times the batch, for a batched node).  ``matmul(a, W)`` multiplies
each row of ``a`` by ``W``; the transposed forms appear in the backward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphc.errors import ShapeError
from graphc.graph import Graph, Node, shape_str, user_line
from graphc.ops.base import Op, as_node, make_node, same_graph

if TYPE_CHECKING:
    from graphc.autodiff import Adjoints


def matrix_dims(node: Node) -> tuple[int, int]:
    """(rows per sample, cols) of a node seen as a matrix; rows excludes the batch."""
    if not node.shape:
        raise ShapeError(f"{node.describe()} is a scalar, not a matrix")
    rows = 1
    for s in node.shape[:-1]:
        rows *= s
    return rows, node.shape[-1]


class MatMul(Op):
    """C = op(A) . op(B) with op = transpose when ``trans_a``/``trans_b`` are set."""

    name = "matmul"

    def __init__(self, trans_a: bool = False, trans_b: bool = False) -> None:
        self.trans_a = trans_a
        self.trans_b = trans_b

    def __repr__(self) -> str:
        return f"<op matmul{'_t' if self.trans_a else ''}{'_nt' if self.trans_b else ''}>"

    def infer(self, a: Node, b: Node, what: str = "matmul") -> tuple[tuple[int, ...], bool]:
        """Output shape and batchedness, or a ShapeError naming both operands and the line."""
        at = f" (at {user_line()})"
        a_rows, a_cols = matrix_dims(a)
        b_rows, b_cols = matrix_dims(b)
        if b.batched and not self.trans_a:
            raise ShapeError(
                f"{what}: the right operand {b.name!r} {shape_str(b)} has a batch axis; "
                "use a parameter (an unbatched matrix) on the right" + at
            )
        if self.trans_a:
            if a.batched != b.batched or (a.batched and a.shape[:-1] != b.shape[:-1]):
                raise ShapeError(f"{what}: rows of {a.name!r} and {b.name!r} differ" + at)
            k_a = a_cols
            inner_ok = True
        else:
            k_a = a_cols
            inner_ok = (b_cols if self.trans_b else b_rows) == k_a
        if len(b.shape) != 2 and not self.trans_a:
            raise ShapeError(
                f"{what}: the right operand {b.name!r} must be a 2-D matrix, got "
                f"{shape_str(b)}" + at
            )
        if not inner_ok:
            expected = f"({k_a}, ...)" if not self.trans_b else f"(..., {k_a})"
            raise ShapeError(
                f"{what}: inner sizes differ: {a.name!r} {shape_str(a)} has {k_a} columns but "
                f"{b.name!r} has shape {shape_str(b)}; expected {b.name!r} of shape {expected}" + at
            )
        if self.trans_a:
            return (k_a, b_cols), False
        out_cols = b_rows if self.trans_b else b_cols
        return a.shape[:-1] + (out_cols,), a.batched

    def flops(self, node: Node) -> int:
        # one multiply and one add per term of every output element
        a = node.inputs[0]
        inner = a.shape[-1] if not self.trans_a else (a.size // a.shape[-1])
        return 2 * node.size * inner

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        a, b = node.inputs
        result: dict[int, Node] = {}
        ta, tb = self.trans_a, self.trans_b
        if ad.needs(a):
            if not ta:
                # dA = dC . op(B)^T
                result[0] = ad.matmul(delta, b, trans_a=False, trans_b=not tb, wrt=a)
            else:
                # A^T.B = C  ->  dA = B . dC^T
                result[0] = ad.matmul(b, delta, trans_a=False, trans_b=True, wrt=a)
        if ad.needs(b):
            if not tb:
                # dB = op(A)^T . dC
                if ta:
                    result[1] = ad.matmul(a, delta, wrt=b)
                else:
                    result[1] = ad.matmul(a, delta, trans_a=True, wrt=b)
            else:
                # C = op(A) . B^T  ->  dB = dC^T . op(A)
                result[1] = ad.matmul(delta, a, trans_a=True, wrt=b)
        return result

    def formula(self, node: Node, args: list[str]) -> str:
        a = args[0] + ("ᵀ" if self.trans_a else "")
        b = args[1] + ("ᵀ" if self.trans_b else "")
        return f"{a} · {b}"


def make_matmul(
    a: Node,
    b: Node,
    trans_a: bool = False,
    trans_b: bool = False,
    name: str | None = None,
    graph: Graph | None = None,
    attrs: dict | None = None,
) -> Node:
    """Build a matmul node (any transposition) in ``graph``.

    A one-hot left operand times a matrix is a row lookup: it becomes an embedding
    node (no one-hot tensor is ever built, and the product costs no flops).
    """
    if (
        not trans_a
        and not trans_b
        and a.op.name == "one_hot"
        and not b.batched
        and len(b.shape) == 2
        and b.shape[0] == a.shape[-1]
        and graph in (None, a.graph)
    ):
        from graphc.ops.embedding import lookup

        return lookup(a.inputs[0], b, name or a.graph.unique_name("matmul"))
    op = MatMul(trans_a, trans_b)
    shape, batched = op.infer(a, b, "matmul" if name is None else f"matmul {name!r}")
    graph = graph or same_graph([a, b], "matmul")
    return make_node(graph, op, [a, b], shape, batched, name, "matmul", attrs=attrs)


def matmul(a: Node, b: Node, name: str | None = None) -> Node:
    """Multiply every row of ``a`` (..., K) by the matrix ``b`` (K, M) -> (..., M)."""
    return make_matmul(as_node(a, "matmul"), as_node(b, "matmul"), name=name)
