"""The DSL (graphc/graph.py, graphc/ops/): shape inference and its errors at construction."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from helpers import mlp_graph, verify
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.autodiff import differentiate


def _line() -> int:
    """The caller's current line number."""
    return inspect.currentframe().f_back.f_lineno


def _where(line: int) -> str:
    return f"test_graph.py:{line}"


@pytest.fixture
def g():
    return gc.Graph("shapes")


def test_shapes_are_inferred(g):
    x = g.input("x", (3, 5))
    W = g.param("W", (5, 7))
    b = g.param("b", (7,))
    z = gc.matmul(x, W) + b
    assert z.shape == (3, 7) and z.batched
    assert gc.sum(z, axis=0).shape == (7,)
    assert gc.mean(z).shape == ()
    assert gc.mean(z, batch=True).shape == () and not gc.mean(z, batch=True).batched
    assert gc.flatten(z).shape == (21,)
    assert gc.softmax(z).shape == (3, 7)
    assert gc.reshape(z, (7, 3)).shape == (7, 3)
    h = gc.dense(gc.flatten(x), 4, activation="relu", name="hidden")
    assert h.shape == (4,) and h.name == "hidden"
    assert g.node("hidden.W").shape == (15, 4)
    assert g.node("hidden.b").shape == (4,)


def test_matmul_inner_size_error_names_both_and_the_line(g):
    x = g.input("x", 3)
    W = g.param("W", (5, 7))
    line = _line()
    with pytest.raises(gc.ShapeError) as info:
        gc.matmul(x, W)
    message = str(info.value)
    assert "'x'" in message and "'W'" in message
    assert "(batch, 3)" in message and "(5, 7)" in message
    assert _where(line + 2) in message


def test_dense_shape_error_names_the_layer(g):
    x = g.input("x", (3, 5))
    W = g.param("W", (3, 7))
    line = _line()
    with pytest.raises(gc.ShapeError) as info:
        gc.matmul(x, W, name="proj")
    message = str(info.value)
    assert "'proj'" in message and "(batch, 3, 5)" in message and "(3, 7)" in message
    assert _where(line + 2) in message


def test_broadcast_error_names_both_and_the_line(g):
    x = g.input("x", 3)
    s = g.param("s", (5,))
    line = _line()
    with pytest.raises(gc.ShapeError) as info:
        x * s  # noqa: B018
    message = str(info.value)
    assert "'x' (batch, 3)" in message and "'s' (5,)" in message
    assert _where(line + 2) in message


def test_param_with_more_axes_than_the_sample_is_rejected(g):
    x = g.input("x", 5)
    with pytest.raises(gc.ShapeError, match="do not broadcast"):
        x + g.param("m", (3, 5))


def test_loss_target_error_names_both_and_the_line(g):
    x = g.input("x", 3)
    y = g.input("y", 5)
    out = gc.dense(x, 7, name="out")
    line = _line()
    with pytest.raises(gc.ShapeError) as info:
        gc.mse(out, y)
    message = str(info.value)
    assert "'y'" in message and "(batch, 5)" in message
    assert "'out'" in message and "(batch, 7)" in message
    assert _where(line + 2) in message


def test_integer_labels_error(g):
    x = g.input("x", 3)
    labels = g.input("labels", 2, dtype="int32")
    logits = gc.dense(x, 7, name="logits")
    line = _line()
    with pytest.raises(gc.ShapeError) as info:
        gc.softmax_cross_entropy(logits, labels)
    message = str(info.value)
    assert "'labels'" in message and "(batch, 2)" in message and "(batch, 7)" in message
    assert _where(line + 2) in message
    with pytest.raises(gc.ShapeError, match="integer labels"):
        gc.mse(logits, g.input("int_y", 7, dtype="int32"))


def test_reshape_error(g):
    x = g.input("x", (3, 5))
    line = _line()
    with pytest.raises(gc.ShapeError) as info:
        gc.reshape(x, (4, 4))
    message = str(info.value)
    assert "'x'" in message and "15 elements" in message and "(4, 4)" in message
    assert _where(line + 2) in message


def test_reduce_axis_out_of_range(g):
    x = g.input("x", (3, 5))
    with pytest.raises(gc.ShapeError, match="axis 2 is out of range for 'x'"):
        gc.sum(x, axis=2)


def test_shape_must_be_positive(g):
    with pytest.raises(gc.ShapeError, match="positive"):
        g.input("x", (3, 0))
    with pytest.raises(gc.ShapeError, match="positive"):
        g.param("W", "abc")


