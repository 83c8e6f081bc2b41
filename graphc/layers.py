"""Layers: small functions that create named parameters and ops together."""

from __future__ import annotations

from typing import Any

from graphc.errors import GraphError
from graphc.graph import Node
from graphc.ops.base import as_node
from graphc.ops.elementwise import activate, apply, get_activation
from graphc.ops.linalg import make_matmul
from graphc.symbolic import X


def dense(
    x: Node,
    units: int,
    activation: Any = None,
    name: str | None = None,
    init: Any = "glorot",
    bias: bool = True,
    trainable: bool = True,
) -> Node:
    """O = f(x · W + b) on the last axis; creates params ``NAME.W`` (in, units) and ``NAME.b``.

    The result node is named ``NAME``; the pre-activation is ``NAME.z``.
    """
    x = as_node(x, "dense")
    if not isinstance(units, int) or units <= 0:
        raise GraphError(f"dense: units must be a positive integer, got {units!r}")
    g = x.graph
    act = get_activation(activation)
    name = name or g.unique_name("dense")
    if not x.shape:
        raise GraphError(f"dense {name!r}: the input {x.describe()} needs at least one axis")
    W = g.param(f"{name}.W", (x.shape[-1], units), init=init, trainable=trainable)
    has_act = act.name != "identity"
    xw_name = f"{name}.xW" if (bias or has_act) else name
    pre = {"layer": name}
    z = make_matmul(x, W, name=xw_name, attrs=None if bias else pre)
    if bias:
        b = g.param(f"{name}.b", (units,), init="zeros", trainable=trainable)
        z_name = f"{name}.z" if has_act else name
        z = apply("add", X[0] + X[1], [z, b], name=z_name, attrs=pre)
    out = activate(z, act, name=name) if has_act else z
    return out
