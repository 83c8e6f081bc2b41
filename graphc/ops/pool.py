"""Max and mean pooling over one or two spatial axes, channels first, and their adjoints.

    max:   O[n][c][y][x] = max_{p,q} I[n][c][y·sy + p][x·sx + q]
    mean:  O[n][c][y][x] = (1 / (kh·kw)) Σ_{p,q} I[n][c][y·sy + p][x·sx + q]

The stride defaults to the window size; windows that do not fit are dropped (PyTorch's
floor mode), so the last rows or columns of the input may be read by no window.

δ flows back through ``PoolBackward``: max pooling routes each output's δ to the first
maximum of its window (row-major order, as PyTorch does), mean pooling spreads it evenly
over the window.  Both scatter into a zeroed plane per (sample, channel), so overlapping
windows (stride < size) add up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sympy as sp

from graphc.graph import Node
from graphc.kernels import Epilogue, Kernel, Tensor
from graphc.ops.base import Op, as_node, make_node
from graphc.ops.conv import (
    OUT_VARS,
    TAP_VARS,
    Window,
    axis_tuple,
    batch_signature,
    check_fits,
    input_subscripts,
    local_names,
    offset_text,
    output_body,
    parallel_for,
    product,
    row_major,
    scaled,
    spatial_input,
    subscripts,
)

if TYPE_CHECKING:
    from graphc.autodiff import Adjoints

KINDS = ("max", "mean")


def _origin(v: dict[str, str], win: Window) -> str:
    """Offset of the window of output (y, x) in its input plane: 'y * 2 * W + x * 2'."""
    terms = []
    for axis, var in enumerate(OUT_VARS[win.rank]):
        terms.append(scaled(v[var], win.stride[axis] * row_major(win.size)[axis]))
    return " + ".join(terms)


def _tap(v: dict[str, str], win: Window) -> str:
    """Offset of tap (p, q) inside a window: 'p * W + q'."""
    return " + ".join(
        scaled(v[var], row_major(win.size)[axis]) for axis, var in enumerate(TAP_VARS[win.rank])
    )


@dataclass(frozen=True)
class PoolKernel(Kernel):
    """out[n][c][·] = max or mean of its window of in[n][c], then the fused chain."""

    window: Window
    kind: str  # 'max' or 'mean'
    src: Tensor
    output: Epilogue  # over (n, c, *out), acc = the pooled value
    template: str = "pool"

    def reads(self) -> list[Tensor]:
        return [self.src] + [a.tensor for a in self.output.operands]

    def writes(self) -> list[Tensor]:
        return [a.target.tensor for a in self.output.assigns]

    def c_context(self, cg: Any) -> dict[str, Any]:
        """Template context (called by codegen.c.KernelContexts)."""
        from graphc.codegen.c import owner

        win = self.window
        out_vars, tap_vars = OUT_VARS[win.rank], TAP_VARS[win.rank]
        v = local_names(self, ("batch", "n", "c", *out_vars, *tap_vars, "acc", "window"))
        params, args = batch_signature(self, cg.target.real, v["batch"])
        outer = [(v["n"], v["batch"]), (v["c"], win.channels)]
        outer += [(v[var], win.out[a]) for a, var in enumerate(out_vars[:-1])]
        taps = [(v[t], k) for t, k in zip(tap_vars, win.kernel)]
        tap = f"{v['window']}[{_tap(v, win)}]"
        if self.kind == "max":
            first, update = (
                f"{v['window']}[0]",
                f"{v['acc']} = {tap} > {v['acc']} ? {tap} : {v['acc']}",
            )
            value: sp.Expr = sp.Symbol(v["acc"], real=True)
        else:
            first, update = cg.printer.doprint(sp.Float(0.0)), f"{v['acc']} += {tap}"
            value = sp.Symbol(v["acc"], real=True) / win.taps
        variables = [v["n"], v["c"], *[v[var] for var in out_vars]]
        depth = len(outer) + 1
        return {
            "params": params,
            "args": args,
            "v": v,
            "collapse": parallel_for(cg, len(outer)),
            "outer": outer,
            "taps": taps,
            "width": win.out[-1],
            "window": (
                f"{owner(self.src)} + "
                f"{offset_text([v['n'], v['c']], (win.channels, *win.size), batched=True)} + "
                f"{_origin(v, win)}"
            ),
            "first": first,
            "update": update,
            "indent": ["    " * (depth + k) for k in range(len(taps) + 2)],
            **output_body(cg, self.output, variables, value, v["batch"]),
        }

    def cuda_context(self, cg: Any) -> dict[str, Any]:
        """Template context of the CUDA kernel: the C one, one thread per output element."""
        from graphc.codegen.cuda import flat_index

        ctx = self.c_context(cg)
        v, win = ctx["v"], self.window
        positions = [(v["n"], v["batch"]), (v["c"], win.channels)]
        positions += [(v[var], win.out[a]) for a, var in enumerate(OUT_VARS[win.rank])]
        index, total = flat_index(positions)
        return {**ctx, "index": index, "total": total, "indent": "    " * (2 + len(ctx["taps"]))}


@dataclass(frozen=True)
class PoolBackwardKernel(Kernel):
    """δin[n][c] = each window's δ routed to its arg-max (max) or spread over it (mean)."""

    window: Window
    kind: str
    delta: Tensor
    src: Tensor | None  # the pooled input (max only: the arg-max is found again)
    plane: Tensor  # accumulates (batch, C, *size): a scratch, or the result itself
    output: Epilogue | None  # over (n, c, *size), acc = the plane's element; None: plane is it
    template: str = "pool_backward"

    def reads(self) -> list[Tensor]:
        extra = [a.tensor for a in self.output.operands] if self.output else []
        return [self.delta] + ([self.src] if self.src is not None else []) + extra

    def writes(self) -> list[Tensor]:
        extra = [a.target.tensor for a in self.output.assigns] if self.output else []
        return [self.plane] + extra

    def c_context(self, cg: Any) -> dict[str, Any]:
        """Template context (called by codegen.c.KernelContexts)."""
        from graphc.codegen.c import owner

        win = self.window
        out_vars, tap_vars = OUT_VARS[win.rank], TAP_VARS[win.rank]
        v = local_names(
            self,
            ("batch", "n", "c", *out_vars, *tap_vars, "i", "d", "to", "window", "best", "plane"),
        )
        params, args = batch_signature(self, cg.target.real, v["batch"])
        loops = [(v[var], win.out[a]) for a, var in enumerate(out_vars)]
        taps = [(v[t], k) for t, k in zip(tap_vars, win.kernel)]
        sample = offset_text([v["n"], v["c"]], (win.channels, *win.size), batched=True)
        position = [v["n"], v["c"], *[v[x] for x in out_vars]]
        delta = (
            f"{owner(self.delta)}[{offset_text(position, (win.channels, *win.out), batched=True)}]"
        )
        if self.kind == "mean":
            scale = cg.printer.doprint(sp.Float(1.0 / win.taps))
            delta = f"{delta} * {scale}"
        ctx: dict[str, Any] = {
            "params": params,
            "args": args,
            "v": v,
            "collapse": parallel_for(cg, 2),
            "channels": win.channels,
            "plane": f"{owner(self.plane)} + {sample}",
            "plane_size": product(win.size),
            "zero": cg.printer.doprint(sp.Float(0.0)),
            "loops": loops,
            "taps": taps,
            "delta": delta,
            "to": f"{v['plane']} + {_origin(v, win)}",
            "route": self.kind == "max",
            "window": f"{owner(self.src)} + {sample} + {_origin(v, win)}" if self.src else None,
            "tap": _tap(v, win),
            "indent": ["    " * (3 + len(loops) + k) for k in range(len(taps) + 2)],
            "output": None,
        }
        if self.output is not None:
            variables = [v["n"], v["c"], *[v[var] for var in out_vars]]
            index = offset_text([v[var] for var in out_vars], win.size)
            ctx["output"] = {
                "loops": [(v[var], win.size[a]) for a, var in enumerate(out_vars)],
                "indent": "    " * (3 + len(out_vars)),
                **output_body(cg, self.output, variables, f"{v['plane']}[{index}]", v["batch"]),
            }
        return ctx

    def cuda_context(self, cg: Any) -> dict[str, Any]:
        """Template context of the CUDA kernel: one thread per input element, adding the δ of
        every window over it (routed there, for max pooling) in the C kernel's order."""
        from graphc.codegen.c import owner
        from graphc.codegen.cuda import flat_index

        win = self.window
        out_vars, tap_vars = OUT_VARS[win.rank], TAP_VARS[win.rank]
        windows = ("wy", "wx")[-win.rank :]
        v = local_names(
            self, ("batch", "n", "c", *out_vars, *tap_vars, *windows, "acc", "window", "best")
        )
        params, args = batch_signature(self, cg.target.real, v["batch"])
        positions = [(v["n"], v["batch"]), (v["c"], win.channels)]
        positions += [(v[var], win.size[a]) for a, var in enumerate(out_vars)]
        index, total = flat_index(positions)
        ranges = []
        for axis, (var, w) in enumerate(zip(out_vars, windows)):
            pos, k, step, last = v[var], win.kernel[axis], win.stride[axis], win.out[axis] - 1
            first = f"{pos} < {k} ? 0 : ({pos} - {k} + {step}) / {step}"
            below = f"{pos} / {step}" if step > 1 else pos
            ranges.append((v[w], f"({first})", f"({below} < {last} ? {below} : {last})"))
        at_window = {var: v[w] for var, w in zip(out_vars, windows)}
        sample = offset_text([v["n"], v["c"]], (win.channels, *win.size), batched=True)
        origin = _origin({**v, **at_window}, win)
        where = [v["n"], v["c"], *[v[w] for w in windows]]
        delta = f"{owner(self.delta)}[{offset_text(where, (win.channels, *win.out), batched=True)}]"
        if self.kind == "mean":
            delta = f"{delta} * {cg.printer.doprint(sp.Float(1.0 / win.taps))}"
        # where the element sits in the window, as an offset in the plane like the taps'
        inside = " + ".join(
            scaled(f"{v[var]} - {scaled(v[w], win.stride[a])}", row_major(win.size)[a])
            for a, (var, w) in enumerate(zip(out_vars, windows))
        )
        output = None
        if self.output is not None:
            variables = [v["n"], v["c"], *[v[var] for var in out_vars]]
            output = output_body(cg, self.output, variables, v["acc"], v["batch"])
        spatial = [scaled(v[var], row_major(win.size)[a]) for a, var in enumerate(out_vars)]
        return {
            "params": params,
            "args": args,
            "v": v,
            "index": index,
            "total": total,
            "ranges": ranges,
            "delta": delta,
            "route": self.kind == "max",
            "window": f"{owner(self.src)} + {sample} + {origin}" if self.src else None,
            "taps": [(v[t], k) for t, k in zip(tap_vars, win.kernel)],
            "tap": _tap(v, win),
            "inside": inside,
            "plane": f"{owner(self.plane)}[{' + '.join([sample, *spatial])}]",
            "zero": cg.printer.doprint(sp.Float(0.0)),
            "indent": ["    " * (2 + len(ranges) + k) for k in range(len(tap_vars) + 2)],
            "output": output,
        }


