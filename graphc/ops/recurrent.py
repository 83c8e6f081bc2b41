"""Recurrent layers (Elman RNN, LSTM, GRU) over (T, features) sequences.

A recurrent layer NAME is three graph nodes per direction:

    NAME.xU = x · U                  one GEMM over all n·T rows of the batch
    NAME.z  = NAME.xU + a            fused into that GEMM's epilogue
    NAME.h  = scan(NAME.z, W, ...)   the time loop: one generated C function

The scan runs for t = 0 … T−1 (T−1 … 0 when reversed) one GEMM hᵗ⁻¹ · W (n × H times
H × G·H, for G gate blocks) and the *cell*: a per-unit sympy program of the step's
pre-activations xₖ = zᵗ (block k), uₖ = (hᵗ⁻¹ · W)ₖ (+ bₖ for the GRU) and the previous
states.  Cells follow PyTorch's gate order, so weights move over by transposing:

    kind  params (F features, H hidden)               from torch.nn.{RNN, LSTM, GRU}
    rnn   U (F, H)   W (H, H)   a (H,)                U = weight_ih_l0ᵀ, W = weight_hh_l0ᵀ,
    lstm  U (F, 4H)  W (H, 4H)  a (4H,)  [i f g o]        a = bias_ih_l0 + bias_hh_l0
    gru   U (F, 3H)  W (H, 3H)  a (3H,)  [r z n]      a = bias_ih_l0, b = bias_hh_l0
          b (3H,)  (added to hᵗ⁻¹ · W: PyTorch's n = tanh(xₙ + r ⊙ (hᵗ⁻¹ Wₙ + bₙ)))

with the suffix ``_reverse`` (NAME.U_reverse ...) for the backward direction of a
bidirectional layer (PyTorch's ``..._l0_reverse``).

Backpropagation through time: the scan's adjoint is one "scan backward" node, δ of NAME.z
for every step, computed by one C function that walks time backwards with one GEMM
δuᵗ⁺¹ · Wᵀ per step and then the cell's δ program.

In C each thread of the team takes its own band of the batch's rows (``gc_gemm_band``)
through every step of a time loop, product and cell: row r of a step reads only row r of
the step before, so the loop has no barrier inside it and no row moves between threads
(one barrier after the loop).  CUDA runs each step's product over the whole batch with
the cell as its epilogue.  That program is derived
by a reverse sweep over the cell's sympy program: local derivatives come from
``sympy.diff`` and, for activations, ``symbolic.derivative_in_output`` (σ' = O(1 − O),
tanh' = 1 − O²), so the backward pass reads the gate outputs the forward pass stored.
Then ∂E/∂W = Σₜ hᵗ⁻¹ᵀ δuᵗ is one GEMM over n·T rows, and ∂E/∂a, ∂E/∂U and δx come from the
adjoints of the add and the matmul.  ``bptt=k`` cuts the recurrence into windows of k
steps (t in [0, k), [k, 2k) … in processing order): δ flows back at most k − 1 steps.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import sympy as sp
from sympy.printing.precedence import precedence
from sympy.printing.str import StrPrinter

from graphc.errors import GraphError, ShapeError
from graphc.graph import Init, Node
from graphc.kernels import Dim, Kernel, Tensor
from graphc.ops.base import Op, as_node, make_node
from graphc.ops.combine import PAD, Block, CopyKernel, concat, row_index, slice_axis
from graphc.ops.elementwise import Activation, apply, get_activation
from graphc.ops.embedding import lookup
from graphc.ops.linalg import make_matmul
from graphc.ops.loss import ONE_HOT
from graphc.ops.shape import reshape
from graphc.symbolic import O, X, derivative_in_output

if TYPE_CHECKING:
    from graphc.autodiff import Adjoints


# --- cells: per-unit sympy programs -----------------------------------------------------------
def _sym(name: str) -> sp.Symbol:
    return sp.Symbol(name, real=True)


def x_of(gate: str) -> sp.Symbol:
    """The input-side pre-activation of a gate block: (x · U + a)ₖ at this step."""
    return _sym(f"x_{gate}")


def u_of(gate: str) -> sp.Symbol:
    """The recurrent side of a gate block: (hᵗ⁻¹ · W)ₖ (+ bₖ) at this step."""
    return _sym(f"u_{gate}")


def prev_of(state: str) -> sp.Symbol:
    """A state at the previous step (the initial state, or zero, before the first)."""
    return _sym(f"{state}_prev")


def pre_of(name: str) -> sp.Symbol:
    """The argument of a value's activation (stored when f' needs it)."""
    return _sym(f"{name}_pre")


def delta_of(name: str) -> sp.Symbol:
    """δ of a value of the cell."""
    return _sym(f"d_{name}")


def incoming(state: str) -> sp.Symbol:
    """δ arriving at a state from outside this step: the loss and the later steps."""
    return _sym(f"in_{state}")


@dataclass(frozen=True)
class Step:
    """One value of a cell: ``name = activation(expr)``, or ``name = expr``."""

    name: str
    expr: sp.Expr
    activation: Activation | None = None


@dataclass(frozen=True)
class Cell:
    """A recurrent cell: gate blocks of U, W and a (in order), states (h first), its program."""

    kind: str
    gates: tuple[str, ...]
    states: tuple[str, ...]
    steps: tuple[Step, ...]
    hidden_bias: bool = False


def elman_cell(activation: Activation) -> Cell:
    """hᵗ = f(U xᵗ + W hᵗ⁻¹ + a)."""
    return Cell("rnn", ("h",), ("h",), (Step("h", x_of("h") + u_of("h"), activation),))


def lstm_cell() -> Cell:
    """PyTorch's LSTM: gates i, f, g, o; c = f ⊙ cᵗ⁻¹ + i ⊙ g; h = o ⊙ tanh(c)."""
    sigmoid, tanh = get_activation("sigmoid"), get_activation("tanh")
    i, f, g, o, c = (_sym(s) for s in "ifgoc")
    steps = (
        Step("i", x_of("i") + u_of("i"), sigmoid),
        Step("f", x_of("f") + u_of("f"), sigmoid),
        Step("g", x_of("g") + u_of("g"), tanh),
        Step("o", x_of("o") + u_of("o"), sigmoid),
        Step("c", f * prev_of("c") + i * g),
        Step("h", o * sp.tanh(c)),
    )
    return Cell("lstm", ("i", "f", "g", "o"), ("h", "c"), steps)


