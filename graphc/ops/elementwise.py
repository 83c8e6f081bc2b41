"""Elementwise ops: arithmetic and activations, each a sympy expression of its operands.

The derivative of every elementwise op is derived with sympy (see ``graphc.symbolic``);
nothing here types a derivative by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sympy as sp

from graphc.errors import GraphError, NotDifferentiableError
from graphc.graph import Graph, Node
from graphc.ops.base import Op, as_node, broadcast_shapes, make_node, same_graph
from graphc.symbolic import O, X, derivative_in_output, simplest

if TYPE_CHECKING:
    from graphc.autodiff import Adjoints


class Elementwise(Op):
    """out = expr(x0, x1, ...) element by element, with broadcasting of the operands.

    ``node.attrs['expr']`` is the sympy expression over ``X[0..k)``; ``label`` names it in
    generated code and in ``explain()``.  ``out_shape`` may force a larger (broadcast)
    output shape than the operands'.
    """

    name = "elementwise"

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        expr: sp.Expr = node.attrs["expr"]
        reason = node.attrs.get("not_differentiable")
        result: dict[int, Node] = {}
        for i, operand in enumerate(node.inputs):
            if not ad.needs(operand):
                continue
            if reason:
                raise NotDifferentiableError(
                    f"the loss depends on trainable parameters through {node.name!r} "
                    f"({node.attrs['label']}, defined at {node.where}), which {reason}; "
                    "use a differentiable activation such as 'sigmoid' or 'tanh', or train a "
                    "perceptron with gc.Perceptron"
                )
            result[i] = self._operand_delta(node, i, expr, delta, ad)
        return result

    def _operand_delta(
        self, node: Node, i: int, expr: sp.Expr, delta: Node, ad: "Adjoints"
    ) -> Node:
        if len(node.inputs) == 1:
            derivative, uses_output = derivative_in_output(expr, X[0])
        else:
            derivative, uses_output = simplest(sp.diff(expr, X[i])), False
        if derivative == 1:
            return ad.reduce_to(delta, node.inputs[i])
        # operands of the backward node: x0 = δ, then the forward values it reads
        operands: list[Node] = [delta]
        mapping: dict[sp.Symbol, sp.Symbol] = {}
        if uses_output:
            operands.append(node)
            mapping[O] = X[1]
        else:
            for j, forward in enumerate(node.inputs):
                if derivative.has(X[j]):
                    mapping[X[j]] = X[len(operands)]
                    operands.append(forward)
        body = derivative.xreplace(mapping)
        return ad.elementwise(
            f"d_{node.attrs['label']}",
            X[0] * body,
            operands,
            wrt=node.inputs[i],
            shape=delta.shape,
            batched=delta.batched,
        )

    def formula(self, node: Node, args: list[str]) -> str:
        expr = node.attrs["expr"]
        names = {X[i]: sp.Symbol(a) for i, a in enumerate(args)}
        return str(expr.xreplace(names))


ELEMENTWISE = Elementwise()


def apply(
    label: str,
    expr: sp.Expr,
    operands: Sequence[Any],
    name: str | None = None,
    graph: Graph | None = None,
    shape: tuple[int, ...] | None = None,
    batched: bool | None = None,
    attrs: dict | None = None,
) -> Node:
    """Build an elementwise node; Python numbers among ``operands`` become constants."""
    nodes: list[Node] = []
    mapping: dict[sp.Symbol, Any] = {}
    for k, value in enumerate(operands):
        if isinstance(value, Node):
            if value.dtype != "real":
                raise GraphError(
                    f"{label}: {value.describe()} holds integers; convert labels with "
                    "gc.one_hot before arithmetic"
                )
            mapping[X[k]] = X[len(nodes)]
            nodes.append(value)
        elif isinstance(value, (int, float)):
            mapping[X[k]] = sp.nsimplify(value) if float(value).is_integer() else sp.Float(value)
        else:
            raise GraphError(f"{label}: cannot use {type(value).__name__} {value!r} as an operand")
    if not nodes:
        raise GraphError(f"{label}: at least one operand must be a graph node")
    graph = graph or same_graph(nodes, label)
    out_shape, out_batched = broadcast_shapes(nodes, label)
    if shape is not None:
        out_shape, out_batched = tuple(shape), bool(batched)
    node_attrs = {"expr": expr.xreplace(mapping), "label": label}
    node_attrs.update(attrs or {})
    return make_node(
        graph, ELEMENTWISE, nodes, out_shape, out_batched, name, label, attrs=node_attrs
    )


# --- arithmetic ---------------------------------------------------------------------------
def add(a: Any, b: Any, name: str | None = None) -> Node:
    """a + b with broadcasting."""
    return apply("add", X[0] + X[1], [a, b], name)


def sub(a: Any, b: Any, name: str | None = None) -> Node:
    """a - b with broadcasting."""
    return apply("sub", X[0] - X[1], [a, b], name)


def mul(a: Any, b: Any, name: str | None = None) -> Node:
    """a * b elementwise with broadcasting."""
    return apply("mul", X[0] * X[1], [a, b], name)


def div(a: Any, b: Any, name: str | None = None) -> Node:
    """a / b elementwise with broadcasting."""
    return apply("div", X[0] / X[1], [a, b], name)


def neg(a: Node, name: str | None = None) -> Node:
    """-a."""
    return apply("neg", -X[0], [a], name)


def square(a: Node, name: str | None = None) -> Node:
    """a²."""
    return apply("square", X[0] ** 2, [a], name)


def exp(a: Node, name: str | None = None) -> Node:
    """e^a."""
    return apply("exp", sp.exp(X[0]), [a], name)


def log(a: Node, name: str | None = None) -> Node:
    """Natural logarithm (defined for a > 0)."""
    return apply("log", sp.log(X[0]), [a], name)


# --- activations --------------------------------------------------------------------------
@dataclass(frozen=True)
class Activation:
    """A named activation f(I), a sympy expression of one symbol."""

    name: str
    expr: sp.Expr  # in X[0]
    not_differentiable: str | None = None


_ACTIVATIONS: dict[str, Activation] = {}


def register(activation: Activation) -> Activation:
    """Make an activation usable by name (``activation="name"``)."""
    _ACTIVATIONS[activation.name] = activation
    return activation


def activation(name: str, fn: Callable[[sp.Symbol], sp.Expr]) -> Activation:
    """Define a custom activation from a sympy expression of one symbol; its derivative is derived.

    >>> swish = activation("swish", lambda I: I / (1 + sympy.exp(-I)))
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise GraphError(f"activation name {name!r} must be an identifier")
    symbol = sp.Symbol("I", real=True)
    try:
        expr = sp.sympify(fn(symbol))
    except (TypeError, ValueError, sp.SympifyError) as exc:
        raise GraphError(
            f"activation {name!r}: the function must build a sympy expression of its one "
            f"argument ({exc})"
        ) from exc
    extra = expr.free_symbols - {symbol}
    if extra:
        raise GraphError(
            f"activation {name!r}: the expression {expr} uses symbols other than its argument: "
            f"{sorted(map(str, extra))}"
        )
    return register(Activation(name, expr.xreplace({symbol: X[0]})))


