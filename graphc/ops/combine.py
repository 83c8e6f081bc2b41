"""Combining nodes: concatenation along an axis, slices and zero padding (its adjoints), repeat.

A node is seen as rows x columns around an axis: the rows are every axis before it (and
the batch), the columns everything from it on.  Concatenating, slicing and padding along
that axis then copy column blocks of every row, which one kernel kind does: ``CopyKernel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sympy as sp

from graphc.errors import GraphError, ShapeError
from graphc.graph import Node, shape_str
from graphc.kernels import Dim, Kernel, Tensor
from graphc.ops.base import Op, as_node, make_node, same_graph
from graphc.ops.elementwise import apply
from graphc.ops.shape import reshape
from graphc.symbolic import X

if TYPE_CHECKING:
    from graphc.autodiff import Adjoints


def _product(sizes: Sequence[int]) -> int:
    total = 1
    for s in sizes:
        total *= s
    return total


def _axis(axis: int, rank: int, what: str) -> int:
    """A per-sample axis in [0, rank), from a possibly negative index."""
    if not -rank <= axis < rank:
        raise ShapeError(f"{what}: axis {axis} is out of range for per-sample rank {rank}")
    return axis % rank


@dataclass(frozen=True)
class Block:
    """Columns [dst_offset, dst_offset + cols) of every destination row: a source's, or zeros.

    Row r of the block reads ``src[r * src_stride + src_offset + j]`` (``src_stride`` 0: the
    same row for all, an unbatched source).
    """

    src: Tensor | None
    src_stride: int
    src_offset: int
    dst_offset: int
    cols: int


@dataclass(frozen=True)
class CopyKernel(Kernel):
    """dst[r, block] = src[r, ...] (or 0) for every row r and block."""

    rows: Dim
    dst: Tensor
    dst_stride: int
    blocks: tuple[Block, ...]
    template: str = "copy"

    def reads(self) -> list[Tensor]:
        return [b.src for b in self.blocks if b.src is not None]

    def writes(self) -> list[Tensor]:
        return [self.dst]

    def c_context(self, contexts: Any) -> dict[str, Any]:
        """Template context (called by codegen.c.KernelContexts)."""
        from graphc.codegen.c import dim_text, owner, signature

        params, args = signature(self, contexts.target.real, self.rows.batched)
        zero = contexts.printer.doprint(sp.Float(0.0))
        blocks = []
        for b in self.blocks:
            dst = f"{owner(self.dst)}[{row_index('r', self.dst_stride, b.dst_offset)}j]"
            src = zero
            if b.src is not None:
                src = f"{owner(b.src)}[{row_index('r', b.src_stride, b.src_offset)}j]"
            blocks.append((dst, src, b.cols))
        return {"params": params, "args": args, "rows": dim_text(self.rows), "blocks": blocks}


def row_index(row: str, stride: int, offset: int) -> str:
    """'r * 64 + 32 + ' : the start of a row's block in C, ready for a column variable."""
    text = ""
    if stride:
        text += f"{row} + " if stride == 1 else f"{row} * {stride} + "
    if offset:
        text += f"{offset} + "
    return text


def _rows(node: Node, axis: int) -> Dim:
    return Dim(_product(node.shape[:axis]), node.batched)


class Concat(Op):
    """Inputs laid side by side along ``attrs['axis']``."""

    name = "concat"

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        axis = node.attrs["axis"]
        result: dict[int, Node] = {}
        start = 0
        for i, part in enumerate(node.inputs):
            stop = start + part.shape[axis]
            if ad.needs(part):
                attrs = {"axis": axis, "start": start, "stop": stop}
                result[i] = ad.apply(SLICE, [delta], wrt=part, attrs=attrs)
            start = stop
        return result

    def lower(self, node: Node, low: Any) -> CopyKernel:
        axis = node.attrs["axis"]
        width = _product(node.shape[axis:])
        blocks = []
        offset = 0
        for i, part in enumerate(node.inputs):
            cols = _product(part.shape[axis:])
            blocks.append(Block(low.table(low.source(node, i)), cols, 0, offset, cols))
            offset += cols
        return CopyKernel(
            low.table.namer(f"k_{node.name}"),
            low.formula(node),
            _rows(node, axis),
            low.table(node),
            width,
            tuple(blocks),
        )

    def formula(self, node: Node, args: list[str]) -> str:
        return f"[{', '.join(args)}] along axis {node.attrs['axis']}"


CONCAT = Concat()


