"""Embeddings: rows of a table picked by integer token ids, and their adjoint.

``embedding(ids, vocab, dim)`` maps int32 ids (T,) to vectors (T, dim) with a parameter
NAME.E (vocab, dim).  Its δ adds each row's δ into the table row its id picked: a
scatter-add in which every block of columns belongs to one thread that adds the rows in
order, so the sum is the same for any number of threads.  A one-hot input times a matrix
is the same lookup (``lookup``), which the recurrent layers use for gc.one_hot inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sympy as sp

from graphc.errors import GraphError
from graphc.graph import Node
from graphc.kernels import Dim, Kernel, Tensor
from graphc.ops.base import Op, as_node, make_node

if TYPE_CHECKING:
    from graphc.autodiff import Adjoints


# --- kernels --------------------------------------------------------------------------------
@dataclass(frozen=True)
class GatherKernel(Kernel):
    """dst[r, :] = table[ids[r], :]: an embedding lookup."""

    rows: Dim
    cols: int
    ids: Tensor
    table: Tensor
    dst: Tensor
    template: str = "gather"

    def reads(self) -> list[Tensor]:
        return [self.ids, self.table]

    def writes(self) -> list[Tensor]:
        return [self.dst]

    def c_context(self, contexts: Any) -> dict[str, Any]:
        """Template context (called by codegen.c.KernelContexts)."""
        from graphc.codegen.c import dim_text, owner, signature

        params, args = signature(self, contexts.target.real, self.rows.batched)
        return {
            "params": params,
            "args": args,
            "rows": dim_text(self.rows),
            "cols": self.cols,
            "ids": owner(self.ids),
            "table": owner(self.table),
            "dst": owner(self.dst),
        }


#: columns of a scatter-add one thread owns: a few cache lines, vector-wide
SCATTER_BLOCK = 32


@dataclass(frozen=True)
class ScatterKernel(Kernel):
    """grad[v, :] = Σ over rows r with ids[r] = v of delta[r, :] (each column by one thread,
    rows in order: deterministic)."""

    rows: Dim
    vocab: int
    cols: int
    ids: Tensor
    delta: Tensor
    grad: Tensor
    template: str = "scatter_add"

    def reads(self) -> list[Tensor]:
        return [self.ids, self.delta]

    def writes(self) -> list[Tensor]:
        return [self.grad]

    def c_context(self, contexts: Any) -> dict[str, Any]:
        """Template context (called by codegen.c.KernelContexts)."""
        from graphc.codegen.c import dim_text, owner, signature

        params, args = signature(self, contexts.target.real, self.rows.batched)
        return {
            "params": params,
            "args": args,
            "rows": dim_text(self.rows),
            "vocab": self.vocab,
            "cols": self.cols,
            "block": SCATTER_BLOCK,
            "blocks": -(-self.cols // SCATTER_BLOCK),
            "ids": owner(self.ids),
            "delta": owner(self.delta),
            "grad": owner(self.grad),
            "zero": contexts.printer.doprint(sp.Float(0.0)),
        }


def _rows(node: Node) -> Dim:
    count = 1
    for s in node.shape:
        count *= s
    return Dim(count, node.batched)


class Embedding(Op):
    """Rows of a table picked by integer ids: out[..., :] = E[ids[...], :]."""

    name = "embedding"

    def grad_inputs(self, node: Node) -> tuple[int, ...]:
        return (1,)

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        ids, table = node.inputs
        if not ad.needs(table):
            return {}
        return {1: ad.apply(SCATTER_ADD, [delta, ids], wrt=table)}

    def lower(self, node: Node, low: Any) -> GatherKernel:
        ids = low.source(node, 0)
        return GatherKernel(
            low.table.namer(f"k_{node.name}"),
            low.formula(node),
            _rows(ids),
            node.shape[-1],
            low.table(ids),
            low.table(low.source(node, 1)),
            low.table(node),
        )

    def formula(self, node: Node, args: list[str]) -> str:
        return f"{args[1]}[{args[0]}]"


EMBEDDING = Embedding()


class ScatterAdd(Op):
    """The adjoint of a lookup: δ rows added into the table rows their ids picked."""

    name = "scatter_add"

    def lower(self, node: Node, low: Any) -> ScatterKernel:
        ids = low.source(node, 1)
        return ScatterKernel(
            low.table.namer(f"k_{node.name}"),
            low.formula(node),
            _rows(ids),
            node.shape[0],
            node.shape[1],
            low.table(ids),
            low.table(low.source(node, 0)),
            low.table(node),
        )

    def formula(self, node: Node, args: list[str]) -> str:
        return f"Σ over rows of {args[0]} added at row {args[1]}"


SCATTER_ADD = ScatterAdd()


def embedding(
    ids: Node, vocab: int, dim: int, name: str | None = None, init: Any = ("normal", 1.0)
) -> Node:
    """Vectors of int32 token ids: (T,) -> (T, dim); creates param ``NAME.E`` (vocab, dim)."""
    ids = as_node(ids, "embedding")
    if ids.dtype != "int32":
        raise GraphError(f"embedding: {ids.describe()} must hold int32 token ids")
    for what, value in (("vocab", vocab), ("dim", dim)):
        if not isinstance(value, int) or value <= 0:
            raise GraphError(f"embedding: {what} must be a positive integer, got {value!r}")
    g = ids.graph
    name = name or g.unique_name("embedding")
    table = g.param(f"{name}.E", (vocab, dim), init=init)
    return lookup(ids, table, name)


def lookup(ids: Node, table: Node, name: str) -> Node:
    """The rows of ``table`` (vocab, dim) picked by ``ids``: a node of shape ids.shape + (dim,)."""
    return make_node(
        ids.graph,
        EMBEDDING,
        [ids, table],
        ids.shape + (table.shape[1],),
        ids.batched,
        name,
        "embedding",
        attrs={"classes": table.shape[0]},
    )