def get_activation(spec: Any) -> Activation:
    """An Activation from a name, an Activation, or None (identity)."""
    if spec is None:
        return _ACTIVATIONS["identity"]
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, str) and spec in _ACTIVATIONS:
        return _ACTIVATIONS[spec]
    known = ", ".join(sorted(_ACTIVATIONS))
    raise GraphError(
        f"unknown activation {spec!r}; known: {known} (define one with gc.activation(name, fn))"
    )


def activate(x: Node, spec: Any, name: str | None = None) -> Node:
    """Apply an activation (by name or object) to ``x``."""
    act = get_activation(spec)
    attrs = {"activation": act.name}
    if act.not_differentiable:
        attrs["not_differentiable"] = act.not_differentiable
    return apply(act.name, act.expr, [as_node(x, act.name)], name, attrs=attrs)


def _piecewise(negative: sp.Expr, positive: sp.Expr, strict: bool = False) -> sp.Expr:
    cond = X[0] < 0 if strict else X[0] <= 0
    return sp.Piecewise((negative, cond), (positive, True))


register(Activation("identity", X[0]))
register(Activation("sigmoid", 1 / (1 + sp.exp(-X[0]))))
register(Activation("tanh", sp.tanh(X[0])))
register(Activation("relu", _piecewise(sp.Integer(0), X[0])))
register(Activation("softplus", sp.log(1 + sp.exp(X[0]))))
register(
    Activation(
        "step",
        _piecewise(sp.Integer(0), sp.Integer(1)),
        not_differentiable="is a step function whose derivative is zero almost everywhere",
    )
)
register(
    Activation(
        "sign",
        _piecewise(sp.Integer(-1), sp.Integer(1), strict=True),
        not_differentiable="is a step function whose derivative is zero almost everywhere",
    )
)
register(Activation("leaky_relu", _piecewise(sp.Rational(1, 100) * X[0], X[0], strict=True)))
register(Activation("elu", _piecewise(sp.exp(X[0]) - 1, X[0])))


def _number(value: float) -> sp.Expr:
    return sp.nsimplify(value, rational=True) if abs(value) < 1e6 else sp.Float(value)


def sigmoid(x: Node, name: str | None = None) -> Node:
    """1 / (1 + e^-x)."""
    return activate(x, "sigmoid", name)


def tanh(x: Node, name: str | None = None) -> Node:
    """Hyperbolic tangent."""
    return activate(x, "tanh", name)


def relu(x: Node, name: str | None = None) -> Node:
    """max(x, 0)."""
    return activate(x, "relu", name)


def softplus(x: Node, name: str | None = None) -> Node:
    """log(1 + e^x)."""
    return activate(x, "softplus", name)


def identity(x: Node, name: str | None = None) -> Node:
    """x itself (a named copy)."""
    return activate(x, "identity", name)


def step(x: Node, name: str | None = None) -> Node:
    """1 if x > 0 else 0: the perceptron's threshold (not differentiable)."""
    return activate(x, "step", name)


def sign(x: Node, name: str | None = None) -> Node:
    """+1 if x >= 0 else -1 (not differentiable)."""
    return activate(x, "sign", name)


def leaky_relu(x: Node, alpha: float = 0.01, name: str | None = None) -> Node:
    """x if x >= 0 else alpha * x."""
    if alpha == 0.01:
        return activate(x, "leaky_relu", name)
    act = Activation("leaky_relu", _piecewise(_number(alpha) * X[0], X[0], strict=True))
    return activate(x, act, name)


def elu(x: Node, alpha: float = 1.0, name: str | None = None) -> Node:
    """x if x > 0 else alpha (e^x - 1)."""
    if alpha == 1.0:
        return activate(x, "elu", name)
    act = Activation("elu", _piecewise(_number(alpha) * (sp.exp(X[0]) - 1), X[0]))
    return activate(x, act, name)