class Slice(Op):
    """Indices [start, stop) of ``attrs['axis']`` of its input (the adjoint of concat)."""

    name = "slice"

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        (x,) = node.inputs
        if not ad.needs(x):
            return {}
        attrs = {"axis": node.attrs["axis"], "start": node.attrs["start"]}
        return {0: ad.apply(PAD, [delta], wrt=x, attrs=attrs)}

    def lower(self, node: Node, low: Any) -> CopyKernel:
        x = low.source(node, 0)
        axis, start = node.attrs["axis"], node.attrs["start"]
        inner = _product(x.shape[axis + 1 :])
        cols = _product(node.shape[axis:])
        block = Block(low.table(x), _product(x.shape[axis:]), start * inner, 0, cols)
        return CopyKernel(
            low.table.namer(f"k_{node.name}"),
            low.formula(node),
            _rows(node, axis),
            low.table(node),
            cols,
            (block,),
        )

    def formula(self, node: Node, args: list[str]) -> str:
        a = node.attrs
        return f"{args[0]}[{a['start']}:{a['stop']} along axis {a['axis']}]"


SLICE = Slice()


class Pad(Op):
    """Its input placed at index ``attrs['start']`` of ``attrs['axis']``, zeros elsewhere."""

    name = "pad"

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        (x,) = node.inputs
        if not ad.needs(x):
            return {}
        axis, start = node.attrs["axis"], node.attrs["start"]
        attrs = {"axis": axis, "start": start, "stop": start + x.shape[axis]}
        return {0: ad.apply(SLICE, [delta], wrt=x, attrs=attrs)}

    def lower(self, node: Node, low: Any) -> CopyKernel:
        x = low.source(node, 0)
        axis, start = node.attrs["axis"], node.attrs["start"]
        inner = _product(node.shape[axis + 1 :])
        width = _product(node.shape[axis:])
        cols = _product(x.shape[axis:])
        before, after = start * inner, width - start * inner - cols
        blocks = [Block(None, 0, 0, 0, before)] if before else []
        blocks.append(Block(low.table(x), cols, 0, before, cols))
        if after:
            blocks.append(Block(None, 0, 0, before + cols, after))
        return CopyKernel(
            low.table.namer(f"k_{node.name}"),
            low.formula(node),
            _rows(node, axis),
            low.table(node),
            width,
            tuple(blocks),
        )

    def formula(self, node: Node, args: list[str]) -> str:
        a = node.attrs
        return f"{args[0]} at [{a['start']}] along axis {a['axis']}, zeros elsewhere"


PAD = Pad()


def concat(nodes: Sequence[Node], axis: int = -1, name: str | None = None) -> Node:
    """Concatenate nodes along a per-sample ``axis`` (the last by default)."""
    if isinstance(nodes, Node) or not nodes:
        raise GraphError("concat: give a list of at least one graph node")
    parts = [as_node(x, "concat") for x in nodes]
    graph = same_graph(parts, "concat")
    first = parts[0]
    if not first.shape:
        raise ShapeError(f"concat: {first.describe()} is a scalar; there is no axis to join")
    axis = _axis(axis, len(first.shape), "concat")
    for x in parts:
        if x.dtype != "real":
            raise GraphError(f"concat: {x.describe()} holds integers")
        same = len(x.shape) == len(first.shape) and all(
            a == b for k, (a, b) in enumerate(zip(x.shape, first.shape)) if k != axis
        )
        if not same or x.batched != first.batched:
            listed = ", ".join(f"{p.name!r} {shape_str(p)}" for p in parts)
            raise ShapeError(
                f"concat: shapes must agree except along axis {axis}: {listed} "
                f"(first defined at {first.where})"
            )
    if len(parts) == 1:
        return first
    shape = list(first.shape)
    shape[axis] = sum(x.shape[axis] for x in parts)
    return make_node(
        graph, CONCAT, parts, tuple(shape), first.batched, name, "concat", attrs={"axis": axis}
    )


def slice_axis(
    x: Node, axis: int, start: int, stop: int, name: str | None = None, graph: Any = None
) -> Node:
    """Indices [start, stop) of a per-sample ``axis`` of ``x``."""
    x = as_node(x, "slice")
    if not x.shape:
        raise ShapeError(f"slice: {x.describe()} is a scalar")
    axis = _axis(axis, len(x.shape), "slice")
    if not 0 <= start < stop <= x.shape[axis]:
        raise ShapeError(
            f"slice: [{start}, {stop}) is not a non-empty range of axis {axis} of {x.describe()}"
        )
    shape = list(x.shape)
    shape[axis] = stop - start
    attrs = {"axis": axis, "start": start, "stop": stop}
    return make_node(
        graph or x.graph, SLICE, [x], tuple(shape), x.batched, name, "slice", attrs=attrs
    )


def repeat(v: Node, times: int, name: str | None = None) -> Node:
    """``times`` copies of ``v`` along a new first axis: (F,) -> (times, F) (one-to-many)."""
    v = as_node(v, "repeat")
    if not isinstance(times, int) or times <= 0:
        raise GraphError(f"repeat: times must be a positive integer, got {times!r}")
    if v.dtype != "real":
        raise GraphError(f"repeat: {v.describe()} holds integers; use gc.one_hot first")
    # (1, F) broadcast to (times, F): an elementwise copy whose δ sums over the new axis
    row = reshape(v, (1,) + v.shape)
    return apply("repeat", X[0], [row], name, shape=(times,) + v.shape, batched=v.batched)
