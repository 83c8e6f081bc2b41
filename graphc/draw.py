"""DOT drawings of a graph: the forward nodes and, when there is a loss, the δ nodes."""

from __future__ import annotations


def graph_dot(graph) -> str:
    """DOT text of the forward graph and, when there is a loss, the δ nodes (orange)."""
    from graphc.autodiff import differentiate

    lines = [f'digraph "{graph.name}" {{', "  rankdir=TB;", '  node [fontname="Helvetica"];']
    nodes = list(graph.nodes)
    backward = []
    if graph.loss is not None:
        backward = differentiate(graph).nodes
    ids = {n: f"n{k}" for k, n in enumerate(nodes + backward)}
    for n in nodes:
        shape = "box" if n.op.name in ("input", "param") else "ellipse"
        fill = (
            "lightblue"
            if n.op.name == "input"
            else "lightyellow"
            if n.op.name == "param"
            else "white"
        )
        lines.append(
            f'  {ids[n]} [label="{n.name}\\n{n.op.name} {n.shape}", shape={shape}, '
            f"style=filled, fillcolor={fill}];"
        )
    for n in backward:
        if n.op.name == "const":
            continue
        lines.append(
            f'  {ids[n]} [label="{n.name}\\n{n.op.name} {n.shape}", style="filled,dashed", '
            "fillcolor=orange];"
        )
    for n in nodes + backward:
        for x in n.inputs:
            if x in ids and x.op.name != "const":
                style = " [color=orange]" if n in backward else ""
                lines.append(f"  {ids[x]} -> {ids[n]}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"