def _pool_name(kind: str, rank: int) -> str:
    return f"{kind}_pool{rank}d"


class Pool(Op):
    """The max or the mean of each window of each channel."""

    absorbs_elementwise = True

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = f"{kind}_pool"

    def __repr__(self) -> str:
        return f"<op {self.name}>"

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        (x,) = node.inputs
        if not ad.needs(x):
            return {}
        inputs = [delta, x] if self.kind == "max" else [delta]
        backward = POOL_BACKWARD[self.kind]
        return {0: ad.apply(backward, inputs, wrt=x, attrs={"window": node.attrs["window"]})}

    def lower(self, node: Node, low: Any) -> PoolKernel:
        win: Window = node.attrs["window"]
        x = low.resolved(node, 0)
        out_vars, tap_vars = OUT_VARS[win.rank], TAP_VARS[win.rank]
        if self.kind == "max":
            reduce = " ".join(f"max_{t}" for t in tap_vars)
        else:
            reduce = f"(1/{win.taps}) " + " ".join(f"sum_{t}" for t in tap_vars)
        comment = (
            f"{node.name}{subscripts(['n', 'c', *out_vars])} = {reduce} "
            f"{x.name}[n][c]{input_subscripts(win)}  ({win.describe()})"
        )
        fused = low.fused(node)
        if fused:
            comment += "; then " + "; ".join(low.formula(m) for m in fused)
        return PoolKernel(
            low.table.namer(f"k_{node.name}"),
            comment,
            win,
            self.kind,
            low.table(low.source(node, 0)),
            low.output_pass(node),
        )

    def formula(self, node: Node, args: list[str]) -> str:
        win: Window = node.attrs["window"]
        return f"{_pool_name(self.kind, win.rank)}({args[0]}; {win.formula_text()})"