def gru_cell() -> Cell:
    """PyTorch's GRU: gates r, z, n = tanh(xₙ + r ⊙ uₙ); h = (1 − z) ⊙ n + z ⊙ hᵗ⁻¹."""
    sigmoid, tanh = get_activation("sigmoid"), get_activation("tanh")
    r, z, n = (_sym(s) for s in "rzn")
    steps = (
        Step("r", x_of("r") + u_of("r"), sigmoid),
        Step("z", x_of("z") + u_of("z"), sigmoid),
        Step("n", x_of("n") + r * u_of("n"), tanh),
        Step("h", (1 - z) * n + z * prev_of("h")),
    )
    return Cell("gru", ("r", "z", "n"), ("h",), steps, hidden_bias=True)


@dataclass(frozen=True)
class Derivation:
    """What the δ pass derived for a cell.

    ``forward`` gives every value (and stored pre-activation) in the step's inputs xₖ, uₖ and
    previous states; ``saved`` lists what the forward pass stores per step for the backward
    pass besides the states; ``d_x``/``d_u`` are δ of each gate block's two sides and
    ``d_prev`` the direct δ into each previous state, all in saved values, states, previous
    states and the ``incoming`` δ's.  ``partial`` is the same with the δ of each state kept
    as a symbol (for explain), ``state_deltas`` defines those.
    """

    forward: dict
    saved: tuple[sp.Symbol, ...]
    d_x: tuple[sp.Expr, ...]
    d_u: tuple[sp.Expr, ...]
    d_prev: tuple[tuple[str, sp.Expr], ...]
    partial_x: tuple[sp.Expr, ...]
    partial_u: tuple[sp.Expr, ...]
    partial_prev: tuple[tuple[str, sp.Expr], ...]
    state_deltas: tuple[tuple[str, sp.Expr], ...]


@functools.cache
def _activation_derivative(expr: sp.Expr) -> tuple[sp.Expr, bool]:
    return derivative_in_output(expr, X[0])


@functools.cache
def derive(cell: Cell) -> Derivation:
    """Forward values and the reverse sweep of ``cell`` (sympy, cached per cell)."""
    forward: dict[sp.Symbol, sp.Expr] = {}
    for s in cell.steps:
        pre = s.expr.xreplace(forward)
        if s.activation is not None:
            forward[pre_of(s.name)] = pre
            forward[_sym(s.name)] = s.activation.expr.xreplace({X[0]: pre})
        else:
            forward[_sym(s.name)] = pre
    # reverse sweep: δ of each value is the sum of what its consumers send back
    sent: dict[sp.Symbol, list[sp.Expr]] = {_sym(s): [incoming(s)] for s in cell.states}
    sweep: dict[sp.Symbol, sp.Expr] = {}
    for s in reversed(cell.steps):
        value = _sym(s.name)
        terms = sent.pop(value, None)
        if not terms:
            continue
        sweep[delta_of(s.name)] = sp.Add(*terms)
        through = delta_of(s.name)
        if s.activation is not None:
            d, uses_output = _activation_derivative(s.activation.expr)
            local = d.xreplace({O: value}) if uses_output else d.xreplace({X[0]: pre_of(s.name)})
            sweep[delta_of(f"{s.name}_pre")] = through * local
            through = delta_of(f"{s.name}_pre")
        for symbol in sorted(s.expr.free_symbols, key=str):
            sent.setdefault(symbol, []).append(through * sp.diff(s.expr, symbol))

    def total(symbol: sp.Symbol) -> sp.Expr:
        return sp.Add(*sent.get(symbol, []))

    kept = {delta_of(s) for s in cell.states}
    full: dict[sp.Symbol, sp.Expr] = {}
    partial: dict[sp.Symbol, sp.Expr] = {}
    for symbol, expr in sweep.items():
        full[symbol] = expr.xreplace(full)
        partial[symbol] = symbol if symbol in kept else expr.xreplace(partial)
    d_x = tuple(total(x_of(k)).xreplace(full) for k in cell.gates)
    d_u = tuple(total(u_of(k)).xreplace(full) for k in cell.gates)
    d_prev = tuple((s, total(prev_of(s)).xreplace(full)) for s in cell.states)
    # what the backward pass reads besides states, previous states and incoming δ's
    known = {_sym(s) for s in cell.states} | {prev_of(s) for s in cell.states}
    known |= {incoming(s) for s in cell.states}
    needed: set[sp.Symbol] = set()
    for expr in d_x + d_u + tuple(e for _, e in d_prev):
        needed |= expr.free_symbols - known
    order = [_sym(s.name) for s in cell.steps if s.activation is not None]
    order += [pre_of(s.name) for s in cell.steps] + [x_of(k) for k in cell.gates]
    order += [u_of(k) for k in cell.gates]
    unknown = needed - set(order)
    if unknown:
        raise GraphError(f"{cell.kind} cell: the δ pass cannot read {sorted(map(str, unknown))}")
    saved = tuple(v for v in order if v in needed)
    return Derivation(
        forward,
        saved,
        d_x,
        d_u,
        d_prev,
        tuple(total(x_of(k)).xreplace(partial) for k in cell.gates),
        tuple(total(u_of(k)).xreplace(partial) for k in cell.gates),
        tuple((s, total(prev_of(s)).xreplace(partial)) for s in cell.states),
        tuple((s, sweep[delta_of(s)].xreplace(partial)) for s in cell.states),
    )


# --- explain: the derived recurrences as text --------------------------------------------------
class _Text(StrPrinter):
    """sympy's str printer with piecewise values written as 'a if cond else b', and the
    factors holding δ's last in a product (f'(·) ⊙ δ reads like the textbook)."""

    def __init__(self, late: set[str]) -> None:
        super().__init__()
        self.late = late

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        *pieces, (last, _) = expr.args
        text = self._print(last)
        for value, cond in reversed(pieces):
            text = f"{self._print(value)} if {self._print(cond)} else {text}"
        return f"({text})"

    def _print_Mul(self, expr: sp.Mul) -> str:
        coefficient, factors = expr.as_coeff_mul()
        if coefficient.is_negative or not any(self._is_late(f) for f in factors):
            return super()._print_Mul(expr)
        ordered = [f for f in factors if not self._is_late(f)]
        ordered += [f for f in factors if self._is_late(f)]
        parts = [self.parenthesize(f, precedence(expr)) for f in ordered]
        if coefficient != 1:
            parts.insert(0, self._print(coefficient))
        return "*".join(parts)

    def _is_late(self, factor: sp.Expr) -> bool:
        return any(str(s) in self.late for s in factor.free_symbols)


