"""Shared test helpers: gradient checks by central differences, small reference graphs."""

from __future__ import annotations

from typing import Any

import numpy as np

import graphc as gc

#: step of the central differences (float64); the truncation error is O(EPS²)
EPS = 1e-5
#: largest relative error accepted between the two directional derivatives
RTOL = 1e-6


def _call(fn, inputs: Any):
    return fn(inputs) if isinstance(inputs, dict) else fn(*inputs)


def _loss_along(model: Any, inputs: Any, start: dict, direction: dict, step: float) -> float:
    """The loss with every parameter moved by ``step`` along ``direction``."""
    model.set_params({k: start[k] + step * d for k, d in direction.items()})
    return _call(model.evaluate, inputs)["loss"]


def directional_check(
    model: Any, inputs: Any, seed: int = 0, directions: int = 2, eps: float = EPS
) -> list[float]:
    """Compare Σ grad·dir with the central difference of the loss along random directions.

    Every trainable parameter moves along one random direction at once, so a swapped
    axis, a missing factor or a wrong sign in any gradient changes the result.  Returns
    the relative errors (each asserted < RTOL) and restores the parameters.
    """
    assert model.plan.dtype == "float64", "gradient checks need a float64 model"
    rng = np.random.default_rng(seed)
    grads = _call(model.gradients, inputs)
    assert grads, "the model has no trainable parameters"
    start = model.params
    errors = []
    try:
        for _ in range(directions):
            direction = {name: rng.normal(size=g.shape) for name, g in grads.items()}
            analytic = float(sum(np.sum(grads[k] * d) for k, d in direction.items()))

            numeric = (
                _loss_along(model, inputs, start, direction, eps)
                - _loss_along(model, inputs, start, direction, -eps)
            ) / (2 * eps)
            scale = max(abs(analytic), abs(numeric), 1e-8)
            error = abs(analytic - numeric) / scale
            assert error < RTOL, (
                f"directional derivative: analytic {analytic!r}, central difference {numeric!r} "
                f"(relative error {error:.2e})"
            )
            errors.append(error)
    finally:
        model.set_params(start)
    return errors


def mlp_graph(
    name: str,
    widths: list[int],
    activation: str = "tanh",
    out_activation: str = "sigmoid",
    loss: str = "mse",
) -> gc.Graph:
    """x (widths[0]) -> dense layers of widths[1:] -> loss against y."""
    g = gc.Graph(name)
    x = g.input("x", widths[0])
    y = g.input("y", widths[-1])
    h = x
    for k, width in enumerate(widths[1:-1]):
        h = gc.dense(h, width, activation=activation, name=f"hidden{k}" if k else "hidden")
    out = gc.dense(h, widths[-1], activation=out_activation, name="out")
    g.output("out", out)
    g.minimize(getattr(gc, loss)(out, y))
    return g


def verify(nodes: list, params: list | None = None) -> None:
    """Graph invariants: names unique, inputs before use, dtypes known, shapes positive.

    ``nodes`` is a graph's node list (or a backward pass's, whose inputs may come from
    the forward graph: those count as defined).
    """
    names: set[str] = set()
    defined = set()
    for node in nodes:
        assert node.name not in names, f"duplicate node name {node.name!r}"
        names.add(node.name)
        assert node.dtype in ("real", "int32"), f"{node.name}: dtype {node.dtype!r}"
        assert all(isinstance(s, int) and s > 0 for s in node.shape), node
        for x in node.inputs:
            same_graph = x.graph is node.graph
            assert x in defined or not same_graph, f"{node.name} reads {x.name} before it exists"
        defined.add(node)


def classifier_graph(name: str) -> gc.Graph:
    """A flatten -> relu -> softmax cross-entropy classifier on (3, 5) samples."""
    g = gc.Graph(name)
    x = g.input("x", (3, 5))
    labels = g.input("labels", (), dtype="int32")
    h = gc.dense(gc.flatten(x), 7, activation="relu", name="hidden")
    logits = gc.dense(h, 4, name="logits")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, labels))
    return g


def reductions_graph(name: str) -> gc.Graph:
    """Matmul, elu, division by a param, sum/mean over an axis, softmax and cross-entropy."""
    g = gc.Graph(name)
    x = g.input("x", (3, 5))
    t = g.input("t", 7)
    W = g.param("W", (5, 7))
    s = g.param("s", (7,), init=1.0)
    z = gc.elu(gc.matmul(x, W) / s)  # (3, 7)
    m = gc.mean(z, axis=0) + 0.1 * gc.sum(z * z, axis=0)
    probs = gc.softmax(m, name="probs")
    g.output("probs", probs)
    g.minimize(gc.cross_entropy(probs, t))
    return g