def test_names_are_unique_and_valid(g):
    g.input("x", 3)
    with pytest.raises(gc.GraphError, match="already used"):
        g.param("x", (3,))
    with pytest.raises(gc.GraphError, match="must start with a letter"):
        g.param("3W", (3,))
    with pytest.raises(gc.GraphError, match="identifier"):
        gc.Graph("my model")


def test_auto_names_do_not_clash(g):
    x = g.input("x", 3)
    a = gc.tanh(x)
    b = gc.tanh(x)
    c = gc.tanh(x, name="tanh_2")
    d = gc.tanh(x)
    assert len({a.name, b.name, c.name, d.name}) == 4


def test_nodes_are_immutable(g):
    x = g.input("x", 3)
    with pytest.raises(AttributeError):
        x.shape = (4,)


def test_nodes_of_two_graphs_do_not_mix(g):
    other = gc.Graph("other")
    x = g.input("x", 3)
    y = other.input("y", 3)
    with pytest.raises(gc.GraphError, match="belongs to graph"):
        x + y
    with pytest.raises(gc.GraphError, match="belongs to graph"):
        other.output("x", x)


def test_minimize_needs_a_scalar(g):
    x = g.input("x", 3)
    with pytest.raises(gc.GraphError, match="scalar loss"):
        g.minimize(gc.tanh(x))


def test_output_checks(g):
    x = g.input("x", 3)
    W = g.param("W", (3, 3))
    with pytest.raises(gc.GraphError, match="no batch axis"):
        g.output("W", W)
    g.output("out", gc.tanh(x))
    with pytest.raises(gc.GraphError, match="declared twice"):
        g.output("out", gc.sigmoid(x))


def test_an_input_cannot_be_an_output(g):
    x = g.input("x", (3, 5))
    with pytest.raises(gc.GraphError, match="input 'x'.*gc.identity"):
        g.output("x", x)
    with pytest.raises(gc.GraphError, match="input 'x'"):
        g.output("flat", gc.flatten(x))
    g.output("copy", gc.identity(gc.flatten(x)))


def test_integer_inputs_need_one_hot_for_arithmetic(g):
    labels = g.input("labels", (), dtype="int32")
    with pytest.raises(gc.GraphError, match="one_hot"):
        labels * 2.0


def test_unknown_activation_lists_the_known_ones(g):
    x = g.input("x", 3)
    with pytest.raises(gc.GraphError, match="known: .*sigmoid"):
        gc.dense(x, 4, activation="sigmoidd")


def test_differentiate_builds_a_valid_separate_graph():
    g = mlp_graph("verify", [3, 5, 7])
    before = list(g.nodes)
    backward = differentiate(g)
    assert g.nodes == before, "the δ pass must not modify the user's graph"
    verify(g.nodes)
    verify(backward.nodes)
    assert {p.name for p in backward.grads} == {"hidden.W", "hidden.b", "out.W", "out.b"}
    for param, grad in backward.grads.items():
        assert grad.shape == param.shape and not grad.batched
    # every backward node contributes to some gradient
    needed = set()
    stack = list(backward.grads.values())
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        stack.extend(node.inputs)
    unused = [n.name for n in backward.nodes if n not in needed and n is not backward.seed]
    assert not unused


def test_differentiate_without_loss_or_trainable_params():
    g = gc.Graph("no_loss")
    x = g.input("x", 3)
    g.output("y", gc.dense(x, 5))
    with pytest.raises(gc.GraphError, match="minimize"):
        differentiate(g)
    g2 = gc.Graph("frozen_all")
    x = g2.input("x", 3)
    y = g2.input("y", 5)
    g2.minimize(gc.mse(gc.dense(x, 5, trainable=False), y))
    with pytest.raises(gc.GraphError, match="no trainable parameter"):
        differentiate(g2)


# --- broadcasting, against NumPy ---------------------------------------------------------------
_shape = st.lists(st.sampled_from([1, 3, 5, 7]), min_size=0, max_size=3).map(tuple)


@settings(max_examples=60, deadline=None)
@given(a=_shape, b=_shape, b_is_param=st.booleans())
def test_broadcasting_matches_numpy(a, b, b_is_param):
    g = gc.Graph("bcast")
    x = g.input("x", a) if a else g.input("x", 1)
    a = x.shape
    if b_is_param:
        y = g.param("p", b) if b else g.param("p", (1,))
    else:
        y = g.input("y", b) if b else g.input("y", 1)
    b = y.shape
    try:
        expected = np.broadcast_shapes(a, b)
    except ValueError:
        expected = None
    if b_is_param and len(b) > len(a):
        expected = None  # a parameter's extra axes would meet the batch axis
    if expected is None:
        with pytest.raises(gc.ShapeError):
            x + y
        return
    z = x + y
    assert z.shape == expected and z.batched
    verify(g.nodes)