def _pretty(expr: sp.Expr, names: dict[sp.Symbol, str]) -> str:
    late = {t for s, t in names.items() if t.startswith(("δ", "("))}
    text = _Text(late).doprint(expr.xreplace({s: sp.Symbol(t) for s, t in names.items()}))
    text = re.sub(r"\*\*2\b", "²", text)
    text = re.sub(r"\*\*3\b", "³", text)
    return text.replace("*", " ⊙ ").replace(" - ", " − ")


def _names(cell: Cell, now: str, prev: str) -> dict[sp.Symbol, str]:
    """Display names of a cell's symbols at time ``now`` (previous states at ``prev``)."""
    names: dict[sp.Symbol, str] = {}
    for s in cell.steps:
        names[_sym(s.name)] = f"{s.name}{now}"
        names[pre_of(s.name)] = f"{s.name}_pre{now}"
        names[delta_of(s.name)] = f"δ{s.name}{now}"
    for k in cell.gates:
        names[u_of(k)] = f"u_{k}{now}"
        names[x_of(k)] = f"x_{k}{now}"
    for s in cell.states:
        names[prev_of(s)] = f"{s}{prev}"
    return names


def _recurrence_text(node: Node, args: list[str], expressions: tuple[sp.Expr, ...]) -> str:
    """'expr' (one gate) or '[e_i, e_f, ...] where δcᵗ = …' for a scan backward node."""
    cell: Cell = node.attrs["cell"]
    derived = derive(cell)
    back = "ᵗ⁺¹" if not node.attrs["reverse"] else "ᵗ⁻¹"
    before = "ᵗ⁻¹" if not node.attrs["reverse"] else "ᵗ⁺¹"
    names = _names(cell, "ᵗ", before)
    later = _names(cell, back, "ᵗ")
    ext, w = args[0], args[1]
    at = node.attrs["at"]
    received = f"{ext} at t = {at}" if at is not None else f"{ext}ᵗ"
    layer = node.attrs["layer"]
    recurrent = f"δ[{layer}]" if derived.d_u == derived.d_x else f"δ[{layer}.u]"
    terms = [received, f"{recurrent}{back} · {w}ᵀ"]
    if node.attrs["bptt"]:
        terms[1] += f" (cut every {node.attrs['bptt']} steps)"
    for state, expr in derived.partial_prev:
        if expr == 0:
            continue
        if state == "h":
            terms.append(_pretty(expr, later))
        else:
            names[incoming(state)] = _pretty(expr, later)
    # δh only passes on what arrives: written in place where it is read once
    others = [(s, e) for s, e in derived.state_deltas if s != "h"]
    reads = sum(1 for e in list(expressions) + [e for _, e in others] if e.has(delta_of("h")))
    where = []
    if reads <= 1:
        names[delta_of("h")] = "(" + " + ".join(terms) + ")"
    else:
        where.append("δhᵗ = " + " + ".join(terms))
    for state, expr in others:
        where.append(f"δ{state}ᵗ = {_pretty(expr, names)}")
    texts = [_pretty(e, names) for e in expressions]
    body = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return body + (" where " + "; ".join(where) if where else "")


