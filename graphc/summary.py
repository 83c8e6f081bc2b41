"""``model.summary()``: layers, output shapes, parameter counts, memory and FLOPs."""

from __future__ import annotations

from typing import Any

from graphc.graph import shape_str
from graphc.ops.base import INPUT, PARAM
from graphc.ops.loss import ONE_HOT
from graphc.ops.shape import RESHAPE
from graphc.passes.cse import common_subexpressions


def _layer_of(node) -> str:
    """Nodes built by one layer call share the prefix before the first dot."""
    return node.name.split(".")[0]


def summary(model: Any) -> str:
    """A table of layers (output shape, parameters, forward FLOPs per sample) and totals."""
    graph, plan = model.graph, model.plan
    trainable = {pp.param.label for pp in plan.params if pp.trainable}
    rows: list[list[str]] = []
    layers: dict[str, dict[str, Any]] = {}
    rep = common_subexpressions(graph.nodes)
    for node in graph.nodes:
        if node.op in (INPUT, PARAM, RESHAPE, ONE_HOT) or rep[node] is not node:
            continue
        key = _layer_of(node)
        layer = layers.setdefault(key, {"ops": [], "params": 0, "flops": 0, "shape": ""})
        layer["ops"].append(node.op.name)
        layer["flops"] += node.op.flops(node)
        layer["shape"] = shape_str(node)
    for p in graph.params:
        layers.setdefault(_layer_of(p), {"ops": [], "params": 0, "flops": 0, "shape": ""})
        layers[_layer_of(p)]["params"] += p.size
    for x in graph.inputs:
        rows.append([x.name, "input", shape_str(x), "0", "0"])
    for name, layer in layers.items():
        ops = ", ".join(dict.fromkeys(layer["ops"]))
        rows.append([name, ops, layer["shape"], f"{layer['params']:,}", f"{layer['flops']:,}"])
    header = ["layer", "ops", "output shape", "params", "FLOPs/sample"]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    text = [
        f"Model {plan.graph_name!r} ({plan.dtype}, batch {plan.batch})",
        line,
        "  ".join(h.ljust(w) for h, w in zip(header, widths)),
        line,
    ]
    for r in rows:
        text.append(
            "  ".join(
                c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
            )
        )
    total_params = sum(p.size for p in graph.params)
    n_trainable = sum(p.size for p in graph.params if p.name in trainable)
    flops = sum(layer["flops"] for layer in layers.values())
    memory = plan.memory
    text += [
        line,
        f"parameters: {total_params:,} ({n_trainable:,} trainable)",
        f"forward FLOPs per sample: {flops:,} (a training step costs about 3x that)",
        f"arena: {memory.arena_bytes:,} bytes ({memory.persistent_bytes:,} persistent: "
        "parameters, gradients, optimizer state, batch slots; the rest shared by activations "
        "by liveness)",
    ]
    return "\n".join(text)
