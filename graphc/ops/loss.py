"""Losses: a per-element sympy expression ℓ(O, T), summed over units, averaged over the batch.

The δ of a loss is derived with sympy.  When the prediction is an activation of a
pre-activation I (sigmoid, identity...) or a softmax, the δ pass derives δ with respect to
I directly and rewrites it in terms of O and T: sigmoid + binary cross-entropy and
softmax + cross-entropy both come out as O - T.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sympy as sp

from graphc.errors import GraphError, ShapeError
from graphc.graph import Node, user_line
from graphc.kernels import LossKernel
from graphc.ops.base import Op, as_node, make_node, same_graph
from graphc.ops.elementwise import ELEMENTWISE, activate
from graphc.ops.linalg import matrix_dims
from graphc.ops.softmax import SOFTMAX, softmax
from graphc.symbolic import I, N, O, T, X, in_terms_of, simplest

if TYPE_CHECKING:
    from graphc.autodiff import Adjoints

#: the row's log-sum-exp, available to stable forward forms
L = sp.Symbol("L", real=True)
#: smallest argument a logarithm of a probability sees in the forward loss
TINY = sp.Float(1e-30)


@dataclass(frozen=True)
class LossKind:
    """A loss: its defining expression, a numerically stable forward form and its metric."""

    name: str
    expr: sp.Expr  # ℓ(O, T) per element
    forward: sp.Expr  # what the forward kernel sums: in O, T, or in I, T, L for logits
    from_logits: bool
    accuracy: str | None  # 'argmax', 'binary' or None


MSE = LossKind("mse", (T - O) ** 2 / 2, (T - O) ** 2 / 2, False, None)
BCE = LossKind(
    "binary_cross_entropy",
    -(T * sp.log(O) + (1 - T) * sp.log(1 - O)),
    -(T * sp.log(sp.Max(O, TINY)) + (1 - T) * sp.log(sp.Max(1 - O, TINY))),
    False,
    "binary",
)
SIGMOID_BCE = LossKind(
    "sigmoid_binary_cross_entropy",
    BCE.expr,
    sp.Max(I, 0) - I * T + sp.log(1 + sp.exp(-sp.Abs(I))),
    True,
    "binary",
)
CE = LossKind("cross_entropy", -T * sp.log(O), -T * sp.log(sp.Max(O, TINY)), False, "argmax")
SOFTMAX_CE = LossKind("softmax_cross_entropy", CE.expr, T * (L - I), True, "argmax")


@functools.cache
def _elementwise_link(loss: sp.Expr, f: sp.Expr) -> sp.Expr | None:
    """∂ℓ(f(I), T)/∂I in terms of O = f(I) and T, or None.  Cached: the same loss after the
    same activation comes back in every compile, and its algebra is a cached compile's
    largest cost."""
    d = sp.diff(loss.xreplace({O: f}), I)
    rewritten = in_terms_of(d, I, f, O, extra=[T])
    if rewritten is None or rewritten.has(I):
        return None
    return rewritten


@functools.cache
def _softmax_link(loss: sp.Expr) -> sp.Expr | None:
    """∂ℓ/∂logits through a softmax, in terms of O and T, or None (cached likewise).

    ``cancel`` rather than ``simplify``: a loss's O · ∂ℓ/∂O is a rational function of O and
    T, and simplify's first call imports sympy.physics (25 ms of every new process)."""
    g = sp.diff(loss, O)
    per_unit = sp.expand(sp.cancel(O * g))
    # Σ_k O_k g_k: linear in T with no O left, so it sums to its value at T = 1
    # because targets of a softmax loss are distributions (Σ_k T_k = 1)
    if per_unit.has(O) or sp.degree(per_unit, T) > 1 or per_unit.subs(T, 0) != 0:
        return None
    total = per_unit.subs(T, 1)
    return simplest(sp.cancel(O * g - O * total))