# --- kernel records ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    """Where the cell reads or writes one value of unit j, row r, at the step's time.

    kind: 'seq'    tensor[r, t, block·H + j] (``width`` values per row and time step)
          'row'    tensor[r, block·H + j] (a per-step buffer, ``width`` per row)
          'param'  tensor[block·H + j]
          'prev'   ``state`` at the previous step (the initial state or zeros at the first)
          'carry'  tensor[r, j], read as 0 when δ did not flow from the previous step
          'at'     tensor[r, j] at time ``at`` only, 0 at other times
    """

    kind: str
    tensor: Tensor | None = None
    width: int = 0
    block: int = 0
    state: str = ""
    at: int = 0


@dataclass(frozen=True)
class CellCode:
    """The cell as the kernel runs it: loads (a symbol = the sum of refs), then stores."""

    loads: tuple[tuple[sp.Symbol, tuple[Ref, ...]], ...]
    stores: tuple[tuple[Ref, sp.Expr, str], ...]

    def tensors(self) -> tuple[list[Tensor], list[Tensor]]:
        """(tensors read, tensors written)."""
        read = [r.tensor for _, refs in self.loads for r in refs if r.tensor is not None]
        written = [ref.tensor for ref, _, _ in self.stores if ref.tensor is not None]
        return read, written


@dataclass(frozen=True)
class Prev:
    """A state the kernel reads at the previous step: its sequence, and its initial value."""

    state: str
    sequence: Tensor
    initial: Tensor | None


@dataclass(frozen=True)
class ScanKernel(Kernel):
    """Forward time loop: per step u = hᵗ⁻¹ · W (one GEMM), then the cell on every unit.

    With ``u`` None (one gate block) u lands in h itself and the cell turns it into h (on
    CUDA as the GEMM's epilogue).
    """

    steps: int
    hidden: int
    width: int
    reverse: bool
    w: Tensor
    h: Tensor
    u: Tensor | None
    prev: tuple[Prev, ...]
    cell: CellCode
    template: str = "rnn_forward"

    def flops(self, rows: int) -> int:
        # per step: h · W (rows x H times H x width), then the cell on every unit
        return self.steps * rows * (2 * self.hidden * self.width + 10 * self.width)

    def reads(self) -> list[Tensor]:
        initial = [p.initial for p in self.prev if p.initial is not None]
        return [self.w] + initial + self.cell.tensors()[0]

    def writes(self) -> list[Tensor]:
        return [self.h] + ([self.u] if self.u else []) + self.cell.tensors()[1]

    def c_context(self, contexts: Any) -> dict[str, Any]:
        """Template context (called by codegen.c.KernelContexts)."""
        from graphc.codegen.c import owner, signature

        T, H = self.steps, self.hidden
        fused = self.h if self.u is None else None
        ctx = _cell_context(self, self.cell, self.prev, contexts, ("time",), fused)
        params, args = signature(self, contexts.target.real, True)
        time = f"{T - 1} - gc_step" if self.reverse else "gc_step"
        if self.u is None:
            u, ldu = f"{owner(self.h)} + gc_s.time * {H}", T * H
        else:
            u, ldu = owner(self.u), self.width
        h0 = next(p.initial for p in self.prev if p.state == "h")
        product, tail = _step_product(contexts)
        gemm = (
            f"{product}(0, 0, n, {self.width}, gc_step > 0 ? {H} : {H if h0 else 0}, "
            f"gc_s.h_prev, gc_s.h_ld, {owner(self.w)}, {self.width}, 0, {u}, {ldu}{tail})"
        )
        return {
            **ctx,
            "params": params,
            "args": args,
            "steps": T,
            "hidden": H,
            "per_step": [("time", time)] + _prev_assignments(self, "gc_step > 0", ctx),
            "gemm": gemm,
            "band": product == "gc_gemm_rows",
            "fused": self.u is None,
        }

    def cuda_context(self, contexts: Any) -> dict[str, Any]:
        """Template context of the CUDA time loop (templates/cuda/rnn_forward.cu.j2): the C
        one, with each step's h · W a device GEMM on the model's stream (the cell its
        epilogue, or a kernel of its own after it)."""
        from graphc.codegen.c import owner

        ctx = self.c_context(contexts)
        T, H, W = self.steps, self.hidden, self.width
        if self.u is None:
            u, ldu, epilogue = f"{owner(self.h)} + gc_s.time * {H}", T * H, "gc_cell"
        else:
            u, ldu, epilogue = owner(self.u), W, "gc_no_epilogue()"
        h0 = next(p.initial for p in self.prev if p.state == "h")
        ctx["gemm"] = (
            f"gc_cuda_gemm(gc_queue, 0, 0, n, {W}, gc_step > 0 ? {H} : {H if h0 else 0}, "
            f"gc_s.h_prev, gc_s.h_ld, {owner(self.w)}, {W}, 0, {u}, {ldu}, {epilogue})"
        )
        return ctx


@dataclass(frozen=True)
class ScanGradKernel(Kernel):
    """Backward time loop: per step δhᵗ's recurrent part = δuᵗ⁺¹ · Wᵀ (one GEMM into ``dh``,
    added to the direct part the cell left there), then the cell's δ program.

    ``initial``: after the loop, ``dh`` becomes δ of the initial hidden state.
    """

    steps: int
    hidden: int
    width: int
    reverse: bool
    bptt: int | None
    w: Tensor
    d_u: Tensor
    dh: Tensor
    direct: bool
    initial: bool
    prev: tuple[Prev, ...]
    cell: CellCode
    template: str = "rnn_backward"

    def flops(self, rows: int) -> int:
        # per step: δu · Wᵀ (rows x width times width x H), then the cell's δ program
        return self.steps * rows * (2 * self.hidden * self.width + 20 * self.width)

    def reads(self) -> list[Tensor]:
        initial = [p.initial for p in self.prev if p.initial is not None]
        sequences = [p.sequence for p in self.prev]
        return [self.w, self.d_u, self.dh] + initial + sequences + self.cell.tensors()[0]

    def writes(self) -> list[Tensor]:
        return [self.dh] + self.cell.tensors()[1]

    def c_context(self, contexts: Any) -> dict[str, Any]:
        """Template context (called by codegen.c.KernelContexts)."""
        from graphc.codegen.c import owner, signature

        T, H, G = self.steps, self.hidden, self.width
        ctx = _cell_context(self, self.cell, self.prev, contexts, ("time", "live"), self.dh)
        params, args = signature(self, contexts.target.real, True)
        time = "gc_step" if self.reverse else f"{T - 1} - gc_step"
        live = "gc_step > 0"
        if self.bptt:
            live += f" && ({T} - gc_step) % {self.bptt} != 0"
        later = "gc_s.time - 1" if self.reverse else "gc_s.time + 1"
        accumulate = "gc_s.live" if self.direct else "0"
        d_u, w, dh = owner(self.d_u), owner(self.w), owner(self.dh)
        product, tail = _step_product(contexts)
        gemm = (
            f"{product}(0, 1, n, {H}, gc_s.live ? {G} : 0, {d_u} + (gc_s.live ? {later} : "
            f"gc_s.time) * {G}, {T * G}, {w}, {G}, {accumulate}, {dh}, {H}{tail})"
        )
        final = None
        if self.initial:
            first = T - 1 if self.reverse else 0
            final = (
                f"{product}(0, 1, n, {H}, {G}, {d_u} + {first * G}, {T * G}, {w}, {G}, "
                f"{int(self.direct)}, {dh}, {H}{tail})"
            )
        per_step = [("time", time), ("live", live)]
        per_step += _prev_assignments(self, f"gc_step < {T - 1}", ctx)
        return {
            **ctx,
            "params": params,
            "args": args,
            "steps": T,
            "per_step": per_step,
            "gemm": gemm,
            "band": product == "gc_gemm_rows",
            "final": final,
        }

    def cuda_context(self, contexts: Any) -> dict[str, Any]:
        """Template context of the CUDA backward time loop (rnn_backward.cu.j2): the C one,
        with each step's δuᵗ⁺¹ · Wᵀ a device GEMM whose epilogue is the cell's δ program."""
        from graphc.codegen.c import owner

        ctx = self.c_context(contexts)
        T, H, G = self.steps, self.hidden, self.width
        later = "gc_s.time - 1" if self.reverse else "gc_s.time + 1"
        accumulate = "gc_s.live" if self.direct else "0"
        d_u, w, dh = owner(self.d_u), owner(self.w), owner(self.dh)
        ctx["gemm"] = (
            f"gc_cuda_gemm(gc_queue, 0, 1, n, {H}, gc_s.live ? {G} : 0, {d_u} + (gc_s.live ? "
            f"{later} : gc_s.time) * {G}, {T * G}, {w}, {G}, {accumulate}, {dh}, {H}, gc_cell)"
        )
        ctx["final"] = None
        if self.initial:
            first = T - 1 if self.reverse else 0
            ctx["final"] = (
                f"gc_cuda_gemm(gc_queue, 0, 1, n, {H}, {G}, {d_u} + {first * G}, {T * G}, {w}, "
                f"{G}, {int(self.direct)}, {dh}, {H}, gc_no_epilogue())"
            )
        ctx["hidden"] = H
        return ctx


def _step_product(contexts: Any) -> tuple[str, str]:
    """The C function of a time step's product, and the end of its argument list: with a
    team of threads each takes its own band of the batch's rows (``gc_gemm_rows``, no
    epilogue); a target without threads (the embedded export) runs ``gc_gemm`` on them all."""
    if contexts.target.parallel_for:
        return "gc_gemm_rows", ""
    return "gc_gemm", ", NULL, NULL"


def _prev_assignments(kernel: Any, condition: str, ctx: dict) -> list[tuple[str, str]]:
    """Per-step pointers to each previous state: its row in the sequence, else the initial."""
    from graphc.codegen.c import owner

    T, H = kernel.steps, kernel.hidden
    before = "gc_s.time + 1" if kernel.reverse else "gc_s.time - 1"
    out = []
    for p in kernel.prev:
        if p.initial is not None:
            first, first_ld = owner(p.initial), (H if p.initial.batched else 0)
        else:
            first, first_ld = ctx["zero"], 0
        later = f"{owner(p.sequence)} + ({before}) * {H}"
        out.append((f"{p.state}_prev", f"{condition} ? {later} : {first}"))
        out.append((f"{p.state}_ld", f"{condition} ? {T * H} : {first_ld}"))
    return out


def _cell_context(
    kernel: Any,
    cell: CellCode,
    prev: tuple[Prev, ...],
    contexts: Any,
    scalars: tuple[str, ...],
    gemm_output: Tensor | None = None,
) -> dict[str, Any]:
    """Struct fields, cell-function locals and the printed loads/temps/stores of a cell.

    ``gemm_output`` is the tensor the step's GEMM writes before the cell (its epilogue) reads
    it back: that local is neither const nor restrict, since another pointer (the GEMM's C)
    has just written it.  The CUDA cells declare no restrict pointers at all: with restrict
    pointers in scope nvcc proved C's array read-only and read it back through the
    non-coherent cache (ld.global.nc), which returned values from before the GEMM's stores on
    a GPU (never in the emulation); tests/test_cuda.py checks the PTX for it."""
    from graphc.codegen.c import c_type, owner
    from graphc.codegen.printer import CPrinter, cse_block, exp_form

    real = contexts.target.real
    # the full runtime (not the embedded export's) has the vectorizable gc_exp
    runtime = contexts.target.name == "c"
    printer = CPrinter(contexts.printer.dtype, inline_exp=True) if runtime else contexts.printer
    T, H = kernel.steps, kernel.hidden
    zero_text = printer.doprint(sp.Float(0.0))
    zero = f"{kernel.name}_zero"

    def text(ref: Ref) -> str:
        if ref.kind == "prev":
            return f"gc_prev_{ref.state}[r * gc_{ref.state}_ld + j]"
        name = owner(ref.tensor)
        offset = ref.block * H
        if ref.kind == "seq":
            index = f"r * {T * ref.width} + gc_time * {ref.width} + {row_index('', 0, offset)}j"
        elif ref.kind == "param":
            index = f"{row_index('', 0, offset)}j"
        else:
            index = f"r * {ref.width} + {row_index('', 0, offset)}j"
        value = f"{name}[{index}]"
        if ref.kind == "carry":
            return f"(gc_live ? {value} : {zero_text})"
        if ref.kind == "at":
            return f"(gc_time == {ref.at} ? {value} : {zero_text})"
        return value

    loads = [(f"gc_{sym.name}", " + ".join(text(r) for r in refs)) for sym, refs in cell.loads]
    local = {sym: sp.Symbol(name, real=True) for (sym, _), (name, _) in zip(cell.loads, loads)}
    exprs = [exp_form(e.xreplace(local)) for _, e, _ in cell.stores]
    temps, results = cse_block(exprs, printer, "gc_t")
    stores = [(text(ref), value, label) for (ref, _, label), value in zip(cell.stores, results)]
    refs = [r for _, rs in cell.loads for r in rs] + [ref for ref, _, _ in cell.stores]
    written = {owner(ref.tensor) for ref, _, _ in cell.stores}
    restrict = "" if contexts.target.name == "cuda" else "restrict "
    shared = owner(gemm_output) if gemm_output is not None else None
    if shared is not None:
        written.add(shared)
    arrays: dict[str, str] = {}
    for r in refs:
        if r.tensor is not None:
            const = "" if owner(r.tensor) in written else "const "
            arrays[owner(r.tensor)] = f"{const}{c_type(r.tensor, real)} *"
    kinds = {r.kind for r in refs}
    step_fields = ["long time"] + (["int live"] if "live" in scalars else [])
    for p in prev:
        step_fields += [f"const {real} *{p.state}_prev", f"int {p.state}_ld"]
    cell_scalars = []
    if kinds & {"seq", "at"}:
        cell_scalars.append(("long", "gc_time", "time"))
    if "carry" in kinds:
        cell_scalars.append(("int", "gc_live", "live"))
    pointers = []
    for state in sorted({r.state for r in refs if r.kind == "prev"}):
        pointers.append((f"const {real} *{restrict}", f"gc_prev_{state}", f"{state}_prev"))
        cell_scalars.append(("int", f"gc_{state}_ld", f"{state}_ld"))
    fields = sorted(arrays.items())
    return {
        "fields": [(ctype, name) for name, ctype in fields],
        "locals": [
            (ctype if name == shared else f"{ctype}{restrict}", name) for name, ctype in fields
        ],
        "step_fields": step_fields,
        "init": ", ".join(f".{name} = {name}" for name, _ in fields),
        "pointers": pointers,
        "cell_scalars": cell_scalars,
        "temps": [(n, t) for n, t in loads] + temps,
        "stores": stores,
        "zero": zero,
        "needs_zero": any(p.initial is None for p in prev),
        # units are independent: say so, as the pointers come from a struct (not restrict
        # parameters) and the compiler would not vectorize the loop by itself
        "simd": "#pragma omp simd" if runtime else "",
        "hidden": H,
    }


# --- ops --------------------------------------------------------------------------------------
def _initial_index(node: Node) -> int:
    return 3 if node.attrs["cell"].hidden_bias else 2


def _initial(node: Node, low: Any, state: str) -> Tensor | None:
    """The tensor of the initial value of ``state`` given to scan ``node``, if any."""
    names = node.attrs["initial"]
    if state not in names:
        return None
    return low.table(low.source(node, _initial_index(node) + names.index(state)))


def _sequences(node: Node, low: Any) -> dict[str, Tensor]:
    """Every state of scan ``node`` at every step: h is the node, the others are buffers."""
    T, H = node.shape
    out = {"h": low.table(node)}
    for state in node.attrs["cell"].states[1:]:
        out[state] = low.table.scratch(f"{node.name}.{state}", (T, H), True)
    return out


def _saved(node: Node, low: Any) -> Tensor | None:
    saved = derive(node.attrs["cell"]).saved
    if not saved:
        return None
    T, H = node.shape
    return low.table.scratch(f"{node.name}.saved", (T, len(saved) * H), True)


class Scan(Op):
    """All steps of a recurrent layer: inputs (z, W[, b][, initial states]), value h (T, H)."""

    name = "scan"

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        cell: Cell = node.attrs["cell"]
        z, w = node.inputs[0], node.inputs[1]
        first = _initial_index(node)
        initial = node.inputs[first:]
        # δ reaching a single step (the layer's last output) is read there, not padded
        ext, at = delta, None
        if delta.op is PAD and delta.attrs["axis"] == 0 and delta.inputs[0].shape[0] == 1:
            ext, at = delta.inputs[0], delta.attrs["start"]
        layer = z.attrs.get("layer", node.name)
        attrs = {
            "cell": cell,
            "reverse": node.attrs["reverse"],
            "bptt": node.attrs["bptt"],
            "initial": node.attrs["initial"],
            "at": at,
            "layer": layer,
            "index": "ᵗ",
        }
        inputs = [ext, w, node, *initial]
        d_z = ad.node(SCAN_GRAD, inputs, z.shape, True, "delta_scan", wrt=z, attrs=attrs)
        result = {0: d_z}
        derived = derive(cell)
        d_u = d_z
        if derived.d_u != derived.d_x:
            output = {"output": "d_u", "layer": layer, "cell": cell, "index": "ᵗ"}
            d_u = ad.node(COMPANION, [d_z], z.shape, True, f"delta_{layer}.u", attrs=output)
        if ad.needs(w):
            hidden = [x for x, s in zip(initial, node.attrs["initial"]) if s == "h"]
            shift_attrs = {"reverse": node.attrs["reverse"]}
            label = f"{layer}.h_prev"
            prev = ad.node(SHIFT, [node, *hidden], node.shape, True, label, None, shift_attrs)
            result[1] = ad.matmul(prev, d_u, trans_a=True, wrt=w)
        if cell.hidden_bias and ad.needs(node.inputs[2]):
            result[2] = ad.reduce_to(d_u, node.inputs[2])
        for k, (x, state) in enumerate(zip(initial, node.attrs["initial"])):
            if not ad.needs(x):
                continue
            output = {"output": f"initial_{state}", "layer": layer}
            wrt = x if x.batched else None
            d_init = ad.node(COMPANION, [d_z], x.shape, True, f"d_{x.name}", wrt, output)
            result[first + k] = d_init if x.batched else ad.reduce_to(d_init, x)
        return result

    def lower(self, node: Node, low: Any) -> ScanKernel:
        cell: Cell = node.attrs["cell"]
        T, H = node.shape
        G = len(cell.gates)
        derived = derive(cell)
        z = low.table(low.source(node, 0))
        bias = low.table(low.source(node, 2)) if cell.hidden_bias else None
        sequences = _sequences(node, low)
        saved = _saved(node, low) if low.training else None
        u = low.table.scratch(f"{node.name}.u", (G * H,), True) if G > 1 else None
        targets = [(ref_seq(sequences[s], H, 0), _sym(s), s) for s in cell.states]
        if saved is not None:
            width = len(derived.saved) * H
            targets = [
                (ref_seq(saved, width, k), v, f"{node.name} saves {v}")
                for k, v in enumerate(derived.saved)
            ] + targets
        stores = tuple((ref, derived.forward.get(v, v), label) for ref, v, label in targets)
        sources: dict[sp.Symbol, tuple[Ref, ...]] = {}
        for k, gate in enumerate(cell.gates):
            sources[x_of(gate)] = (ref_seq(z, G * H, k),)
            recurrent = ref_seq(sequences["h"], H, 0) if u is None else Ref("row", u, G * H, k)
            extra = (Ref("param", bias, block=k),) if bias is not None else ()
            sources[u_of(gate)] = (recurrent,) + extra
        for s in cell.states:
            sources[prev_of(s)] = (Ref("prev", state=s),)
        code = _code(sources, stores)
        used = {r.state for _, refs in code.loads for r in refs if r.kind == "prev"} | {"h"}
        prev = tuple(
            Prev(s, sequences[s], _initial(node, low, s)) for s in cell.states if s in used
        )
        return ScanKernel(
            low.table.namer(f"k_{node.name}"),
            _forward_comment(node, low),
            T,
            H,
            G * H,
            node.attrs["reverse"],
            low.table(low.source(node, 1)),
            sequences["h"],
            u,
            prev,
            code,
        )

    def formula(self, node: Node, args: list[str]) -> str:
        return _forward_text(node, args)


def ref_seq(tensor: Tensor, width: int, block: int) -> Ref:
    """Block ``block`` of a (T, width) sequence at the step's time."""
    return Ref("seq", tensor, width, block)


def _code(sources: dict[sp.Symbol, tuple[Ref, ...]], stores: tuple) -> CellCode:
    """Loads of exactly the symbols the stores read (in a fixed order), and the stores."""
    used: set[sp.Symbol] = set()
    for _, expr, _ in stores:
        used |= expr.free_symbols
    loads = tuple((s, refs) for s, refs in sources.items() if s in used)
    missing = used - set(sources)
    if missing:
        raise GraphError(f"internal error: the cell reads {sorted(map(str, missing))}")
    return CellCode(loads, tuple(stores))


def _forward_text(node: Node, args: list[str]) -> str:
    cell: Cell = node.attrs["cell"]
    before = "ᵗ⁺¹" if node.attrs["reverse"] else "ᵗ⁻¹"
    names = _names(cell, "ᵗ", before)
    for k, gate in enumerate(cell.gates):
        block = f"[{k}]" if len(cell.gates) > 1 else ""
        names[x_of(gate)] = f"{args[0]}{block}ᵗ"
        bias = f" + {args[2]}{block}" if cell.hidden_bias else ""
        names[u_of(gate)] = f"(h{before} · {args[1]}{block}{bias})"
    parts = []
    for s in cell.steps:
        if s.activation is not None:
            value = f"{s.activation.name}({_pretty(s.expr, names)})"
        else:
            value = _pretty(s.expr, names)
        parts.append(f"{s.name}ᵗ = {value}")
    given = ", ".join(
        f"{s}0 = {a}" for s, a in zip(node.attrs["initial"], args[_initial_index(node) :])
    )
    order = "t = T−1 … 0" if node.attrs["reverse"] else "t = 0 … T−1"
    return "; ".join(parts) + f" for {order}" + (f" ({given})" if given else "")


def _forward_comment(node: Node, low: Any) -> str:
    names = [low.resolved(node, i).name for i in range(len(node.inputs))]
    text = _forward_text(node, names)
    return f"{node.name}: {_ascii(text)}"


_ASCII = {"ᵗ⁻¹": "[t-1]", "ᵗ⁺¹": "[t+1]", "ᵗ": "[t]", "·": ".", "⊙": "*", "−": "-", "…": "..."}
_ASCII.update({"ᵀ": "^T", "²": "^2", "³": "^3", "δ": "d", "∂": "d", "Σ": "sum "})


def _ascii(text: str) -> str:
    """The formula for a C comment."""
    for old, new in _ASCII.items():
        text = text.replace(old, new)
    return text.encode("ascii", "replace").decode()


SCAN = Scan()


class ScanGrad(Op):
    """δ of a scan's z for every step (BPTT); inputs (δ of h, W, the scan[, initial states])."""

    name = "scan_backward"

    def lower(self, node: Node, low: Any) -> ScanGradKernel:
        cell: Cell = node.attrs["cell"]
        scan = low.source(node, 2)
        T, H = scan.shape
        G = len(cell.gates)
        derived = derive(cell)
        d_z = low.table(node)
        outputs = {c.attrs["output"]: low.table(c) for c in low.companions(node)}
        d_u = outputs.get("d_u", d_z)
        dh = outputs.get("initial_h") or low.table.scratch(f"{node.name}.dh", (H,), True)
        dc = None
        if len(cell.states) > 1:
            dc = outputs.get("initial_c") or low.table.scratch(f"{node.name}.dc", (H,), True)
        sequences = _sequences(scan, low)
        saved = _saved(scan, low)
        ext = low.table(low.source(node, 0))
        at = node.attrs["at"]
        received = Ref("at", ext, H, at=at) if at is not None else ref_seq(ext, H, 0)
        sources: dict[sp.Symbol, tuple[Ref, ...]] = {
            incoming("h"): (received, Ref("row", dh, H, 0))
        }
        for s in cell.states[1:]:
            sources[incoming(s)] = (Ref("carry", dc, H, 0),)
        for k, v in enumerate(derived.saved):
            sources[v] = (ref_seq(saved, len(derived.saved) * H, k),)
        for s in cell.states:
            sources[_sym(s)] = (ref_seq(sequences[s], H, 0),)
            sources[prev_of(s)] = (Ref("prev", state=s),)
        stores = [
            (ref_seq(d_z, G * H, k), e, f"{node.name}[{gate}]")
            for k, (gate, e) in enumerate(zip(cell.gates, derived.d_x))
        ]
        if d_u is not d_z:
            stores += [
                (ref_seq(d_u, G * H, k), e, f"{d_u.label}[{gate}]")
                for k, (gate, e) in enumerate(zip(cell.gates, derived.d_u))
            ]
        direct = False
        for s, e in derived.d_prev:
            if e == 0:
                continue
            buffer = dh if s == "h" else dc
            stores.append((Ref("row", buffer, H, 0), e, f"delta carried to {s} at the step before"))
            direct = direct or s == "h"
        code = _code(sources, tuple(stores))
        used = {r.state for _, refs in code.loads for r in refs if r.kind == "prev"}
        prev = tuple(
            Prev(s, sequences[s], _initial(scan, low, s)) for s in cell.states if s in used
        )
        names = [low.resolved(node, i).name for i in range(len(node.inputs))]
        return ScanGradKernel(
            low.table.namer(f"k_{node.name}"),
            f"{node.name} = {_ascii(self.formula(node, names))}",
            T,
            H,
            G * H,
            node.attrs["reverse"],
            node.attrs["bptt"],
            low.table(low.source(node, 1)),
            d_u,
            dh,
            direct,
            "initial_h" in outputs,
            prev,
            code,
        )

    def formula(self, node: Node, args: list[str]) -> str:
        return _recurrence_text(node, args, derive(node.attrs["cell"]).partial_x)


SCAN_GRAD = ScanGrad()


class ScanOutput(Op):
    """A further output of a scan backward kernel: δ of h·W (GRU), or of an initial state."""

    name = "scan_output"
    written_by_input = True

    def formula(self, node: Node, args: list[str]) -> str:
        output = node.attrs["output"]
        if output == "d_u":
            cell: Cell = node.attrs["cell"]
            derived = derive(cell)
            names = _names(cell, "ᵗ", "")
            parts = []
            for gate, d_x, d_u in zip(cell.gates, derived.d_x, derived.d_u):
                ratio = sp.simplify(d_u / d_x) if d_x != 0 else None
                block = f"{args[0]}_{gate}"
                if ratio == 1:
                    parts.append(block)
                elif ratio is not None and not ratio.has(*(incoming(s) for s in cell.states)):
                    parts.append(f"{_pretty(ratio, names)} ⊙ {block}")
                else:
                    parts.append(_pretty(d_u, names))
            return "[" + ", ".join(parts) + "]"
        state = output[len("initial_") :]
        return f"δ of the initial {state}, left by the time loop of {args[0]}"


COMPANION = ScanOutput()


class Shift(Op):
    """hᵗ⁻¹ for every t (hᵗ⁺¹ when reversed): the scan's states one step late, h0 or 0 first."""

    name = "shift"

    def lower(self, node: Node, low: Any) -> CopyKernel:
        T, H = node.shape
        h = low.table(low.source(node, 0))
        first = Block(None, 0, 0, 0, H)
        if len(node.inputs) > 1:
            h0 = low.source(node, 1)
            first = Block(low.table(h0), H if h0.batched else 0, 0, 0, H)
        blocks = []
        if node.attrs["reverse"]:
            if T > 1:
                blocks.append(Block(h, T * H, H, 0, (T - 1) * H))
            blocks.append(_moved(first, (T - 1) * H))
        else:
            blocks.append(first)
            if T > 1:
                blocks.append(Block(h, T * H, 0, H, (T - 1) * H))
        return CopyKernel(
            low.table.namer(f"k_{node.name}"),
            low.formula(node),
            Dim(1, True),
            low.table(node),
            T * H,
            tuple(blocks),
        )

    def formula(self, node: Node, args: list[str]) -> str:
        start = args[1] if len(args) > 1 else "0"
        if node.attrs["reverse"]:
            return f"{args[0]}ᵗ⁺¹ ({start} at t = T−1)"
        return f"{args[0]}ᵗ⁻¹ ({start} at t = 0)"


def _moved(block: Block, offset: int) -> Block:
    return Block(block.src, block.src_stride, block.src_offset, offset, block.cols)


SHIFT = Shift()


# --- layers -----------------------------------------------------------------------------------
def rnn(
    x: Node,
    hidden: int,
    activation: Any = "tanh",
    return_sequences: bool = False,
    bidirectional: bool = False,
    initial_state: Node | None = None,
    name: str | None = None,
    bptt: int | None = None,
    init: Any = "glorot",
) -> Node:
    """Elman RNN hᵗ = f(U xᵗ + W hᵗ⁻¹ + a) over x (T, F); params NAME.U, NAME.W, NAME.a.

    Returns every step (T, H) with ``return_sequences``, else the last step (H,);
    ``bidirectional`` adds a time-reversed pass (params NAME.*_reverse) concatenated on the
    last axis (2H).  ``initial_state``: a node of shape (H,) (default zeros).  ``bptt=k``
    truncates backpropagation through time to windows of k steps.
    """
    cell = elman_cell(get_activation(activation))
    return _layer(
        cell, x, hidden, return_sequences, bidirectional, initial_state, None, name, bptt, init
    )


def lstm(
    x: Node,
    hidden: int,
    return_sequences: bool = False,
    bidirectional: bool = False,
    initial_state: Node | None = None,
    initial_cell: Node | None = None,
    name: str | None = None,
    bptt: int | None = None,
    init: Any = "glorot",
    forget_bias: float = 1.0,
) -> Node:
    """LSTM (PyTorch's gates i, f, g, o) over x (T, F); params NAME.U (F, 4H), NAME.W (H, 4H),
    NAME.a (4H,).  Options as ``rnn``; ``initial_cell`` (H,) starts c (default zeros).

    ``forget_bias`` is the initial bias of the forget gate (the rest of a starts at 0): 1
    keeps the cell's memory open early in training (Jozefowicz et al., 2015); PyTorch
    starts it at 0.
    """
    bias = GateBias("constant", value=float(forget_bias), blocks=4, block=1)
    return _layer(
        lstm_cell(),
        x,
        hidden,
        return_sequences,
        bidirectional,
        initial_state,
        initial_cell,
        name,
        bptt,
        init,
        bias,
    )


def gru(
    x: Node,
    hidden: int,
    return_sequences: bool = False,
    bidirectional: bool = False,
    initial_state: Node | None = None,
    name: str | None = None,
    bptt: int | None = None,
    init: Any = "glorot",
) -> Node:
    """GRU (PyTorch's gates r, z, n) over x (T, F); params NAME.U (F, 3H), NAME.W (H, 3H),
    NAME.a (3H,) = bias_ih and NAME.b (3H,) = bias_hh.  Options as ``rnn``."""
    return _layer(
        gru_cell(),
        x,
        hidden,
        return_sequences,
        bidirectional,
        initial_state,
        None,
        name,
        bptt,
        init,
    )


@dataclass(frozen=True)
class GateBias(Init):
    """Zeros, except ``value`` in gate block ``block`` of ``blocks`` (the LSTM forget gate)."""

    blocks: int = 1
    block: int = 0

    def sample(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        values = np.zeros(shape)
        size = shape[0] // self.blocks
        values[self.block * size : (self.block + 1) * size] = self.value
        return values


def _state(node: Any, hidden: int, what: str) -> Node:
    node = as_node(node, what)
    if node.shape != (hidden,) or node.dtype != "real":
        raise ShapeError(f"{what}: {node.describe()} must be a float node of shape ({hidden},)")
    return node


def _layer(
    cell: Cell,
    x: Node,
    hidden: int,
    return_sequences: bool,
    bidirectional: bool,
    initial_state: Any,
    initial_cell: Any,
    name: str | None,
    bptt: int | None,
    init: Any,
    bias_init: Any = "zeros",
) -> Node:
    kind = cell.kind
    x = as_node(x, kind)
    if not isinstance(hidden, int) or hidden <= 0:
        raise GraphError(f"{kind}: hidden must be a positive integer, got {hidden!r}")
    if not x.batched or len(x.shape) != 2 or x.dtype != "real":
        raise ShapeError(
            f"{kind}: the input {x.describe()} must be a batched float sequence of shape "
            "(T, features); embed token ids with gc.embedding or gc.one_hot, and repeat a "
            "vector with gc.repeat(v, T)"
        )
    if bptt is not None and (not isinstance(bptt, int) or bptt <= 0):
        raise GraphError(f"{kind}: bptt must be a positive number of steps, got {bptt!r}")
    g = x.graph
    name = name or g.unique_name(kind)
    initial: dict[str, Node] = {}
    if initial_state is not None:
        initial["h"] = _state(initial_state, hidden, f"{kind} {name!r} initial_state")
    if initial_cell is not None:
        initial["c"] = _state(initial_cell, hidden, f"{kind} {name!r} initial_cell")
    single = not bidirectional
    outputs = []
    for reverse in (False, True) if bidirectional else (False,):
        suffix = "_reverse" if reverse else ""
        if single and return_sequences:
            node_name = name
        else:
            node_name = f"{name}.h{suffix}"
        h = _direction(
            cell, x, hidden, name, suffix, reverse, initial, bptt, (init, bias_init), node_name
        )
        if not return_sequences:
            last = 0 if reverse else x.shape[0] - 1
            step = slice_axis(h, 0, last, last + 1, name=f"{name}.last{suffix}")
            h = reshape(step, (hidden,), name=name if single else None)
        outputs.append(h)
    if single:
        return outputs[0]
    return concat(outputs, axis=-1, name=name)


def _direction(
    cell: Cell,
    x: Node,
    hidden: int,
    name: str,
    suffix: str,
    reverse: bool,
    initial: dict[str, Node],
    bptt: int | None,
    inits: tuple[Any, Any],
    node_name: str,
) -> Node:
    g = x.graph
    width = len(cell.gates) * hidden
    init, bias_init = inits
    U = g.param(f"{name}.U{suffix}", (x.shape[1], width), init=init)
    W = g.param(f"{name}.W{suffix}", (hidden, width), init=init)
    a = g.param(f"{name}.a{suffix}", (width,), init=bias_init)
    if x.op is ONE_HOT:
        # one-hot rows times U pick rows of U: a lookup, not a GEMM
        xu = lookup(x.inputs[0], U, f"{name}.xU{suffix}")
    else:
        xu = make_matmul(x, U, name=f"{name}.xU{suffix}")
    layer = {"layer": f"{name}{suffix}"}
    z = apply("add", X[0] + X[1], [xu, a], name=f"{name}.z{suffix}", attrs=layer)
    inputs = [z, W]
    if cell.hidden_bias:
        inputs.append(g.param(f"{name}.b{suffix}", (width,), init="zeros"))
    names = tuple(s for s in cell.states if s in initial)
    inputs += [initial[s] for s in names]
    attrs = {"cell": cell, "reverse": reverse, "bptt": bptt, "initial": names}
    return make_node(g, SCAN, inputs, (x.shape[0], hidden), True, node_name, cell.kind, attrs=attrs)