class PoolBackward(Op):
    """δ of a pooling's input: routed to each window's arg-max, or spread over the window."""

    absorbs_elementwise = True

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = f"{kind}_pool_backward"

    def __repr__(self) -> str:
        return f"<op {self.name}>"

    def lower(self, node: Node, low: Any) -> PoolBackwardKernel:
        from graphc.passes.fuse import ACC

        win: Window = node.attrs["window"]
        delta = low.resolved(node, 0)
        output = low.output_pass(node)
        fused = low.fused(node)
        if len(output.assigns) == 1 and output.assigns[0].expr == ACC and not fused:
            plane, output = output.assigns[0].target.tensor, None
        else:
            plane = low.table.scratch(f"{node.name} plane", (win.channels, *win.size), True)
        out_vars, tap_vars = OUT_VARS[win.rank], TAP_VARS[win.rank]
        where = subscripts(["n", "c", *out_vars])
        if self.kind == "max":
            x = low.resolved(node, 1)
            comment = (
                f"{node.name}[n][c]{input_subscripts(win)} += {delta.name}{where} at the first "
                f"({', '.join(tap_vars)}) where {x.name}[n][c]{input_subscripts(win)} is the "
                f"window's maximum  ({win.describe()})"
            )
        else:
            comment = (
                f"{node.name}[n][c]{input_subscripts(win)} += {delta.name}{where} / {win.taps} "
                f"for every ({', '.join(tap_vars)})  ({win.describe()})"
            )
        if fused:
            comment += "; then " + "; ".join(low.formula(m) for m in fused)
        return PoolBackwardKernel(
            low.table.namer(f"k_{node.name}"),
            comment,
            win,
            self.kind,
            low.table(low.source(node, 0)),
            low.table(low.source(node, 1)) if self.kind == "max" else None,
            plane,
            output,
        )

    def formula(self, node: Node, args: list[str]) -> str:
        win: Window = node.attrs["window"]
        size = "×".join(map(str, win.kernel))
        if self.kind == "max":
            return f"{args[0]} routed to the arg-max of each {size} window of {args[1]}"
        return f"{args[0]} / {win.taps} spread over each {size} window"