class Loss(Op):
    """Mean over the batch of Σ_units ℓ(O, T); inputs (prediction, target[, logits])."""

    name = "loss"

    def grad_inputs(self, node: Node) -> tuple[int, ...]:
        # the logits input only serves the numerically stable forward form
        return (0,)

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[Any, Node]:
        kind: LossKind = node.attrs["kind"]
        pred = node.inputs[0]
        scale = 1 / N
        combined = self._through_link(pred, kind, ad)
        if combined is not None:
            inner, expr = combined
            return {inner: self._delta("delta", expr * scale, node, delta, inner, ad)}
        if not ad.needs(pred):
            return {}
        d_pred = simplest(sp.diff(kind.expr, O))
        return {0: self._delta("d_loss", d_pred * scale, node, delta, pred, ad)}

    @staticmethod
    def _through_link(pred: Node, kind: LossKind, ad: "Adjoints") -> tuple[Node, sp.Expr] | None:
        """δ with respect to the prediction's own input, in terms of O and T, if derivable."""
        if not pred.inputs or not ad.needs(pred.inputs[0]):
            return None
        if ad.consumers(pred) != 1:
            return None
        inner = pred.inputs[0]
        if pred.op is ELEMENTWISE and len(pred.inputs) == 1:
            rewritten = _elementwise_link(kind.expr, pred.attrs["expr"].xreplace({X[0]: I}))
        elif pred.op is SOFTMAX:
            rewritten = _softmax_link(kind.expr)
        else:
            rewritten = None
        return None if rewritten is None else (inner, rewritten)

    @staticmethod
    def _delta(
        label: str, expr: sp.Expr, node: Node, delta: Node, wrt: Node, ad: "Adjoints"
    ) -> Node:
        operands = [node.inputs[0], node.inputs[1]]
        body = expr.xreplace({O: X[0], T: X[1]})
        if not ad.is_seed(delta):
            # the loss is part of a larger objective: scale by its incoming δ
            operands.append(delta)
            body = body * X[2]
        return ad.elementwise(label, body, operands, wrt=wrt, shape=wrt.shape, batched=wrt.batched)

    def lower(self, node: Node, low) -> LossKernel:
        kind: LossKind = node.attrs["kind"]
        pred = low.source(node, 0)
        target = low.resolved(node, 1)
        onehot = target.op is ONE_HOT
        target_tensor = low.table(target.inputs[0] if onehot else target)
        logits = low.table(low.source(node, 2)) if kind.from_logits else None
        # rows and classes come from the prediction as the loss sees it (a reshape view
        # may share the memory of a node of another shape)
        rows, cols = matrix_dims(low.resolved(node, 0))
        row_loss = low.table.scratch(f"{node.name}_rows", (rows,), True)
        return LossKernel(
            low.table.namer(f"k_{node.name}"),
            f"{node.name} = mean over the batch of sum over units of {kind.expr}",
            rows,
            cols,
            low.table(pred),
            target_tensor,
            onehot,
            logits,
            kind.forward,
            kind.accuracy,
            row_loss,
        )

    def formula(self, node: Node, args: list[str]) -> str:
        return f"{node.attrs['kind'].name}({args[0]}, {args[1]})"


LOSS = Loss()


class OneHot(Op):
    """T_k = 1 if k equals the integer label, else 0 (a view read by kernels, never stored)."""

    name = "one_hot"

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        return {}

    def formula(self, node: Node, args: list[str]) -> str:
        return f"onehot({args[0]})"


ONE_HOT = OneHot()


def one_hot(labels: Node, classes: int, name: str | None = None) -> Node:
    """One-hot float vectors from integer class labels."""
    labels = as_node(labels, "one_hot")
    if labels.dtype != "int32":
        raise GraphError(f"one_hot: {labels.describe()} must be an int32 input")
    return make_node(
        labels.graph,
        ONE_HOT,
        [labels],
        labels.shape + (int(classes),),
        labels.batched,
        name,
        f"{labels.name}_onehot",
    )


def _target(pred: Node, target: Node, kind: LossKind) -> Node:
    at = f" (at {user_line()})"
    if target.dtype == "int32":
        if kind.accuracy == "argmax" and target.shape == pred.shape[:-1]:
            return one_hot(target, pred.shape[-1])
        raise ShapeError(
            f"{kind.name}: integer labels {target.describe()} must have the prediction's shape "
            f"without its last axis, {pred.shape[:-1]}, for the prediction {pred.describe()}" + at
        )
    if target.shape != pred.shape or not target.batched:
        raise ShapeError(
            f"{kind.name}: target {target.describe()} must have the shape of the prediction "
            f"{pred.describe()}" + at
        )
    return target


def _loss(kind: LossKind, pred: Node, target: Node, logits: Node | None, name: str | None) -> Node:
    same_graph([pred, target], kind.name)
    if not pred.batched:
        raise ShapeError(f"{kind.name}: the prediction {pred.describe()} needs a batch axis")
    t = _target(pred, target, kind)
    inputs = [pred, t] + ([logits] if logits is not None else [])
    return make_node(pred.graph, LOSS, inputs, (), False, name, kind.name, attrs={"kind": kind})


def mse(pred: Node, target: Node, name: str | None = None) -> Node:
    """Mean over the batch of ½ Σ (T − O)²."""
    return _loss(MSE, as_node(pred, "mse"), as_node(target, "mse"), None, name)


def binary_cross_entropy(probs: Node, target: Node, name: str | None = None) -> Node:
    """−Σ T log O + (1 − T) log(1 − O) on probabilities."""
    return _loss(BCE, as_node(probs, "binary_cross_entropy"), as_node(target, "bce"), None, name)


def sigmoid_binary_cross_entropy(logits: Node, target: Node, name: str | None = None) -> Node:
    """Binary cross-entropy of sigmoid(logits), computed stably from the logits."""
    logits = as_node(logits, "sigmoid_binary_cross_entropy")
    probs = activate(logits, "sigmoid")
    return _loss(SIGMOID_BCE, probs, as_node(target, "bce"), logits, name)


def cross_entropy(probs: Node, target: Node, name: str | None = None) -> Node:
    """−Σ T log O on probabilities (targets are class labels or distributions)."""
    return _loss(CE, as_node(probs, "cross_entropy"), as_node(target, "cross_entropy"), None, name)


def softmax_cross_entropy(logits: Node, target: Node, name: str | None = None) -> Node:
    """Cross-entropy of softmax(logits), computed stably from the logits."""
    logits = as_node(logits, "softmax_cross_entropy")
    probs = softmax(logits)
    return _loss(SOFTMAX_CE, probs, as_node(target, "softmax_cross_entropy"), logits, name)
