"""Sympy helpers of the δ pass: derivatives, rewriting them in terms of outputs, CSE.

The compiler never types a derivative by hand.  ``sympy.diff`` gives f'(I); then
``in_terms_of`` tries to re-express it through the forward output O = f(I) (for example
sigmoid' = O(1 - O), tanh' = 1 - O²), which lets the backward pass read the stored
output instead of keeping the pre-activation alive.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Sequence

import numpy as np
import sympy as sp

#: operand symbols of elementwise expressions: x0, x1, ...
X = sp.symbols("x0:16", real=True)
#: the pre-activation, the output, the incoming δ and the target of a loss
I, O, D, T = sp.symbols("I O D T", real=True)
#: number of rows in the current batch (a run-time value in generated code)
N = sp.Symbol("n", positive=True, integer=True)

_SAMPLES = (-2.3, -1.1, -0.45, -0.05, 0.07, 0.35, 0.9, 1.7, 2.6)


def cost(expr: sp.Expr) -> int:
    """Operation count, with transcendental calls weighted as several flops."""
    cheap = (sp.Piecewise, sp.Max, sp.Min, sp.Abs)
    heavy = sum(
        1
        for a in sp.preorder_traversal(expr)
        if isinstance(a, sp.Function) and not isinstance(a, cheap)
    )
    return int(sp.count_ops(expr)) + 8 * heavy


def _evaluate(expr: sp.Expr, values: dict) -> complex | None:
    try:
        value = complex(expr.subs(values).evalf(30))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if value != value or abs(value) > 1e12:
        return None
    return value


def _fit_polynomial(
    target: sp.Expr,
    var: sp.Symbol,
    inner: sp.Expr,
    out: sp.Symbol,
    extra: Sequence[sp.Symbol],
    domain: sp.Basic,
    degree: int,
) -> sp.Expr | None:
    """Find exact rational coefficients with target(var) == P(inner(var), extra).

    P is a polynomial of ``degree`` in ``out`` and degree 1 in each extra symbol.  The
    coefficients are fitted numerically on sample points in ``domain`` and then verified
    at other points to 1e-12; None when no such polynomial exists.
    """
    monomials = []
    for power in range(degree + 1):
        for subset in itertools.chain.from_iterable(
            itertools.combinations(extra, k) for k in range(len(extra) + 1)
        ):
            monomials.append(out**power * sp.Mul(*subset))
    rng = random.Random(1234)
    rows, rhs = [], []
    attempts = 0
    while len(rows) < 3 * len(monomials) and attempts < 400:
        attempts += 1
        point = {var: sp.Float(rng.choice(_SAMPLES) + rng.uniform(-0.03, 0.03), 30)}
        for s in extra:
            point[s] = sp.Float(rng.uniform(0.05, 0.95), 30)
        if domain is not sp.true and not bool(domain.subs(point)):
            continue
        inner_value = _evaluate(inner, point)
        value = _evaluate(target, point)
        if inner_value is None or value is None:
            continue
        env = {out: inner_value.real, **{s: point[s] for s in extra}}
        rows.append([complex(m.subs(env)).real for m in monomials])
        rhs.append(value.real)
    if len(rows) < len(monomials):
        return None
    solution = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    coefficients = [_exact(float(c)) for c in solution]
    candidate = sum(c * m for c, m in zip(coefficients, monomials))
    # verify exactly-enough at fresh points
    for _ in range(6):
        point = {var: sp.Float(rng.uniform(-2.5, 2.5), 40)}
        for s in extra:
            point[s] = sp.Float(rng.uniform(0.05, 0.95), 40)
        if domain is not sp.true and not bool(domain.subs(point)):
            continue
        lhs = _evaluate(target, point)
        inner_value = _evaluate(inner, point)
        if lhs is None or inner_value is None:
            continue
        rhs_value = _evaluate(candidate, {out: inner_value.real, **{s: point[s] for s in extra}})
        if rhs_value is None or abs(lhs - rhs_value) > 1e-12 * max(1.0, abs(lhs)):
            return None
    return simplest(candidate)


def _exact(value: float) -> sp.Rational:
    """The simple rational closest to a fitted coefficient (0 for round-off)."""
    if abs(value) < 1e-9:
        return sp.Integer(0)
    return sp.nsimplify(value, rational=True, tolerance=1e-9 * max(1.0, abs(value)))


@functools.cache
def simplest(expr: sp.Expr) -> sp.Expr:
    """The cheaper of the factored and expanded forms (factored on a tie).  Cached, like
    ``derivative_in_output``: pure functions of immutable expressions, and every compile
    asks again for the same activations' forms."""
    factored, expanded = sp.factor(expr), sp.expand(expr)
    return expanded if cost(expanded) < cost(factored) else factored


def _output_condition(
    cond: sp.Basic, f: sp.Expr, var: sp.Symbol, out: sp.Symbol
) -> sp.Basic | None:
    """Rewrite a condition on the sign of ``var`` as one on ``out`` = f(var).

    Valid when f keeps the sign of its argument (f(0) = 0, f increasing), as relu,
    leaky relu and elu do.
    """
    if cond is sp.true:
        return cond
    if not isinstance(cond, sp.core.relational.Relational):
        return None
    if cond.lhs != var or cond.rhs != 0:
        return None
    for x in _SAMPLES:
        value = _evaluate(f, {var: x})
        if value is None or (value.real > 0) != (x > 0):
            return None
    return cond.func(out, 0)


def in_terms_of(
    target: sp.Expr,
    var: sp.Symbol,
    f: sp.Expr,
    out: sp.Symbol = O,
    extra: Sequence[sp.Symbol] = (),
    degree: int = 3,
) -> sp.Expr | None:
    """Express ``target(var)`` through ``out = f(var)`` (and ``extra``), or None.

    Piecewise functions are handled branch by branch; their conditions on the sign of
    ``var`` become conditions on the sign of ``out``.
    """
    target = sp.piecewise_fold(target)
    f = sp.piecewise_fold(f)
    if isinstance(target, sp.Piecewise) and isinstance(f, sp.Piecewise):
        if len(target.args) != len(f.args):
            return None
        pieces = []
        for (tv, tc), (fv, fc) in zip(target.args, f.args):
            if tc != fc:
                return None
            value = _branch(tv, var, fv, out, extra, tc, degree)
            cond = _output_condition(tc, f, var, out)
            if value is None or cond is None:
                return None
            pieces.append((value, cond))
        return sp.Piecewise(*pieces)
    if isinstance(target, sp.Piecewise) or isinstance(f, sp.Piecewise):
        return None
    return _branch(target, var, f, out, extra, sp.true, degree)


def _branch(target, var, f, out, extra, domain, degree):
    if not target.has(var):
        return target
    return _fit_polynomial(target, var, f, out, extra, domain, degree)


@functools.cache
def derivative_in_output(f: sp.Expr, var: sp.Symbol = X[0]) -> tuple[sp.Expr, bool]:
    """f'(var) in its cheapest form: (expr, uses_output) where expr may use O instead of var."""
    d = sp.piecewise_fold(sp.diff(f, var))
    rewritten = in_terms_of(d, var, f, O)
    if rewritten is not None and not rewritten.has(var) and cost(rewritten) <= cost(d):
        # a constant derivative (identity, x/3) reads neither the input nor the output
        return rewritten, rewritten.has(O)
    return d, False


def mentions(expr: sp.Expr, symbol: sp.Symbol) -> bool:
    """True when ``symbol`` appears in ``expr``."""
    return symbol in expr.free_symbols
