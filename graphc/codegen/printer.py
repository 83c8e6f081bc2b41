"""Sympy -> C expression printing, after common-subexpression elimination."""

from __future__ import annotations

import functools

import sympy as sp
from sympy.codegen.ast import float32, float64, real
from sympy.printing.c import C99CodePrinter


class CPrinter(C99CodePrinter):
    """C99 printer: float32 math (``expf``, ``1.0F``), small powers as products, one-line ternaries."""

    def __init__(self, dtype: str = "float32", inline_exp: bool = False) -> None:
        alias = float32 if dtype == "float32" else float64
        super().__init__({"type_aliases": {real: alias}})
        self.dtype = dtype
        #: e^x as the runtime's inline, vectorizable gc_exp (gc_math.h) instead of libm's
        #: exp, a call per element that keeps a loop scalar
        self.inline_exp = inline_exp
        if inline_exp:
            name = "gc_expf" if dtype == "float32" else "gc_exp"
            self.known_functions = {**self.known_functions, "exp": name}

    @property
    def exp_name(self) -> str:
        """The C function this printer calls for e^x."""
        return self.doprint(sp.exp(sp.Symbol("x"))).split("(")[0]

    @property
    def log_name(self) -> str:
        """The C function this printer calls for ln x."""
        return self.doprint(sp.log(sp.Symbol("x"))).split("(")[0]

    def _print_Pow(self, expr: sp.Pow) -> str:
        base, exp = expr.base, expr.exp
        if exp.is_Integer and 2 <= int(exp) <= 4:
            b = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Mul"])
            # parenthesized: sympy prints a Pow in a denominator unbracketed (a/(s*s), not a/s*s)
            return "(" + "*".join([b] * int(exp)) + ")"
        if exp == sp.Rational(-1, 2):
            return f"{self._print(sp.Float(1.0))}/{self._print(sp.sqrt(base))}"
        if exp == -1:
            one = self._print(sp.Float(1.0))
            return f"{one}/{self.parenthesize(base, sp.printing.precedence.PRECEDENCE['Pow'])}"
        if exp.is_Integer and -4 <= int(exp) <= -2:
            one = self._print(sp.Float(1.0))
            b = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Mul"])
            return f"{one}/({'*'.join([b] * -int(exp))})"
        return super()._print_Pow(expr)

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        # sympy guarantees one condition holds, so the last value is the fallback
        *pieces, (last_value, _) = expr.args
        text = self._print(last_value)
        for value, cond in reversed(pieces):
            text = f"(({self._print(cond)}) ? ({self._print(value)}) : ({text}))"
        return text

    def _print_BooleanTrue(self, expr: sp.Basic) -> str:
        # C99 spells true as 1 unless <stdbool.h> is included (conditions fold to it)
        return "1"

    def _print_BooleanFalse(self, expr: sp.Basic) -> str:
        return "0"

    def _print_Relational(self, expr: sp.Basic) -> str:
        lhs, rhs = self._print(expr.lhs), self._print(expr.rhs)
        return f"{lhs} {expr.rel_op} {rhs}"


def exp_form(expr: sp.Expr) -> sp.Expr:
    """tanh(a) as 2 / (1 + e^(-2a)) - 1: one exp, about 3x faster than libm's tanh, and
    exact to a unit in the last place of its absolute value (saturating to ±1, never NaN).
    With an inline exp the loop around it vectorizes."""
    return expr.replace(sp.tanh, lambda a: 2 / (1 + sp.exp(-2 * a)) - 1)


@functools.lru_cache(maxsize=4096)
def _cse(exprs: tuple[sp.Expr, ...], prefix: str) -> tuple[list, list]:
    """sympy's CSE, memoized: models of one process repeat the same expressions (every
    dense layer's epilogue, every parameter's update), and CSE is the costly part of
    printing them."""
    return sp.cse(
        list(exprs), symbols=sp.numbered_symbols(prefix, real=True), optimizations="basic"
    )


def cse_block(
    exprs: list[sp.Expr], printer: CPrinter, prefix: str = "t"
) -> tuple[list[tuple[str, str]], list[str]]:
    """(temporaries as (name, C text), printed results) after common-subexpression elimination."""
    replacements, reduced = _cse(tuple(exprs), prefix)
    temps = [(str(sym), printer.doprint(value)) for sym, value in replacements]
    return temps, [printer.doprint(e) for e in reduced]
