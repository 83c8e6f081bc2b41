"""Reductions (sums into a broadcastable shape) and their user-facing forms sum/mean."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import sympy as sp

from graphc.errors import ShapeError
from graphc.graph import Graph, Node, shape_str
from graphc.kernels import (
    LOOP_VARS,
    Access,
    Dim,
    Loop,
    ReduceKernel,
    full_shape,
    sample_blocks,
    strides_for,
)
from graphc.ops.base import Op, as_node, make_node
from graphc.ops.shape import reshape
from graphc.symbolic import N, X

if TYPE_CHECKING:
    from graphc.autodiff import Adjoints


class ReduceTo(Op):
    """Sum a node down to a shape that broadcasts to it (also over the batch when unbatched).

    ``attrs['scale']`` multiplies the sum (1, or 1/n for a mean over the batch).
    """

    name = "reduce_to"

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        (x,) = node.inputs
        if not ad.needs(x):
            return {}
        scale = node.attrs.get("scale", sp.Integer(1))
        spread = ad.elementwise(
            "spread", X[0] * scale, [delta], wrt=x, shape=x.shape, batched=x.batched
        )
        return {0: spread}

    def lower(self, node: Node, low) -> ReduceKernel:
        # the operand as seen (a reshape view has its own shape), in its owner's memory
        src = low.resolved(node, 0)
        dims = full_shape(src.shape, src.batched)
        varies = [1 if s > 1 else 0 for s in node.shape]
        if node.batched:
            keep_mask = [1] + [0] * (len(src.shape) - len(node.shape)) + varies
        else:
            keep_mask = [0] * (len(dims) - len(node.shape)) + varies
        src_mask = [1 if (d.batched or d.coef > 1) else 0 for d in dims]
        # neighbouring axes of the same kind (kept or summed) become one loop
        keep_axes: list[list[int]] = []
        sum_axes: list[list[int]] = []
        previous = None
        for a in range(len(dims)):
            if not src_mask[a]:
                continue
            bucket = keep_axes if keep_mask[a] else sum_axes
            if previous == keep_mask[a]:
                bucket[-1].append(a)
            else:
                bucket.append([a])
            previous = keep_mask[a]
        src_strides = strides_for(dims, src_mask)
        dst_strides = strides_for(dims, keep_mask)

        def loops(buckets: list[list[int]], offset: int) -> tuple[Loop, ...]:
            out = []
            for k, axes in enumerate(buckets):
                extent = Dim(1, False)
                for a in axes:
                    extent = Dim(extent.coef * dims[a].coef, extent.batched or dims[a].batched)
                out.append(Loop(LOOP_VARS[offset + k], extent))
            return tuple(out)

        keep_loops = loops(keep_axes, 0)
        sum_loops = loops(sum_axes, len(keep_loops))
        src_access = Access(
            low.table(src), tuple(src_strides[ax[-1]] for ax in keep_axes + sum_axes)
        )
        dst_access = Access(low.table(node), tuple(dst_strides[ax[-1]] for ax in keep_axes))
        sums, block = None, 0
        # Σ over the batch (and positions) of each channel, as a conv bias gradient: on the
        # C target each thread sums the samples it wrote (see kernels.SAMPLE_BLOCKS)
        # (a bias gradient of contiguous columns, a dense layer's, is summed in vector lanes
        # instead: see codegen.c)
        per_channel = len(keep_loops) == 1 and dst_access.strides == (1,)
        per_channel = per_channel and src_access.strides[0] != 1
        batch_first = bool(sum_loops) and sum_loops[0].extent.batched
        if low.lanes and low.batch > 1 and per_channel and batch_first:
            block, count = sample_blocks(low.batch)
            extent = keep_loops[0].extent.coef
            sums = low.table.scratch(f"{node.name} block sums", (count, extent), False)
        return ReduceKernel(
            low.table.namer(f"k_{node.name}"),
            low.formula(node),
            keep_loops,
            sum_loops,
            src_access,
            dst_access,
            node.attrs.get("scale", sp.Integer(1)),
            sums,
            block,
        )

    def formula(self, node: Node, args: list[str]) -> str:
        scale = node.attrs.get("scale", 1)
        prefix = "" if scale == 1 else f"{scale}·"
        return f"{prefix}Σ({args[0]}) → {shape_str(node)}"


REDUCE_TO = ReduceTo()


def reduce_to(
    x: Node,
    shape: tuple[int, ...],
    batched: bool,
    graph: Graph,
    name: str | None = None,
    scale: sp.Expr = sp.S.One,
) -> Node:
    """Sum ``x`` into ``shape`` (right-aligned broadcasting; over the batch if not batched)."""
    if len(shape) > len(x.shape):
        raise ShapeError(f"cannot reduce {x.describe()} to the larger shape {shape}")
    padded = (1,) * (len(x.shape) - len(shape)) + tuple(shape)
    for have, want in zip(x.shape, padded):
        if want not in (1, have):
            raise ShapeError(f"cannot reduce {x.describe()} to shape {shape}")
    if batched and not x.batched:
        raise ShapeError(f"cannot reduce the unbatched {x.describe()} to a batched shape")
    return make_node(
        graph, REDUCE_TO, [x], tuple(shape), batched, name, "sum", attrs={"scale": scale}
    )


def _reduce(x: Node, axis: int | Sequence[int] | None, batch: bool, mean: bool, label: str) -> Node:
    x = as_node(x, label)
    rank = len(x.shape)
    if axis is None:
        axes = tuple(range(rank))
    else:
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        axes = tuple(a + rank if a < 0 else a for a in axes)
        for a in axes:
            if not 0 <= a < rank:
                raise ShapeError(f"{label}: axis {a} is out of range for {x.describe()}")
    keep = tuple(1 if a in axes else s for a, s in enumerate(x.shape))
    count = 1
    for a in axes:
        count *= x.shape[a]
    scale: sp.Expr = sp.Integer(1)
    if mean:
        scale = sp.Rational(1, count) * (1 / N if batch and x.batched else 1)
    summed = reduce_to(x, keep, x.batched and not batch, x.graph, name=None, scale=scale)
    final = tuple(s for a, s in enumerate(x.shape) if a not in axes)
    return reshape(summed, final, name=None)


def sum(x: Node, axis: int | Sequence[int] | None = None, batch: bool = False) -> Node:  # noqa: A001
    """Sum over per-sample axes (all by default); ``batch=True`` also sums over the batch."""
    return _reduce(x, axis, batch, mean=False, label="sum")


def mean(x: Node, axis: int | Sequence[int] | None = None, batch: bool = False) -> Node:
    """Mean over per-sample axes (all by default); ``batch=True`` also averages over the batch."""
    return _reduce(x, axis, batch, mean=True, label="mean")
