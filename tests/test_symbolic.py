"""Derived forms (graphc/symbolic.py and the δ pass): assert sympy results, not strings."""

from __future__ import annotations

import pytest
import sympy as sp

import graphc as gc
from graphc.autodiff import differentiate
from graphc.ops.elementwise import get_activation
from graphc.symbolic import N, O, T, X, derivative_in_output, in_terms_of


def _derivative(name: str):
    return derivative_in_output(get_activation(name).expr, X[0])


def test_sigmoid_derivative_in_output():
    d, uses_output = _derivative("sigmoid")
    assert uses_output
    assert sp.simplify(d - O * (1 - O)) == 0


def test_tanh_derivative_in_output():
    d, uses_output = _derivative("tanh")
    assert uses_output
    assert sp.simplify(d - (1 - O**2)) == 0


def _piecewise_check(d, below, above):
    """d is a function of O alone, equal to ``below`` for O < 0 and ``above`` for O > 0."""
    assert d.free_symbols <= {O}
    for value in (-2.5, -0.3, -1e-3):
        assert sp.simplify(d.subs(O, value) - below.subs(O, value)) == 0
    for value in (1e-3, 0.4, 3.0):
        assert sp.simplify(d.subs(O, value) - above.subs(O, value)) == 0


def test_relu_derivative_is_piecewise_in_output():
    d, uses_output = _derivative("relu")
    assert uses_output
    _piecewise_check(d, sp.Integer(0), sp.Integer(1))


def test_leaky_relu_derivative_is_piecewise_in_output():
    d, uses_output = _derivative("leaky_relu")
    assert uses_output
    _piecewise_check(d, sp.Rational(1, 100), sp.Integer(1))
    g = gc.Graph("leaky")
    node = gc.leaky_relu(g.input("x", 3), alpha=0.2)
    d, uses_output = derivative_in_output(node.attrs["expr"], X[0])
    assert uses_output
    _piecewise_check(d, sp.Rational(1, 5), sp.Integer(1))


def test_elu_derivative_is_piecewise_in_output():
    d, uses_output = _derivative("elu")
    assert uses_output
    _piecewise_check(d, O + 1, sp.Integer(1))
    g = gc.Graph("elu")
    node = gc.elu(g.input("x", 3), alpha=0.5)
    d, uses_output = derivative_in_output(node.attrs["expr"], X[0])
    assert uses_output
    _piecewise_check(d, O + sp.Rational(1, 2), sp.Integer(1))


def test_softplus_derivative_is_the_sigmoid():
    d, _ = _derivative("softplus")
    assert sp.simplify(d - 1 / (1 + sp.exp(-X[0]))) == 0


def test_identity_derivative_is_one():
    d, _ = _derivative("identity")
    assert d == 1


def test_custom_activation_derivative_is_derived():
    swish = gc.activation("swish_sym", lambda I: I / (1 + sp.exp(-I)))
    d, uses_output = derivative_in_output(swish.expr, X[0])
    expected = sp.diff(X[0] / (1 + sp.exp(-X[0])), X[0])
    if uses_output:
        pytest.fail(f"swish' cannot be a polynomial of swish, got {d}")
    assert sp.simplify(d - expected) == 0


def test_in_terms_of_returns_none_when_impossible():
    # exp(-x²) is not a polynomial of x³ with rational coefficients
    assert in_terms_of(sp.exp(-(X[0] ** 2)), X[0], X[0] ** 3, O) is None


def test_activation_rejects_foreign_symbols():
    other = sp.Symbol("a")
    with pytest.raises(gc.GraphError, match="symbols other than its argument"):
        gc.activation("bad", lambda I: I * other)


# --- δ of loss and output pairs ------------------------------------------------------------------
def _delta_expr(g: gc.Graph, name: str) -> sp.Expr:
    """The δ node ``name`` built by differentiate, in O (prediction), T (target) and n."""
    backward = differentiate(g)
    node = next(n for n in backward.nodes if n.name == name)
    loss = g.loss
    pred, target = loss.inputs[0], loss.inputs[1]
    mapping = {}
    for i, x in enumerate(node.inputs):
        if x is pred:
            mapping[X[i]] = O
        elif x is target:
            mapping[X[i]] = T
        else:
            raise AssertionError(f"{name} reads {x.name!r}, not only the prediction and target")
    return node.attrs["expr"].xreplace(mapping)


def _graph(kind: str, int_labels: bool = False) -> gc.Graph:
    g = gc.Graph(f"delta_{kind}")
    x = g.input("x", 3)
    y = g.input("y", (), dtype="int32") if int_labels else g.input("y", 7)
    h = gc.dense(x, 5, activation="tanh", name="hidden")
    if kind == "softmax_ce":
        g.minimize(gc.cross_entropy(gc.softmax(gc.dense(h, 7, name="out")), y))
    elif kind == "softmax_cross_entropy":
        g.minimize(gc.softmax_cross_entropy(gc.dense(h, 7, name="out"), y))
    elif kind == "sigmoid_bce":
        g.minimize(gc.binary_cross_entropy(gc.dense(h, 7, activation="sigmoid", name="out"), y))
    elif kind == "sigmoid_binary_cross_entropy":
        g.minimize(gc.sigmoid_binary_cross_entropy(gc.dense(h, 7, name="out"), y))
    elif kind == "sigmoid_mse":
        g.minimize(gc.mse(gc.dense(h, 7, activation="sigmoid", name="out"), y))
    elif kind == "identity_mse":
        g.minimize(gc.mse(gc.dense(h, 7, name="out"), y))
    else:
        raise AssertionError(kind)
    return g


@pytest.mark.parametrize(
    "kind,int_labels",
    [
        ("softmax_ce", False),
        ("softmax_ce", True),
        ("softmax_cross_entropy", False),
        ("softmax_cross_entropy", True),
        ("sigmoid_bce", False),
        ("sigmoid_binary_cross_entropy", False),
        ("identity_mse", False),
    ],
)
def test_loss_delta_is_output_minus_target(kind, int_labels):
    expr = _delta_expr(_graph(kind, int_labels), "delta_out")
    assert sp.simplify(expr - (O - T) / N) == 0


def test_mse_after_sigmoid_delta():
    expr = _delta_expr(_graph("sigmoid_mse"), "delta_out")
    assert sp.simplify(expr - O * (1 - O) * (O - T) / N) == 0


def test_tanh_hidden_delta_reads_the_output():
    """δ[hidden] = (δ[out] · Wᵀ) ⊙ (1 − hidden²): the backward node reads hidden, not its input."""
    g = _graph("identity_mse")
    backward = differentiate(g)
    node = next(n for n in backward.nodes if n.name == "delta_hidden")
    hidden = g.node("hidden")
    assert hidden in node.inputs
    upstream = node.inputs[0]
    mapping = {X[node.inputs.index(upstream)]: sp.Symbol("D"), X[node.inputs.index(hidden)]: O}
    expr = node.attrs["expr"].xreplace(mapping)
    assert sp.simplify(expr - sp.Symbol("D") * (1 - O**2)) == 0
