"""Convolutions over one or two spatial axes, channels first, and their adjoints.

Each sample is (C, H, W) in 2-D and (C, L) in 1-D; filters are (O, C, kh, kw) and (O, C, k),
PyTorch's layouts.  A convolution is a cross-correlation (the filter is not flipped):

    S[n][o][y][x] = Σ_c Σ_p Σ_q I[n][c][y·sy + p − top][x·sx + q − left] · K[o][c][p][q]

where I is zero outside the sample.  ``conv2d`` adds the bias and the activation as
elementwise nodes, so their derivatives are derived like every other activation's, and
the lowering fuses them into the convolution's output pass.

δ flows back through two ops of its own:

    δI = conv_transpose(δS, K):
        δI[n][c][y·sy + p − top][x·sx + q − left] += δS[n][o][y][x] · K[o][c][p][q]
    ∂E/∂K[o][c][p][q] =
        Σ_n Σ_y Σ_x δS[n][o][y][x] · I[n][c][y·sy + p − top][x·sx + q − left]

The kernels are direct loops with compile-time sizes, parallel over samples and channels
with orphaned ``omp for`` (they run inside the training step's parallel region):

- forward: per (sample, filter), sums of a row, or of a whole plane laid out at the padded
  width (stride 1, see ``sweep``), accumulate on the stack tap by tap along a vectorized
  loop; then the output pass stores them through the fused bias and activation.
- δ of the input: at stride 1 the same kernel, correlating δ (zero-padded by k - 1 - pad)
  with the flipped filters, in and out channels swapped; otherwise δ is scattered back
  plane by plane.
- δ of the filters: per (filter, channel), long dot products of δ with the shifted input
  planes, summed over the batch.

Padding copies each input plane into a zero-bordered scratch plane first (no bounds tests
in the inner loops); every scratch lives in the model's arena.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import sympy as sp

from graphc.errors import GraphError, ShapeError
from graphc.graph import Node
from graphc.kernels import Epilogue, Kernel, Tensor, sample_blocks
from graphc.ops.base import Op, as_node, make_node
from graphc.ops.elementwise import activate, apply, get_activation
from graphc.ops.shape import reshape
from graphc.symbolic import N, X

if TYPE_CHECKING:
    from graphc.autodiff import Adjoints

#: loop variables of the output's spatial axes and of the window's taps, by rank
OUT_VARS = {1: ("x",), 2: ("y", "x")}
TAP_VARS = {1: ("q",), 2: ("p", "q")}
#: asks the C compiler to vectorize the loop that follows (it has no loop-carried dependence)


# --- geometry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """A window sliding over the spatial axes (one or two) of channels-first samples."""

    channels: int
    size: tuple[int, ...]  # spatial size of the input
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad_before: tuple[int, ...]
    pad_after: tuple[int, ...]

    @property
    def rank(self) -> int:
        """Number of spatial axes (1 or 2)."""
        return len(self.size)

    @property
    def padded(self) -> tuple[int, ...]:
        """Spatial size of the zero-padded input."""
        return tuple(s + b + a for s, b, a in zip(self.size, self.pad_before, self.pad_after))

    @property
    def out(self) -> tuple[int, ...]:
        """Spatial size of the output: windows that do not fit are dropped."""
        return tuple((p - k) // s + 1 for p, k, s in zip(self.padded, self.kernel, self.stride))

    @property
    def unit_stride(self) -> bool:
        """Whether the window moves one position at a time along every axis."""
        return all(s == 1 for s in self.stride)

    def transposed(self, out_channels: int) -> "Window | None":
        """The window of δI as a correlation of δS with the flipped filters (stride 1 only).

        δI[i] = Σ_p δS[i + top - p] K[p] = Σ_p' δS[i + top - (k - 1) + p'] K[k - 1 - p']:
        δS zero-padded by k - 1 - top before and k - 1 - bottom after.  None for strides
        above 1 or padding wider than k - 1 (then δ is scattered instead).
        """
        if not self.unit_stride:
            return None
        before = tuple(k - 1 - b for k, b in zip(self.kernel, self.pad_before))
        after = tuple(k - 1 - a for k, a in zip(self.kernel, self.pad_after))
        if min(before + after) < 0:
            return None
        return Window(out_channels, self.out, self.kernel, self.stride, before, after)

    @property
    def has_padding(self) -> bool:
        """Whether any side is padded."""
        return any(self.pad_before) or any(self.pad_after)

    @property
    def taps(self) -> int:
        """Elements in one window of one channel."""
        count = 1
        for k in self.kernel:
            count *= k
        return count

    def describe(self) -> str:
        """'5x5 window, stride 1, zero padding 2' (ASCII, for C comments)."""
        size = f"{self.kernel[0]}-wide" if self.rank == 1 else "x".join(map(str, self.kernel))
        text = f"{size} window, stride {_axes_text(self.stride)}"
        if self.has_padding:
            if self.pad_before == self.pad_after:
                text += f", zero padding {_axes_text(self.pad_before)}"
            else:
                text += (
                    f", zero padding {_axes_text(self.pad_before)} before and "
                    f"{_axes_text(self.pad_after)} after"
                )
        return text

    def formula_text(self) -> str:
        """'5×5, stride 1, pad 2' (for explain)."""
        size = f"{self.kernel[0]}-wide" if self.rank == 1 else "×".join(map(str, self.kernel))
        text = f"{size}, stride {_axes_text(self.stride)}"
        if self.has_padding:
            pad = _axes_text(self.pad_before)
            if self.pad_before != self.pad_after:
                pad += f"+{_axes_text(self.pad_after)}"
            text += f", pad {pad}"
        return text


def _axes_text(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def axis_tuple(value: Any, rank: int, what: str, minimum: int = 1) -> tuple[int, ...]:
    """An int or a tuple of ``rank`` ints (each >= ``minimum``) as a tuple."""

    def whole(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    values: tuple[int, ...] | None = None
    if whole(value):
        values = (int(value),) * rank
    elif isinstance(value, (tuple, list)) and all(whole(v) for v in value):
        values = tuple(int(v) for v in value)
    if values is None or len(values) != rank or any(v < minimum for v in values):
        raise GraphError(
            f"{what} must be an integer >= {minimum} or a tuple of {rank} such integers, "
            f"got {value!r}"
        )
    return values


def spatial_input(x: Node, rank: int, what: str) -> tuple[int, tuple[int, ...]]:
    """(channels, spatial size) of a batched channels-first input; a ShapeError otherwise."""
    layout = "(C, H, W)" if rank == 2 else "(C, L)"
    if not x.batched or len(x.shape) != rank + 1:
        raise ShapeError(
            f"{what}: the input {x.describe()} must be a batch of samples of shape {layout}, "
            f"channels first (reshape it with gc.reshape(x, ...))"
        )
    if x.dtype != "real":
        raise GraphError(f"{what}: {x.describe()} holds integers")
    return x.shape[0], x.shape[1:]


def padding_sides(
    padding: Any, size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...], what: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(before, after) zero padding per spatial axis for 'valid', 'same' or integers.

    'same' follows TensorFlow: the output has ceil(size / stride) positions and the total
    padding needed is split evenly, the odd element going after (so odd kernels at stride
    1 are centred, and an even kernel gets its extra row and column after the data).
    """
    rank = len(size)
    if padding == "valid":
        return (0,) * rank, (0,) * rank
    if padding == "same":
        before, after = [], []
        for s, k, st in zip(size, kernel, stride):
            out = -(-s // st)
            total = max((out - 1) * st + k - s, 0)
            before.append(total // 2)
            after.append(total - total // 2)
        return tuple(before), tuple(after)
    if isinstance(padding, str):
        raise GraphError(f"{what}: padding must be 'valid', 'same' or an integer, got {padding!r}")
    pad = axis_tuple(padding, rank, f"{what}: padding", minimum=0)
    return pad, pad


def check_fits(window: Window, x: Node, what: str) -> None:
    """A ShapeError when the window is larger than the (padded) input."""
    for axis, (p, k) in enumerate(zip(window.padded, window.kernel)):
        if k > p:
            raise ShapeError(
                f"{what}: the {'x'.join(map(str, window.kernel))} window does not fit in "
                f"{x.describe()} (spatial axis {axis} has {p} positions with padding); use a "
                "smaller kernel or more padding"
            )


# --- C text helpers shared by the window kernels (convolution and pooling) -----------------
def local_names(kernel: Kernel, wanted: Sequence[str]) -> dict[str, str]:
    """C names of a kernel's locals: the wanted ones, with '_' added where a tensor has it."""
    from graphc.codegen.c import owner

    taken = {owner(t) for t in kernel.reads() + kernel.writes()}
    names = {}
    for want in wanted:
        name = want
        while name in taken:
            name += "_"
        taken.add(name)
        names[want] = name
    return names


def row_major(shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major element strides of ``shape``."""
    strides, step = [], 1
    for s in reversed(shape):
        strides.append(step)
        step *= s
    return tuple(reversed(strides))


def product(values: Sequence[int]) -> int:
    """The product of sizes."""
    count = 1
    for s in values:
        count *= s
    return count


def offset_text(variables: Sequence[str], shape: Sequence[int], batched: bool = False) -> str:
    """'n * 4704 + o * 784': variables indexing the leading axes of a row-major array.

    With ``batched`` the first variable is the sample and ``shape`` is one sample's.
    """
    from graphc.codegen.c import index_text

    full = ((1,) if batched else ()) + tuple(shape)
    return index_text(tuple(variables), row_major(full)[: len(variables)])


def scaled(term: str, stride: int) -> str:
    """'y', 'y * 2' or '(y + 2) * 32': a term times a stride."""
    if stride == 1:
        return term
    return f"({term}) * {stride}" if " " in term else f"{term} * {stride}"


def shifted(var: str, shift: int) -> str:
    """'y' or 'y + 2'."""
    return f"{var} + {shift}" if shift else var


def plus(*terms: str | None) -> str:
    """The sum of the terms that are given."""
    return " + ".join(t for t in terms if t)


def sweep(v: dict[str, str], win: Window, flat: bool) -> dict[str, Any]:
    """How a kernel walks the output positions of one plane.

    Row by row: a loop over the output rows (2-D), then ``x`` along a row; the input
    element of position x for tap (p, q) is ``row[x * sx]`` with ``row`` at ``tap``
    (``(y * sy + p) * Wp + q``; ``row_tap`` leaves q out) and the output row at
    ``row_offset`` (``y * W'``).

    Flat (stride 1, 2-D): the rows are laid out at the padded width Wp, so one loop
    ``yx`` over (H' - 1) * Wp + W' positions covers the plane (the Wp - W' positions past
    each row's end are computed or read as zeros and never stored).  In 1-D a row is the
    whole plane already.
    """
    rank = win.rank
    out_vars, tap_vars = OUT_VARS[rank], TAP_VARS[rank]
    if flat and rank == 2:
        var = v["yx"]
        taps = [scaled(v[t], row_major(win.padded)[a]) for a, t in enumerate(tap_vars)]
        return {
            "rows": [],
            "var": var,
            "width": flat_length(win),
            "tap": plus(*taps),
            "row_tap": plus(*taps[:-1]),
            "row_offset": None,
            "step": var,
            "row_width": win.padded[-1],
        }
    rows = [(v[var], win.out[a]) for a, var in enumerate(out_vars[:-1])]
    row_offset = scaled(v["y"], win.out[-1]) if rank == 2 else None
    taps_terms = []
    for axis in range(rank - 1):
        row = f"{scaled(v[out_vars[axis]], win.stride[axis])} + {v[tap_vars[axis]]}"
        taps_terms.append(scaled(row, row_major(win.padded)[axis]))
    row_tap = plus(*taps_terms)
    taps_terms.append(v[tap_vars[-1]])
    return {
        "rows": rows,
        "var": v["x"],
        "width": win.out[-1],
        "tap": plus(*taps_terms),
        "row_tap": row_tap,
        "row_offset": row_offset,
        "step": scaled(v["x"], win.stride[-1]),
        "row_width": win.out[-1],
    }


def flat_length(win: Window) -> int:
    """Positions of a flat sweep: (H' - 1) * Wp + W' (2-D), W' (1-D)."""
    if win.rank == 1:
        return win.out[0]
    return (win.out[0] - 1) * win.padded[-1] + win.out[-1]


def copy_pass(
    cg: Any,
    v: dict[str, str],
    comment: str,
    channel: str,
    channels: int,
    src: Tensor,
    dst: Tensor,
    size: tuple[int, ...],
    padded: tuple[int, ...],
    before: tuple[int, ...],
) -> dict[str, Any]:
    """A pass copying every plane of ``src`` (size) into a zeroed plane of ``dst`` (padded)."""
    from graphc.codegen.c import owner

    out_vars = OUT_VARS[len(size)]
    loops, src_index, dst_index = [], [], []
    for axis, var in enumerate(out_vars):
        loops.append((v[var], size[axis]))
        src_index.append(scaled(v[var], row_major(size)[axis]))
        dst_index.append(scaled(shifted(v[var], before[axis]), row_major(padded)[axis]))
    return {
        "comment": comment,
        "pragma": parallel_for(cg, 2),
        "channel": channel,
        "channels": channels,
        "src": plus(owner(src), offset_text([v["n"], channel], (channels, *size), batched=True)),
        "dst": plus(owner(dst), offset_text([v["n"], channel], (channels, *padded), batched=True)),
        "plane": product(padded),
        "loops": loops,
        "src_index": plus(*src_index),
        "dst_index": plus(*dst_index),
        "zero": cg.printer.doprint(sp.Float(0.0)),
        "indent": "    " * (3 + len(loops)),
    }


def pad_pass(
    cg: Any,
    v: dict[str, str],
    win: Window,
    src: Tensor,
    padded: Tensor | None,
    channel: str | None = None,
    what: str = "the input",
) -> dict[str, Any] | None:
    """The pass copying the input into its zero-padded scratch, or None without padding."""
    if padded is None:
        return None
    return copy_pass(
        cg,
        v,
        f"{what}, zero-padded, plane by plane",
        channel or v["c"],
        win.channels,
        src,
        padded,
        win.size,
        win.padded,
        win.pad_before,
    )


def widen_pass(
    cg: Any, v: dict[str, str], win: Window, out_channels: int, delta: Tensor, wide: Tensor | None
):
    """The pass laying δ's rows out at the padded width (a flat sweep), or None."""
    if wide is None:
        return None
    return copy_pass(
        cg,
        v,
        f"the incoming delta with its rows {win.padded[-1]} wide (zeros past column {win.out[-1]})",
        v["o"],
        out_channels,
        delta,
        wide,
        win.out,
        (*win.out[:-1], win.padded[-1]),
        (0,) * win.rank,
    )


def output_body(
    cg: Any, output: Epilogue, variables: Sequence[str], acc: str | sp.Expr, batch: str
) -> dict[str, Any]:
    """Temporaries and stores of an output pass: the value ``acc`` (C text or an expression
    of C names) and the fused chain."""
    from graphc.passes.fuse import ACC

    value = acc if isinstance(acc, sp.Expr) else sp.Symbol(acc, real=True)
    extra = {ACC: value, N: sp.Symbol(batch, positive=True)}
    body = cg._body(output.operands, output.assigns, tuple(variables), extra)
    return {"temps": body["temps"], "stores": body["stores"]}


def plane_output(
    cg: Any, v: dict[str, str], win: Window, output: Epilogue | None, channel: str, batch: str
) -> dict[str, Any] | None:
    """The output pass over an accumulated (padded) input plane, or None."""
    if output is None:
        return None
    out_vars = OUT_VARS[win.rank]
    index = plus(
        *[
            scaled(shifted(v[var], win.pad_before[a]), row_major(win.padded)[a])
            for a, var in enumerate(out_vars)
        ]
    )
    variables = [v["n"], channel, *[v[var] for var in out_vars]]
    return {
        "loops": [(v[var], win.size[a]) for a, var in enumerate(out_vars)],
        "indent": "    " * (3 + len(out_vars)),
        **output_body(cg, output, variables, f"{v['plane']}[{index}]", batch),
    }


def batch_signature(kernel: Kernel, real: str, batch: str) -> tuple[str, str]:
    """(parameters, arguments) of a window kernel: the batch's row count, then tensors."""
    from graphc.codegen.c import signature

    params, args = signature(kernel, real, False)
    return f"const int {batch}, {params}", f"n, {args}"


def cuda_pad_args(
    dst: Tensor,
    src: Tensor,
    planes: str,
    size: Sequence[int],
    padded: Sequence[int],
    before: Sequence[int],
) -> str:
    """Arguments of the CUDA runtime's gc_pad_planes: each plane of ``src`` (size) copied
    into a zeroed plane of ``dst`` (padded), ``before`` zeros ahead on each axis."""
    from graphc.codegen.c import owner

    h, w = (1, size[0]) if len(size) == 1 else size
    hp, wp = (1, padded[0]) if len(padded) == 1 else padded
    top, left = (0, before[0]) if len(before) == 1 else before
    return f"{owner(dst)}, {owner(src)}, (long){planes}, {h}, {w}, {hp}, {wp}, {top}, {left}"


def window_read(
    v: dict[str, str], win: Window, source: str, channel: str, positions: Sequence[str]
) -> str:
    """'in[n * 300 + c * 100 + (y * 2 + p) * 10 + x * 2 + q]': where tap (p, q) of the output
    at ``positions`` reads a (padded) input plane of ``channel``."""
    spatial = []
    for axis, (pos, tap) in enumerate(zip(positions, TAP_VARS[win.rank])):
        term = f"{scaled(pos, win.stride[axis])} + {v[tap]}"
        spatial.append(scaled(term, row_major(win.padded)[axis]))
    sample = offset_text([v["n"], channel], (win.channels, *win.padded), batched=True)
    return f"{source}[{plus(sample, *spatial)}]"


def parallel_for(cg: Any, loops: int) -> str:
    """The work-sharing pragma over ``loops`` perfectly nested loops."""
    pragma = cg.target.parallel_for
    # a target without threads (the embedded export) has no pragma to extend
    return pragma if loops == 1 or not pragma else f"{pragma} collapse({loops})"


def indents(depth: int, *extra: int) -> list[str]:
    """Indentation strings: ``depth`` levels, then ``depth + e`` for each extra level count."""
    return ["    " * depth] + ["    " * (depth + e) for e in extra]


def subscripts(names: Sequence[str]) -> str:
    """'[n][o][y][x]'."""
    return "".join(f"[{name}]" for name in names)


def input_subscripts(window: Window) -> str:
    """'[y*2 + p - 1][x*2 + q - 1]': where tap (p, q) of output (y, x) reads the input."""
    parts = []
    for axis in range(window.rank):
        out_var, tap_var = OUT_VARS[window.rank][axis], TAP_VARS[window.rank][axis]
        stride = window.stride[axis]
        text = f"{out_var}*{stride} + {tap_var}" if stride != 1 else f"{out_var} + {tap_var}"
        if window.pad_before[axis]:
            text += f" - {window.pad_before[axis]}"
        parts.append(text)
    return subscripts(parts)


#: locals every window kernel may use (renamed where a tensor has the name)
LOCALS = ("batch", "n", "o", "c", "y", "x", "yx", "p", "q", "i", "acc", "w", "d", "dot", "row")
LOCALS += ("dv",)
LOCALS += ("src", "dst", "to", "plane", "window", "best")
LOCALS += ("ob", "blk", "start", "stop", "part")

#: outputs along a row whose lane sums a forward lane sweep keeps in registers at once
POSITION_BLOCK = 8

#: output channels the filter gradient's lane sweep takes at once (vector lanes of sums);
#: layers with fewer output channels keep the row sweep, which wins there (LeNet's conv1
#: with 6: 361 us against 421 us per batch of 64 on one Zen 4 core)
LANE_BLOCK = 16

#: a flat sweep keeps one plane of sums on the stack: at most this many elements
FLAT_STACK_LIMIT = 4096
#: kernels at most this wide add a whole row of taps in one pass over the sums
UNROLL_LIMIT = 8
#: output channels that share each load of an input row (the largest that divides them)
CHANNEL_BLOCKS = (4, 3, 2)


# --- kernels ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvKernel(Kernel):
    """out[n][o][·] = f(Σ_{c,p,q} in[n][c][·] · W[o][c][p][q]): sums of a row or plane on
    the stack, accumulated tap by tap along a vectorized loop, then the output pass."""

    window: Window
    out_channels: int
    src: Tensor
    weights: Tensor
    padded: Tensor | None  # zero-padded copy of src (batch, C, *padded), or None
    flat: bool  # sweep whole planes (stride 1) rather than rows
    output: Epilogue  # over (n, o, *out), acc = the correlation
    #: weights read as W[c][o][k - 1 - p][k - 1 - q]: the δ of a stride-1 convolution's input
    transposed: bool = False
    #: the weights copied with the output channels last, LANE_BLOCK-wide blocks (C's lane
    #: sweep, for LANE_BLOCK or more output channels)
    lanes: Tensor | None = None
    template: str = "conv"

    def flops(self, rows: int) -> int:
        win = self.window
        return 2 * rows * self.out_channels * product(win.out) * win.taps * win.channels

    def reads(self) -> list[Tensor]:
        extra = [t for t in (self.padded, self.lanes) if t is not None]
        return [self.src, self.weights] + extra + [a.tensor for a in self.output.operands]

    def writes(self) -> list[Tensor]:
        extra = [t for t in (self.padded, self.lanes) if t is not None]
        return extra + [a.target.tensor for a in self.output.assigns]

    def _channels(self, v: dict[str, str]) -> tuple[str, str, str, list[tuple[str, int]]]:
        """This kernel's output and summed channel variables (a transposed one makes c of
        o), W's index for them and the window's taps, and the summed loops: the channel,
        then the window."""
        win = self.window
        tap_vars = TAP_VARS[win.rank]
        o, c = (v["c"], v["o"]) if self.transposed else (v["o"], v["c"])
        if self.transposed:
            flipped = [f"({k - 1} - {v[t]})" for t, k in zip(tap_vars, win.kernel)]
            weight = offset_text([c, o, *flipped], (win.channels, self.out_channels, *win.kernel))
        else:
            weight = offset_text(
                [o, c, *[v[t] for t in tap_vars]], (self.out_channels, win.channels, *win.kernel)
            )
        taps = [(c, win.channels)] + [(v[t], k) for t, k in zip(tap_vars, win.kernel)]
        return o, c, weight, taps

    def c_context(self, cg: Any) -> dict[str, Any]:
        """Template context (called by codegen.c.KernelContexts)."""
        from graphc.codegen.c import owner

        if self.lanes is not None:
            return self._lanes_context(cg)
        win = self.window
        out_vars, tap_vars = OUT_VARS[win.rank], TAP_VARS[win.rank]
        v = local_names(self, LOCALS)
        params, args = batch_signature(self, cg.target.real, v["batch"])
        source = self.padded if self.padded is not None else self.src
        walk = sweep(v, win, self.flat)
        o, c, weight, taps = self._channels(v)
        # a row of taps loaded once serves ``block`` output channels (flat sweeps)
        block = 1
        if self.flat and win.kernel[-1] <= UNROLL_LIMIT:
            block = next((b for b in CHANNEL_BLOCKS if self.out_channels % b == 0), 1)
        channel = (v["ob"], self.out_channels // block) if block > 1 else (o, self.out_channels)
        outer = [(v["n"], v["batch"]), channel] + walk["rows"]
        # the taps along a row in one pass over the sums: one load and store of each sum
        # per row of taps rather than per tap (the sums are added in the same order)
        row_taps = None
        if win.kernel[-1] <= UNROLL_LIMIT:
            k = win.kernel[-1]
            axes = (
                (win.channels, self.out_channels)
                if self.transposed
                else (
                    self.out_channels,
                    win.channels,
                )
            )
            leading = [c, o] if self.transposed else [o, c]
            if self.transposed:
                leading += [f"({kk - 1} - {v[t]})" for t, kk in zip(tap_vars[:-1], win.kernel)]
            else:
                leading += [v[t] for t in tap_vars[:-1]]
            columns = [k - 1 - j if self.transposed else j for j in range(k)]

            def row_weights(out_channel: str) -> list[str]:
                at = [out_channel if name == o else name for name in leading]
                base = offset_text(at, (*axes, *win.kernel))
                return [
                    f"{owner(self.weights)}[{plus(base, str(j) if j else None)}]" for j in columns
                ]

            row_taps = {
                "weights": row_weights(o),
                # the weights of each output channel of a block (block > 1)
                "blocks": [row_weights(f"({v['ob']} * {block} + {b})") for b in range(block)]
                if block > 1
                else [],
                "terms": [(j, plus(walk["step"], str(j) if j else None)) for j in range(k)],
                "row": plus(
                    owner(source),
                    offset_text([v["n"], c], (win.channels, *win.padded), batched=True),
                    walk["row_tap"],
                ),
            }
            taps = taps[:-1]
        if self.flat:
            stores = [(v[var], win.out[a]) for a, var in enumerate(out_vars)]
            position = plus(*[scaled(v[var], walk["row_width"]) for var in out_vars[:-1]], v["x"])
        else:
            stores = [(v["x"], win.out[-1])]
            position = v["x"]
        variables = [v["n"], o, *[v[var] for var in out_vars]]
        acc = f"{v['acc']}[{v['blk']}][{position}]" if block > 1 else f"{v['acc']}[{position}]"
        start, stop = self._swept(v, walk["width"])
        return {
            "params": params,
            "args": args,
            "v": v,
            "pad": pad_pass(
                cg, v, win, self.src, self.padded, c, "delta" if self.transposed else "the input"
            ),
            "collapse": parallel_for(cg, len(outer)),
            "outer": outer,
            "taps": taps,
            "var": walk["var"],
            "width": walk["width"],
            "start": start,
            "stop": stop,
            "weight": f"{owner(self.weights)}[{weight}]",
            "row": plus(
                owner(source),
                offset_text([v["n"], c], (win.channels, *win.padded), batched=True),
                walk["tap"],
            ),
            "step": walk["step"],
            "row_taps": row_taps,
            "simd": cg.target.simd,
            "store_loops": stores,
            "block": block,
            "channel": o,
            "indent": indents(len(outer) + 1, len(taps), len(taps) + 1, len(stores), 1),
            **output_body(cg, self.output, variables, acc, v["batch"]),
        }

    def _lanes_context(self, cg: Any) -> dict[str, Any]:
        """The lane sweep: the weights are first copied with the output channels last;
        then, for each sample, block of LANE_BLOCK output channels and output row, up to
        POSITION_BLOCK outputs along the row keep their sums for all the block's channels
        in vector lanes, each input value times the lane vector of its tap's weights."""
        from graphc.codegen.c import owner

        win = self.window
        out_vars, tap_vars = OUT_VARS[win.rank], TAP_VARS[win.rank]
        v = local_names(self, LOCALS + ("lane", "x0"))
        params, args = batch_signature(self, cg.target.real, v["batch"])
        source = self.padded if self.padded is not None else self.src
        width = self.lanes.shape[-1]
        o, c, weight, taps = self._channels(v)
        tap_index = offset_text([c, *[v[t] for t in tap_vars]], (win.channels, *win.kernel))
        blocks = width > LANE_BLOCK
        outer = [(v["n"], v["batch"], f"++{v['n']}")]
        if blocks:
            outer.append((v["ob"], width, f"{v['ob']} += {LANE_BLOCK}"))
        if win.rank == 2:
            outer.append((v["y"], win.out[0], f"++{v['y']}"))
        x = v[out_vars[-1]]
        # the input row of channel c and window row p for output row y, from output x0 on
        row = offset_text([v["n"], c], (win.channels, *win.padded), batched=True)
        if win.rank == 2:
            row = plus(row, scaled(f"{scaled(v['y'], win.stride[0])} + {v['p']}", win.padded[1]))
        row = plus(owner(source), row, scaled(v["x0"], win.stride[-1]))
        row_taps = offset_text([c, *[v[t] for t in tap_vars[:-1]]], (win.channels, *win.kernel))
        lane_weights = plus(
            owner(self.lanes),
            scaled(row_taps, width),
            v["ob"] if blocks else None,
        )
        along = win.out[-1]
        block = min(POSITION_BLOCK, along)
        # (first x0, or None for a loop over the whole blocks; positions in the run)
        runs: list[tuple[int | None, int]] = [(None, block)]
        if along % block:
            runs.append((along - along % block, along % block))
        channel = f"{v['ob']} + {v['lane']}" if blocks else v["lane"]
        variables = [v["n"], o, *[v[var] for var in out_vars]]
        acc = f"{v['acc']}[{v['i']}][{v['lane']}]"
        return {
            "params": params,
            "args": args,
            "v": v,
            "variant": "lanes",
            "pad": pad_pass(
                cg, v, win, self.src, self.padded, c, "delta" if self.transposed else "the input"
            ),
            "width": width,
            "out_channels": self.out_channels,
            "full_lanes": self.out_channels % LANE_BLOCK == 0,
            "lane_buffer": owner(self.lanes),
            "zero": cg.printer.doprint(sp.Float(0.0)),
            "taps": taps,
            "tap_index": tap_index,
            "weight": f"{owner(self.weights)}[{weight}]",
            "collapse": parallel_for(cg, len(outer)),
            "outer": outer,
            "sum_taps": taps[:-1],
            "row_width": win.kernel[-1],
            "row": row,
            "lane_weights": lane_weights,
            "stride": win.stride[-1],
            "runs": runs,
            "along": along,
            "lane_block": LANE_BLOCK,
            "channel": channel,
            "out": o,
            "x": x,
            "simd": cg.target.simd,
            # the run's loop, its sums and stores, the taps' row pointers, the lane loop
            # and its body, the stores' body
            "indent": indents(1 + len(outer), 1, len(taps), len(taps) + 1, len(taps) + 2, 3),
            **output_body(cg, self.output, variables, acc, v["batch"]),
        }

    def _swept(self, v: dict[str, str], width: int) -> tuple[str, str]:
        """First and last-plus-one flat positions that tap row p sweeps: C expressions.

        A flat sweep over a zero-padded plane: output row y reads padded row y + p, which is
        zero outside the data's rows [before, before + H).  Those rows add nothing to the
        sums (a valid convolution's δ is padded by k - 1 on each side: most of it is zeros),
        so tap row p sweeps only output rows [before - p, before + H - p).
        """
        win = self.window
        if self.padded is None or not self.flat or win.rank != 2:
            return "0", str(width)
        p, k = v[TAP_VARS[2][0]], win.kernel[0]
        before, end, row = win.pad_before[0], win.pad_before[0] + win.size[0], win.padded[-1]
        start = "0"
        if before >= k - 1:
            start = f"({before} - {p}) * {row}" if before else "0"
        elif before > 0:
            start = f"({p} < {before} ? ({before} - {p}) * {row} : 0)"
        stop = str(width)
        if win.pad_after[0] > 0:
            stop = f"(({end} - {p}) * {row} < {width} ? ({end} - {p}) * {row} : {width})"
        return start, stop

    def cuda_context(self, cg: Any) -> dict[str, Any]:
        """Template context of the CUDA kernel: one thread per output element, its taps summed
        in the C kernel's order (channel, then the window row by row)."""
        from graphc.codegen.c import owner
        from graphc.codegen.cuda import flat_index, without

        win = self.window
        out_vars = OUT_VARS[win.rank]
        v = local_names(self, LOCALS)
        params, args = batch_signature(self, cg.target.real, v["batch"])
        o, c, weight, taps = self._channels(v)
        positions = [(v["n"], v["batch"]), (o, self.out_channels)]
        positions += [(v[var], win.out[a]) for a, var in enumerate(out_vars)]
        index, total = flat_index(positions)
        source = self.padded if self.padded is not None else self.src
        pad = None
        if self.padded is not None:
            planes = f"{v['batch']} * {win.channels}"
            pad = cuda_pad_args(self.padded, self.src, planes, win.size, win.padded, win.pad_before)
        variables = [v["n"], o, *[v[var] for var in out_vars]]
        unused = {owner(self.src)} if self.padded is not None else set()
        return {
            "params": params,
            "args": args,
            "kernel_params": without(params, unused),
            "v": v,
            "pad": pad,
            "index": index,
            "total": total,
            "taps": taps,
            "weight": f"{owner(self.weights)}[{weight}]",
            "input": window_read(v, win, owner(source), c, [v[var] for var in out_vars]),
            "zero": cg.printer.doprint(sp.Float(0.0)),
            "indent": "    " * (2 + len(taps)),
            **output_body(cg, self.output, variables, v["acc"], v["batch"]),
        }


@dataclass(frozen=True)
class ConvBackwardDataKernel(Kernel):
    """δin[n][c][·] = Σ_{o,p,q} δout[n][o][·] · W[o][c][p][q], scattered plane by plane."""

    window: Window
    out_channels: int
    delta: Tensor
    weights: Tensor
    wide: Tensor | None  # δ with rows at the padded width (a flat 2-D sweep), or None
    plane: Tensor  # accumulates (batch, C, *padded): a scratch, or the result itself
    output: Epilogue | None  # over (n, c, *size), acc = the plane's element; None: plane is it
    template: str = "conv_backward_data"

    def flops(self, rows: int) -> int:
        win = self.window
        return 2 * rows * self.out_channels * product(win.out) * win.taps * win.channels

    def reads(self) -> list[Tensor]:
        extra = [a.tensor for a in self.output.operands] if self.output else []
        wide = [self.wide] if self.wide is not None else []
        return [self.delta, self.weights] + wide + extra

    def writes(self) -> list[Tensor]:
        extra = [a.target.tensor for a in self.output.assigns] if self.output else []
        wide = [self.wide] if self.wide is not None else []
        return wide + [self.plane] + extra

    def c_context(self, cg: Any) -> dict[str, Any]:
        """Template context (called by codegen.c.KernelContexts)."""
        from graphc.codegen.c import owner

        win = self.window
        tap_vars = TAP_VARS[win.rank]
        v = local_names(self, LOCALS)
        params, args = batch_signature(self, cg.target.real, v["batch"])
        walk = sweep(v, win, win.unit_stride)
        taps = [(v["o"], self.out_channels)] + [(v[t], k) for t, k in zip(tap_vars, win.kernel)]
        loops = taps + walk["rows"]
        weight = offset_text(
            [v["o"], v["c"], *[v[t] for t in tap_vars]],
            (self.out_channels, win.channels, *win.kernel),
        )
        delta = self.wide if self.wide is not None else self.delta
        delta_plane = (self.out_channels, *win.out[:-1], walk["row_width"])
        return {
            "params": params,
            "args": args,
            "v": v,
            "widen": widen_pass(cg, v, win, self.out_channels, self.delta, self.wide),
            "collapse": parallel_for(cg, 2),
            "channels": win.channels,
            "plane": plus(
                owner(self.plane),
                offset_text([v["n"], v["c"]], (win.channels, *win.padded), batched=True),
            ),
            "plane_size": product(win.padded),
            "zero": cg.printer.doprint(sp.Float(0.0)),
            "loops": loops,
            "weight": f"{owner(self.weights)}[{weight}]",
            "d_row": plus(
                owner(delta),
                offset_text([v["n"], v["o"]], delta_plane, batched=True),
                walk["row_offset"],
            ),
            "to_row": plus(v["plane"], walk["tap"]),
            "var": walk["var"],
            "width": walk["width"],
            "step": walk["step"],
            "simd": cg.target.simd,
            "indent": indents(3 + len(loops), 1),
            "output": plane_output(cg, v, win, self.output, v["c"], v["batch"]),
        }

    def cuda_context(self, cg: Any) -> dict[str, Any]:
        """Template context of the CUDA kernel: one thread per element of the (padded) plane,
        gathering what the C kernel scatters, in the same order (o, then the taps)."""
        from graphc.codegen.c import owner
        from graphc.codegen.cuda import flat_index, without

        win = self.window
        out_vars, tap_vars = OUT_VARS[win.rank], TAP_VARS[win.rank]
        inner = ("iy", "ix")[-win.rank :]
        v = local_names(self, LOCALS + inner)
        params, args = batch_signature(self, cg.target.real, v["batch"])
        positions = [(v["n"], v["batch"]), (v["c"], win.channels)]
        positions += [(v[var], win.padded[a]) for a, var in enumerate(out_vars)]
        index, total = flat_index(positions)
        taps = [(v["o"], self.out_channels)] + [(v[t], k) for t, k in zip(tap_vars, win.kernel)]
        weight = offset_text(
            [v["o"], v["c"], *[v[t] for t in tap_vars]],
            (self.out_channels, win.channels, *win.kernel),
        )
        # the output position whose tap (p, q) lands on plane element (y, x), if any
        reached, at = [], []
        for axis, (var, tap) in enumerate(zip(out_vars, tap_vars)):
            pos, step, count = v[var], win.stride[axis], win.out[axis]
            if step == 1:
                reached.append(f"{pos} >= {v[tap]} && {pos} - {v[tap]} < {count}")
                at.append(f"{pos} - {v[tap]}")
            else:
                reached.append(
                    f"{pos} >= {v[tap]} && ({pos} - {v[tap]}) % {step} == 0 && "
                    f"({pos} - {v[tap]}) / {step} < {count}"
                )
                at.append(f"({pos} - {v[tap]}) / {step}")
        delta = self.wide if self.wide is not None else self.delta
        width = win.padded[-1] if self.wide is not None else win.out[-1]
        delta_plane = (self.out_channels, *win.out[:-1], width)
        spatial = [scaled(at[0], width)] if win.rank == 2 else []
        read = plus(offset_text([v["n"], v["o"]], delta_plane, batched=True), *spatial, at[-1])
        widen = None
        if self.wide is not None:
            planes = f"{v['batch']} * {self.out_channels}"
            shape = (*win.out[:-1], win.padded[-1])
            widen = cuda_pad_args(self.wide, self.delta, planes, win.out, shape, (0,) * win.rank)
        output = None
        if self.output is not None:
            variables = [v["n"], v["c"], *[v[name] for name in inner]]
            output = {
                "inner": [
                    (v[name], f"{v[var]} - {pad}" if pad else v[var], win.size[a])
                    for a, (name, var, pad) in enumerate(zip(inner, out_vars, win.pad_before))
                ],
                **output_body(cg, self.output, variables, v["acc"], v["batch"]),
            }
        plane = offset_text([v["n"], v["c"]], (win.channels, *win.padded), batched=True)
        spatial_plane = [scaled(v[var], row_major(win.padded)[a]) for a, var in enumerate(out_vars)]
        unused = {owner(self.delta)} if self.wide is not None else set()
        return {
            "params": params,
            "args": args,
            "kernel_params": without(params, unused),
            "v": v,
            "pad": widen,
            "index": index,
            "total": total,
            "taps": taps,
            "reached": " && ".join(reached),
            "weight": f"{owner(self.weights)}[{weight}]",
            "delta": f"{owner(delta)}[{read}]",
            "plane": f"{owner(self.plane)}[{plus(plane, *spatial_plane)}]",
            "zero": cg.printer.doprint(sp.Float(0.0)),
            "indent": "    " * (2 + len(taps)),
            "output": output,
        }


@dataclass(frozen=True)
class ConvBackwardFilterKernel(Kernel):
    """∂E/∂W[o][c][p][q] = Σ_n Σ_{y,x} δ[n][o][y][x] · in[n][c][y·s + p][x·s + q]."""

    window: Window
    out_channels: int
    delta: Tensor
    src: Tensor
    padded: Tensor | None
    wide: Tensor | None
    grad: Tensor
    #: δ copied with the output channels last, in LANE_BLOCK-wide blocks (C's lane sweep)
    lanes: Tensor | None = None
    #: one gradient per block of ``block`` samples (SAMPLE_BLOCKS of them), summed after
    sums: Tensor | None = None
    block: int = 0
    template: str = "conv_backward_filter"

    def flops(self, rows: int) -> int:
        win = self.window
        return 2 * rows * self.out_channels * product(win.out) * win.taps * win.channels

    def _scratch(self) -> list[Tensor]:
        return [t for t in (self.padded, self.wide, self.lanes, self.sums) if t is not None]

    def reads(self) -> list[Tensor]:
        return [self.delta, self.src] + self._scratch()

    def writes(self) -> list[Tensor]:
        return self._scratch() + [self.grad]

    def _blocks(self, cg: Any, v: dict[str, str]) -> dict[str, Any]:
        """The sample blocks' context (none for one sum over the batch): the block loop and
        the sum over the blocks with its target, and where the body's sums go."""
        from graphc.codegen.c import owner, sample_block_context

        if self.sums is None:
            return {"blocks": None, "grad_block_sum": None, "part": owner(self.grad)}
        return {
            "blocks": sample_block_context(cg.target, self.sums, self.block, v["batch"]),
            "grad_block_sum": f"{owner(self.grad)}[{v['i']}]",
            "part": v["part"],
        }

    def c_context(self, cg: Any) -> dict[str, Any]:
        """Template context (called by codegen.c.KernelContexts)."""
        from graphc.codegen.c import owner

        if self.lanes is not None:
            return self._lanes_context(cg)
        win = self.window
        tap_vars = TAP_VARS[win.rank]
        v = local_names(self, LOCALS)
        params, args = batch_signature(self, cg.target.real, v["batch"])
        source = self.padded if self.padded is not None else self.src
        delta = self.wide if self.wide is not None else self.delta
        walk = sweep(v, win, win.unit_stride)
        # the kw taps of a window row share each load of δ: one sum per tap q
        taps = [(v[t], k) for t, k in zip(tap_vars[:-1], win.kernel[:-1])]
        loops = walk["rows"] + taps
        delta_plane = (self.out_channels, *win.out[:-1], walk["row_width"])
        grad = plus(
            offset_text([v["o"], v["c"]], (self.out_channels, win.channels, win.taps)), v["i"]
        )
        row_start = scaled(v["p"], win.kernel[-1]) if win.rank == 2 else None
        blocks = self._blocks(cg, v)
        unroll = 4  # samples per simd loop
        first, end = (v["start"], v["stop"]) if blocks["blocks"] else ("0", v["batch"])
        # where the samples left over from the groups of unroll begin
        rest = f"{end} - {end} % {unroll}"
        if blocks["blocks"]:
            rest = f"{end} - ({end} - {first}) % {unroll}"
        sums = [
            (f"{v['dot']}{q}", plus(walk["step"], str(q) if q else None), plus(row_start, str(q)))
            for q in range(win.kernel[-1])
        ]
        return {
            "params": params,
            "args": args,
            "v": v,
            "pad": pad_pass(cg, v, win, self.src, self.padded),
            "widen": widen_pass(cg, v, win, self.out_channels, self.delta, self.wide),
            "collapse": parallel_for(cg, 2),
            "out_channels": self.out_channels,
            "channels": win.channels,
            "taps_count": win.taps,
            "zero": cg.printer.doprint(sp.Float(0.0)),
            "loops": loops,
            "d_row": plus(
                owner(delta),
                offset_text([v["n"], v["o"]], delta_plane, batched=True),
                walk["row_offset"],
            ),
            "row": plus(
                owner(source),
                offset_text([v["n"], v["c"]], (win.channels, *win.padded), batched=True),
                walk["row_tap"],
            ),
            "sums": sums,
            # samples per simd loop, and how far apart consecutive samples' rows lie
            "unroll": unroll,
            "d_sample": product(delta_plane),
            "row_sample": win.channels * product(win.padded),
            "var": walk["var"],
            "width": walk["width"],
            "simd": (
                f"{cg.target.simd} reduction(+:{', '.join(name for name, _, _ in sums)})"
                if cg.target.simd
                else ""
            ),
            "grad": f"{blocks['part']}[{grad}]",
            **blocks,
            "first": first,
            "end": end,
            "rest": rest,
            "indent": indents(4 + len(loops), 1),
        }

    def _lanes_context(self, cg: Any) -> dict[str, Any]:
        """The lane sweep: δ is first copied with the output channels last; then, for each
        block of LANE_BLOCK output channels, input channel c and window row p (tap p of a
        1-D window is its only row), every output position adds input value × δ of all the
        block's channels at once, one sum per tap q of the row: the filter gradient as a
        register-blocked product with the channels in vector lanes, no horizontal sums."""
        from graphc.codegen.c import owner

        win = self.window
        v = local_names(self, LOCALS + ("lane",))
        params, args = batch_signature(self, cg.target.real, v["batch"])
        source = self.padded if self.padded is not None else self.src
        positions = product(win.out)
        width = self.lanes.shape[-1]
        out_vars = OUT_VARS[win.rank]
        rows = [(v["y"], win.out[0])] if win.rank == 2 else []
        # the input row read for output row y and window row p, and δ's row of positions
        row = offset_text([v["n"], v["c"]], (win.channels, *win.padded), batched=True)
        d_row = scaled(v["n"], positions * width)
        if win.rank == 2:
            row = plus(row, scaled(f"{scaled(v['y'], win.stride[0])} + {v['p']}", win.padded[1]))
            d_row = plus(scaled(v["n"], positions * width), scaled(v["y"], win.out[1] * width))
        # blocks of LANE_BLOCK channels, the input channels, the window rows: one sum block
        # each; with a single channel block its loop (and its offset) is left out
        blocks = width > LANE_BLOCK
        outer = [(v["ob"], width, f"{v['ob']} += {LANE_BLOCK}")] if blocks else []
        outer.append((v["c"], win.channels, f"++{v['c']}"))
        if win.rank == 2:
            outer.append((v["p"], win.kernel[0], f"++{v['p']}"))
        channel = f"{v['ob']} + {v['lane']}" if blocks else v["lane"]
        blocked = self._blocks(cg, v)
        grad = plus(
            scaled(channel, win.channels * win.taps),
            scaled(v["c"], win.taps),
            scaled(v["p"], win.kernel[-1]) if win.rank == 2 else None,
            v["q"],
        )
        return {
            "params": params,
            "args": args,
            "v": v,
            "variant": "lanes",
            "pad": pad_pass(cg, v, win, self.src, self.padded),
            "lane_block": LANE_BLOCK,
            "width": width,
            "out_channels": self.out_channels,
            "positions": positions,
            "delta": owner(self.delta),
            "lane_buffer": owner(self.lanes),
            "delta_plane": positions * self.out_channels,
            "collapse": parallel_for(cg, len(outer)),
            "outer": outer,
            "channel": channel,
            "taps": win.kernel[-1],
            "rows": rows,
            "x_extent": win.out[-1],
            "x": v[out_vars[-1]],
            "src_row": plus(owner(source), row),
            "d_row": plus(owner(self.lanes), d_row, v["ob"] if blocks else None),
            "step": scaled(v["x"], win.stride[-1]),
            "simd": cg.target.simd,
            "zero": cg.printer.doprint(sp.Float(0.0)),
            "grad": f"{blocked['part']}[{grad}]",
            **blocked,
            "first": v["start"] if blocked["blocks"] else "0",
            "end": v["stop"] if blocked["blocks"] else v["batch"],
            "full": self.out_channels % LANE_BLOCK == 0,
            # the sums' block, then the sweep of one (sample, output row)
            "indent": indents(1 + len(outer), 1 + len(rows)),
        }

    def cuda_context(self, cg: Any) -> dict[str, Any]:
        """Template context of the CUDA kernel: one block per filter weight, its threads
        sharing the (sample, position) sum, added up in a fixed order."""
        from graphc.codegen.c import owner
        from graphc.codegen.cuda import flat_index, without

        win = self.window
        out_vars, tap_vars = OUT_VARS[win.rank], TAP_VARS[win.rank]
        v = local_names(self, LOCALS)
        params, args = batch_signature(self, cg.target.real, v["batch"])
        weights = [(v["o"], self.out_channels), (v["c"], win.channels)]
        weights += [(v[t], k) for t, k in zip(tap_vars, win.kernel)]
        weight_index, count = flat_index(weights, index="gc_w")
        positions = [(v["n"], v["batch"])] + [
            (v[var], win.out[a]) for a, var in enumerate(out_vars)
        ]
        index, total = flat_index(positions, index="gc_j")
        source = self.padded if self.padded is not None else self.src
        delta = self.wide if self.wide is not None else self.delta
        width = win.padded[-1] if self.wide is not None else win.out[-1]
        delta_plane = (self.out_channels, *win.out[:-1], width)
        spatial = [scaled(v[out_vars[0]], width)] if win.rank == 2 else []
        read = plus(offset_text([v["n"], v["o"]], delta_plane, batched=True), *spatial, v["x"])
        passes = []
        if self.padded is not None:
            planes = f"{v['batch']} * {win.channels}"
            passes.append(
                cuda_pad_args(self.padded, self.src, planes, win.size, win.padded, win.pad_before)
            )
        if self.wide is not None:
            planes = f"{v['batch']} * {self.out_channels}"
            shape = (*win.out[:-1], win.padded[-1])
            passes.append(
                cuda_pad_args(self.wide, self.delta, planes, win.out, shape, (0,) * win.rank)
            )
        # a kernel reading a padded or widened copy never reads the original
        copies = ((self.src, self.padded), (self.delta, self.wide))
        unused = {owner(t) for t, copy in copies if copy is not None}
        return {
            "params": params,
            "args": args,
            "kernel_params": without(params, unused),
            "passes": passes,
            "weight_index": weight_index,
            "weights": count,
            "index": index,
            "total": total,
            "delta": f"{owner(delta)}[{read}]",
            "input": window_read(v, win, owner(source), v["c"], [v[var] for var in out_vars]),
            "grad": f"{owner(self.grad)}[gc_w]",
        }


# --- ops --------------------------------------------------------------------------------------
def _names(rank: int) -> str:
    return f"conv{rank}d"


class Conv(Op):
    """S = I ⋆ K: the cross-correlation of each sample with every filter (no bias)."""

    name = "conv"
    absorbs_elementwise = True

    def flops(self, node: Node) -> int:
        window = node.attrs["window"]
        taps = window.channels
        for k in window.kernel:
            taps *= k
        return 2 * node.size * taps

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        x, w = node.inputs
        attrs = {"window": node.attrs["window"]}
        result: dict[int, Node] = {}
        if ad.needs(x):
            result[0] = ad.apply(CONV_BACKWARD_DATA, [delta, w], wrt=x, attrs=attrs)
        if ad.needs(w):
            result[1] = ad.apply(CONV_BACKWARD_FILTER, [delta, x], wrt=w, attrs=attrs)
        return result

    def lower(self, node: Node, low: Any) -> ConvKernel:
        win: Window = node.attrs["window"]
        x = low.resolved(node, 0)
        w = low.resolved(node, 1)
        padded = None
        if win.has_padding:
            padded = low.table.scratch(
                f"{node.name} padded input", (win.channels, *win.padded), True
            )
        out_vars = OUT_VARS[win.rank]
        comment = (
            f"{node.name}{subscripts(['n', 'o', *out_vars])} = "
            f"sum_c {' '.join(f'sum_{t}' for t in TAP_VARS[win.rank])} "
            f"{x.name}[n][c]{input_subscripts(win)} * {w.name}[o][c]"
            f"{subscripts(TAP_VARS[win.rank])}  ({win.describe()})"
        )
        fused = low.fused(node)
        if fused:
            comment += "; then " + "; ".join(low.formula(m) for m in fused)
        return ConvKernel(
            low.table.namer(f"k_{node.name}"),
            comment,
            win,
            node.shape[0],
            low.table(low.source(node, 0)),
            low.table(low.source(node, 1)),
            padded,
            win.unit_stride and flat_length(win) <= FLAT_STACK_LIMIT,
            low.output_pass(node),
            lanes=_lane_scratch(node, low, "weight", win.channels * win.taps, node.shape[0]),
        )

    def formula(self, node: Node, args: list[str]) -> str:
        win: Window = node.attrs["window"]
        return f"{_names(win.rank)}({args[0]}, {args[1]}; {win.formula_text()})"


class ConvBackwardData(Op):
    """δI = conv_transpose(δS, K): each output's δ spread back over the inputs it read."""

    name = "conv_backward_data"
    absorbs_elementwise = True

    def lower(self, node: Node, low: Any) -> ConvKernel | ConvBackwardDataKernel:
        win: Window = node.attrs["window"]
        delta, w = low.resolved(node, 0), low.resolved(node, 1)
        output = low.output_pass(node)
        fused = low.fused(node)
        gather = win.transposed(delta.shape[0])
        if gather is not None:
            return self._gather(node, low, win, gather, output, fused)
        trivial = (
            not win.has_padding
            and len(output.assigns) == 1
            and output.assigns[0].expr == _acc()
            and not low.fused(node)
        )
        if trivial:
            plane, output = output.assigns[0].target.tensor, None
        else:
            plane = low.table.scratch(f"{node.name} plane", (win.channels, *win.padded), True)
        out_vars, tap_vars = OUT_VARS[win.rank], TAP_VARS[win.rank]
        comment = (
            f"{node.name}[n][c]{input_subscripts(win)} += {delta.name}"
            f"{subscripts(['n', 'o', *out_vars])} * {w.name}[o][c]{subscripts(tap_vars)} "
            f"for every o, {', '.join(out_vars)}, {', '.join(tap_vars)}  "
            f"(transposed convolution; {win.describe()})"
        )
        if fused:
            comment += "; then " + "; ".join(low.formula(m) for m in fused)
        return ConvBackwardDataKernel(
            low.table.namer(f"k_{node.name}"),
            comment,
            win,
            delta.shape[0],
            low.table(low.source(node, 0)),
            low.table(low.source(node, 1)),
            _wide(node, low),
            plane,
            output,
        )

    @staticmethod
    def _gather(
        node: Node, low: Any, win: Window, gather: Window, output: Epilogue, fused: list[Node]
    ) -> ConvKernel:
        """Stride 1: δI = (δS zero-padded) ⋆ (the filters flipped, in and out swapped)."""
        delta, w = low.resolved(node, 0), low.resolved(node, 1)
        padded = None
        if gather.has_padding:
            shape = (gather.channels, *gather.padded)
            padded = low.table.scratch(f"{node.name} padded delta", shape, True)
        out_vars, tap_vars = OUT_VARS[win.rank], TAP_VARS[win.rank]
        flipped = subscripts([f"{k - 1} - {t}" for t, k in zip(tap_vars, win.kernel)])
        comment = (
            f"{node.name}{subscripts(['n', 'c', *out_vars])} = "
            f"sum_o {' '.join(f'sum_{t}' for t in tap_vars)} "
            f"{delta.name}[n][o]{input_subscripts(gather)} * {w.name}[o][c]{flipped}  "
            f"(transposed convolution: {delta.name} zero-padded, the flipped filters; "
            f"{win.describe()})"
        )
        if fused:
            comment += "; then " + "; ".join(low.formula(m) for m in fused)
        return ConvKernel(
            low.table.namer(f"k_{node.name}"),
            comment,
            gather,
            win.channels,
            low.table(low.source(node, 0)),
            low.table(low.source(node, 1)),
            padded,
            flat_length(gather) <= FLAT_STACK_LIMIT,
            output,
            transposed=True,
            lanes=_lane_scratch(node, low, "weight", gather.channels * gather.taps, win.channels),
        )

    def formula(self, node: Node, args: list[str]) -> str:
        win: Window = node.attrs["window"]
        return f"{_names(win.rank)}_transpose({args[0]}, {args[1]}; {win.formula_text()})"


class ConvBackwardFilter(Op):
    """∂E/∂K: each input channel correlated with each output channel's δ, over the batch."""

    name = "conv_backward_filter"

    def lower(self, node: Node, low: Any) -> ConvBackwardFilterKernel:
        win: Window = node.attrs["window"]
        delta, x = low.resolved(node, 0), low.resolved(node, 1)
        padded = None
        if win.has_padding:
            padded = low.table.scratch(
                f"{node.name} padded input", (win.channels, *win.padded), True
            )
        out_vars, tap_vars = OUT_VARS[win.rank], TAP_VARS[win.rank]
        comment = (
            f"{node.name}[o][c]{subscripts(tap_vars)} = sum_n "
            f"{' '.join(f'sum_{v}' for v in out_vars)} {delta.name}"
            f"{subscripts(['n', 'o', *out_vars])} * {x.name}[n][c]{input_subscripts(win)}  "
            f"({win.describe()})"
        )
        out_channels = delta.shape[0]
        lanes = _lane_scratch(node, low, "delta", product(win.out), out_channels, batched=True)
        sums, block = None, 0
        if low.lanes and low.batch > 1:
            # fixed blocks of samples, so the sums come out the same on any team
            block, count = sample_blocks(low.batch)
            size = out_channels * win.channels * win.taps
            sums = low.table.scratch(f"{node.name} block sums", (count, size), False)
        return ConvBackwardFilterKernel(
            low.table.namer(f"k_{node.name}"),
            comment,
            win,
            out_channels,
            low.table(low.source(node, 0)),
            low.table(low.source(node, 1)),
            padded,
            None if lanes is not None else _wide(node, low),
            low.table(node),
            lanes,
            sums,
            block,
        )

    def formula(self, node: Node, args: list[str]) -> str:
        win: Window = node.attrs["window"]
        return f"Σ_batch {args[1]} ⋆ {args[0]} ({win.formula_text()})"


def _lane_scratch(
    node: Node, low: Any, what: str, rows: int, out_channels: int, batched: bool = False
) -> Tensor | None:
    """Scratch for ``what`` (the weights, or δ) with the output channels last, ``rows`` rows
    of them rounded up to whole LANE_BLOCKs: when the target takes the lane layouts and
    there are enough channels for them (LANE_BLOCK or more), else None."""
    if not low.lanes or out_channels < LANE_BLOCK:
        return None
    width = -(-out_channels // LANE_BLOCK) * LANE_BLOCK
    return low.table.scratch(f"{node.name} {what} lanes", (rows, width), batched)


def _wide(node: Node, low: Any) -> Tensor | None:
    """Scratch for δ (input 0 of a backward node) with rows at the padded width, if needed.

    A flat sweep (stride 1) over 2-D planes reads δ at the input's padded row width.
    """
    win: Window = node.attrs["window"]
    if not win.unit_stride or win.rank == 1 or win.padded[-1] == win.out[-1]:
        return None
    delta = low.resolved(node, 0)
    shape = (delta.shape[0], *win.out[:-1], win.padded[-1])
    return low.table.scratch(f"{node.name} delta rows", shape, True)


def _acc() -> sp.Symbol:
    from graphc.passes.fuse import ACC

    return ACC


CONV = Conv()
CONV_BACKWARD_DATA = ConvBackwardData()
CONV_BACKWARD_FILTER = ConvBackwardFilter()


# --- the DSL ----------------------------------------------------------------------------------
def _conv(
    rank: int,
    x: Node,
    filters: int,
    kernel: Any,
    stride: Any,
    padding: Any,
    activation: Any,
    name: str | None,
    init: Any,
    bias: bool,
    trainable: bool,
) -> Node:
    what = _names(rank)
    x = as_node(x, what)
    if isinstance(filters, bool) or not isinstance(filters, int) or filters <= 0:
        raise GraphError(f"{what}: filters must be a positive integer, got {filters!r}")
    channels, size = spatial_input(x, rank, what)
    kernel = axis_tuple(kernel, rank, f"{what}: kernel")
    stride = axis_tuple(stride, rank, f"{what}: stride")
    before, after = padding_sides(padding, size, kernel, stride, what)
    window = Window(channels, size, kernel, stride, before, after)
    check_fits(window, x, what)
    g = x.graph
    act = get_activation(activation)
    name = name or g.unique_name(what)
    W = g.param(f"{name}.W", (filters, channels, *kernel), init=init, trainable=trainable)
    has_act = act.name != "identity"
    pre = {"layer": name}
    conv_name = f"{name}.conv" if (bias or has_act) else name
    z = make_node(
        g,
        CONV,
        [x, W],
        (filters, *window.out),
        True,
        conv_name,
        what,
        attrs={"window": window, **({} if bias else pre)},
    )
    if bias:
        b = g.param(f"{name}.b", (filters,), init="zeros", trainable=trainable)
        column = reshape(b, (filters,) + (1,) * rank, name=f"{name}.b.view")
        z = apply("add", X[0] + X[1], [z, column], name=f"{name}.z" if has_act else name, attrs=pre)
    return activate(z, act, name=name) if has_act else z


def conv2d(
    x: Node,
    filters: int,
    kernel: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: str | int | tuple[int, int] = "valid",
    activation: Any = None,
    name: str | None = None,
    init: Any = "glorot",
    bias: bool = True,
    trainable: bool = True,
) -> Node:
    """O = f(x ⋆ W + b) over samples (C, H, W) -> (filters, H', W'), channels first.

    Creates ``NAME.W`` (filters, C, kh, kw) and ``NAME.b`` (filters,), PyTorch's layouts.
    ``padding`` is 'valid' (none), 'same' (TensorFlow's rule: ceil(H / stride) outputs, an
    even kernel's extra row and column of zeros after the data) or an integer (or a pair)
    of zero rows and columns on each side.  ``kernel`` and ``stride`` are ints or pairs.
    """
    return _conv(2, x, filters, kernel, stride, padding, activation, name, init, bias, trainable)


def conv1d(
    x: Node,
    filters: int,
    kernel: int | tuple[int],
    stride: int | tuple[int] = 1,
    padding: str | int | tuple[int] = "valid",
    activation: Any = None,
    name: str | None = None,
    init: Any = "glorot",
    bias: bool = True,
    trainable: bool = True,
) -> Node:
    """O = f(x ⋆ W + b) over samples (C, L) -> (filters, L'), channels first.

    Creates ``NAME.W`` (filters, C, k) and ``NAME.b`` (filters,); ``padding`` as in
    ``conv2d`` ('valid', 'same' with the extra zero after the data, or an integer).
    """
    return _conv(1, x, filters, kernel, stride, padding, activation, name, init, bias, trainable)