MAX_POOL = Pool("max")
MEAN_POOL = Pool("mean")
POOL = {"max": MAX_POOL, "mean": MEAN_POOL}
POOL_BACKWARD = {kind: PoolBackward(kind) for kind in KINDS}


# --- the DSL ----------------------------------------------------------------------------------
def _pool(kind: str, rank: int, x: Node, size: Any, stride: Any, name: str | None) -> Node:
    what = _pool_name(kind, rank)
    x = as_node(x, what)
    channels, spatial = spatial_input(x, rank, what)
    kernel = axis_tuple(size, rank, f"{what}: size")
    steps = kernel if stride is None else axis_tuple(stride, rank, f"{what}: stride")
    window = Window(channels, spatial, kernel, steps, (0,) * rank, (0,) * rank)
    check_fits(window, x, what)
    return make_node(
        x.graph,
        POOL[kind],
        [x],
        (channels, *window.out),
        True,
        name,
        what,
        attrs={"window": window},
    )


def max_pool2d(
    x: Node,
    size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    name: str | None = None,
) -> Node:
    """The maximum of each size window of each channel of samples (C, H, W).

    ``stride`` defaults to ``size``; windows that do not fit are dropped.
    """
    return _pool("max", 2, x, size, stride, name)


def mean_pool2d(
    x: Node,
    size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    name: str | None = None,
) -> Node:
    """The mean of each size window of each channel of samples (C, H, W)."""
    return _pool("mean", 2, x, size, stride, name)


def max_pool1d(x: Node, size: int, stride: int | None = None, name: str | None = None) -> Node:
    """The maximum of each window of each channel of samples (C, L)."""
    return _pool("max", 1, x, size, stride, name)


def mean_pool1d(x: Node, size: int, stride: int | None = None, name: str | None = None) -> Node:
    """The mean of each window of each channel of samples (C, L)."""
    return _pool("mean", 1, x, size, stride, name)
