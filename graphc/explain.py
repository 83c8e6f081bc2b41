"""Human-readable δ recurrences: what the δ pass derived, per layer and per parameter."""

from __future__ import annotations

import re

import sympy as sp
from sympy.printing.str import StrPrinter

from graphc.autodiff import differentiate
from graphc.graph import Graph, Node
from graphc.ops.elementwise import ELEMENTWISE
from graphc.ops.loss import ONE_HOT
from graphc.ops.reduce import REDUCE_TO
from graphc.passes.cse import common_subexpressions
from graphc.symbolic import X


def display(node: Node) -> str:
    """δ[layer] for a layer's error term, ∂E/∂x for other gradients, the name otherwise."""
    name = node.name
    if name.startswith("delta_"):
        return f"δ[{name[len('delta_') :]}]"
    if name.startswith("grad_"):
        return f"∂E/∂{name[len('grad_') :]}"
    if name.startswith("d_"):
        return f"∂E/∂{name[len('d_') :]}"
    if node.op is ONE_HOT:
        return node.inputs[0].name
    return name


class _Printer(StrPrinter):
    """sympy's str printer with piecewise values written as 'a if cond else b'."""

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        *pieces, (last, _) = expr.args
        text = self._print(last)
        for value, cond in reversed(pieces):
            text = f"{self._print(value)} if {self._print(cond)} else {text}"
        return f"({text})"


def _pretty(text: str) -> str:
    text = re.sub(r"\*\*2\b", "²", text)
    text = re.sub(r"\*\*3\b", "³", text)
    return text.replace("*", " ⊙ ")


def _formula(node: Node, inline: set[Node], rep: dict[Node, Node]) -> str:
    args = []
    for x in node.inputs:
        x = rep.get(x, x)
        if x in inline:
            args.append(f"({_formula(x, inline, rep)})")
        else:
            args.append(display(x))
    if node.op is ELEMENTWISE:
        names = {X[i]: sp.Symbol(a) for i, a in enumerate(args)}
        return _pretty(_Printer().doprint(node.attrs["expr"].xreplace(names)))
    if node.op is REDUCE_TO:
        return f"Σ_batch {args[0]}" if not node.batched else node.op.formula(node, args)
    return node.op.formula(node, args)


def explain(graph: Graph, frozen: set[str] | None = None) -> str:
    """The δ equations of ``graph`` (which must have a loss) as text, one per line."""
    backward = differentiate(graph, frozen)
    rep = common_subexpressions(graph.nodes + backward.nodes)
    uses: dict[Node, int] = {}
    for node in backward.nodes:
        for x in node.inputs:
            uses[x] = uses.get(x, 0) + 1
    # gradients with respect to activations are shown inside the δ that consumes them
    inline = {n for n in backward.nodes if n.name.startswith("d_") and uses.get(n, 0) == 1}
    lines = [
        f"δ pass of graph {graph.name!r}: E = {graph.loss.name}, mean over the batch (n rows)",
        "",
        "error terms:",
    ]
    for node in backward.nodes:
        if node.name.startswith("delta_") and not node.name.endswith("_part"):
            # a recurrence over time names its step: δ[h]ᵗ = … δ[h]ᵗ⁺¹ …
            index = node.attrs.get("index", "")
            lines.append(f"  {display(node)}{index} = {_formula(node, inline, rep)}")
    lines += ["", "parameter gradients:"]
    for param, grad in backward.grads.items():
        lines.append(f"  ∂E/∂{param.name} = {_formula(grad, inline, rep)}")
    return "\n".join(lines) + "\n"


def _latex_line(text: str) -> str:
    text = re.sub(r"δ\[([^\]]+)\]", lambda m: r"\delta^{[\mathrm{" + m.group(1) + "}]}", text)
    text = re.sub(
        r"∂E/∂([A-Za-z0-9_.]+)",
        lambda m: r"\frac{\partial E}{\partial \mathrm{" + m.group(1) + "}}",
        text,
    )
    replacements = {
        "⊙": r"\odot",
        "·": r"\cdot",
        "ᵀ": r"^{\top}",
        "²": "^{2}",
        "³": "^{3}",
        "Σ_batch": r"\sum_{\mathrm{batch}}",
        "_": r"\_",
    }
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text.replace(r"\_{", "_{").replace(r"\mathrm{", r"\mathrm{")


def explain_latex(graph: Graph, frozen: set[str] | None = None) -> str:
    """The δ equations as a LaTeX ``align*`` environment."""
    lines = [
        line.strip()
        for line in explain(graph, frozen).splitlines()
        if line.strip().startswith(("δ[", "∂E"))
    ]
    body = " \\\\\n".join("  " + _latex_line(line).replace(" = ", " &= ", 1) for line in lines)
    return "\\begin{align*}\n" + body + "\n\\end{align*}\n"
