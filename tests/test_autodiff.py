"""The δ pass (graphc/autodiff.py): gradients checked by central differences in float64.

Every activation, loss and op of the DSL is differentiated through a compiled float64
model and compared, along random directions in parameter space, with the central
difference of the loss the model's own evaluate() computes.  Sizes per axis are distinct
(3, 5, 7) so that a swapped axis cannot pass.

Domains (keep away from kinks and singularities):

    op                    domain used here
    relu, leaky, elu      pre-activations from random data: |z| > 1e-5 almost surely
    log                   argument sigmoid(.) + 0.5 > 0
    div                   divisor param initialised to 1.5 (far from 0)
    bce / cross-entropy   probabilities from sigmoid / softmax of O(1) logits
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy
from helpers import directional_check

import graphc as gc
from graphc.autodiff import differentiate

pytestmark = pytest.mark.needs_cc

N_IN, N_HID, N_OUT = 3, 5, 7
ROWS = 6


def _data(seed: int = 0, classes: int = N_OUT):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, N_IN))
    y = rng.uniform(0.05, 0.95, size=(ROWS, N_OUT))
    labels = rng.integers(0, classes, size=ROWS)
    onehot = np.eye(classes)[labels]
    return x, y, labels, onehot


def _compile(g: gc.Graph):
    """A float64 model (central differences need the precision)."""
    return gc.compile(g, dtype="float64", batch_size=8, seed=3)


# --- activations ----------------------------------------------------------------------------
SWISH = gc.activation("swish", lambda I: I / (1 + sympy.exp(-I)))

ACTIVATIONS = {
    "sigmoid": gc.sigmoid,
    "tanh": gc.tanh,
    "relu": gc.relu,
    "leaky_relu": gc.leaky_relu,
    "leaky_relu_0.2": lambda z, name=None: gc.leaky_relu(z, alpha=0.2, name=name),
    "elu": gc.elu,
    "elu_0.5": lambda z, name=None: gc.elu(z, alpha=0.5, name=name),
    "softplus": gc.softplus,
    "identity": gc.identity,
    "swish": lambda z, name=None: gc.ops.elementwise.activate(z, SWISH, name=name),
}


def _activation_graph(key: str) -> gc.Graph:
    """The activation both in a hidden layer (its own f') and at the output (f' fused with
    the loss's δ)."""
    f = ACTIVATIONS[key]
    g = gc.Graph("act_" + key.replace(".", "_"))
    x = g.input("x", N_IN)
    y = g.input("y", N_OUT)
    W1 = g.param("W1", (N_IN, N_HID), init=("normal", 1.0))
    b1 = g.param("b1", (N_HID,), init=("normal", 0.5))
    W2 = g.param("W2", (N_HID, N_OUT), init=("normal", 1.0))
    b2 = g.param("b2", (N_OUT,), init=("normal", 0.5))
    h = f(gc.matmul(x, W1) + b1, name="hidden")
    out = f(gc.matmul(h, W2) + b2, name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    return g


@pytest.mark.parametrize("key", list(ACTIVATIONS))
def test_activation_gradients(key):
    model = _compile(_activation_graph(key))
    x, y, _, _ = _data(1)
    directional_check(model, (x, y), seed=2)


# --- losses ---------------------------------------------------------------------------------
def _loss_graph(kind: str, int_labels: bool) -> gc.Graph:
    g = gc.Graph(f"loss_{kind}_{'int' if int_labels else 'float'}")
    x = g.input("x", N_IN)
    y = g.input("y", (), dtype="int32") if int_labels else g.input("y", N_OUT)
    h = gc.dense(x, N_HID, activation="tanh", name="hidden")
    logits = gc.dense(h, N_OUT, name="logits")
    if kind == "mse":
        out = logits
        loss = gc.mse(out, y)
    elif kind == "binary_cross_entropy":
        out = gc.sigmoid(logits, name="probs")
        loss = gc.binary_cross_entropy(out, y)
    elif kind == "sigmoid_binary_cross_entropy":
        out = logits
        loss = gc.sigmoid_binary_cross_entropy(logits, y)
    elif kind == "cross_entropy":
        out = gc.softmax(logits, name="probs")
        loss = gc.cross_entropy(out, y)
    elif kind == "softmax_cross_entropy":
        out = logits
        loss = gc.softmax_cross_entropy(logits, y)
    else:
        raise AssertionError(kind)
    g.output("out", out)
    g.minimize(loss)
    return g


LOSS_CASES = [
    ("mse", False),
    ("binary_cross_entropy", False),
    ("sigmoid_binary_cross_entropy", False),
    ("cross_entropy", True),
    ("cross_entropy", False),
    ("softmax_cross_entropy", True),
    ("softmax_cross_entropy", False),
]


def _reference_loss(kind: str, logits: np.ndarray, target: np.ndarray) -> float:
    """The loss in NumPy, from the logits: mean over rows of the sum over units."""
    sig = 1 / (1 + np.exp(-logits))
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    if kind == "mse":
        per = 0.5 * (target - logits) ** 2
    elif kind in ("binary_cross_entropy", "sigmoid_binary_cross_entropy"):
        per = -(target * np.log(sig) + (1 - target) * np.log(1 - sig))
    else:
        per = -target * np.log(soft)
    return float(per.sum(axis=1).mean())


@pytest.mark.parametrize("kind,int_labels", LOSS_CASES)
def test_loss_gradients(kind, int_labels):
    model = _compile(_loss_graph(kind, int_labels))
    x, y, labels, onehot = _data(4)
    if int_labels:
        target = labels
    elif "cross_entropy" in kind and "binary" not in kind:
        target = onehot
    else:
        target = y
    directional_check(model, (x, target), seed=5)
    # the forward loss itself against NumPy, from the model's own logits
    p = model.params
    h = np.tanh(x @ p["hidden.W"] + p["hidden.b"])
    logits = h @ p["logits.W"] + p["logits.b"]
    dense_target = onehot if int_labels else target
    expected = _reference_loss(kind, logits, dense_target)
    assert model.evaluate(x, target)["loss"] == pytest.approx(expected, rel=1e-12)


def test_softmax_cross_entropy_with_soft_targets():
    """Targets that are distributions (not one-hot) still give δ = O − T."""
    model = _compile(_loss_graph("softmax_cross_entropy", False))
    x, _, _, _ = _data(6)
    rng = np.random.default_rng(7)
    soft = rng.dirichlet(np.ones(N_OUT), size=ROWS)
    directional_check(model, (x, soft), seed=8)


# --- arithmetic, reductions, matmul ----------------------------------------------------------
def _arith_graph(op: str) -> gc.Graph:
    g = gc.Graph(f"arith_{op}")
    x = g.input("x", N_IN)
    y = g.input("y", N_OUT)
    h = gc.dense(x, N_HID, activation="tanh", name="hidden")
    s = g.param("s", (N_HID,), init=1.5)
    if op == "add":
        z = h + s
    elif op == "sub":
        z = s - h
    elif op == "mul":
        z = h * s
    elif op == "div":
        z = h / s
    elif op == "rdiv":
        z = 1.0 / (gc.sigmoid(h) + s)
    elif op == "scalars":
        z = 2.0 * h - 0.5 + h / 3.0 - s
    elif op == "neg_square":
        z = -gc.square(h) + s
    elif op == "exp_log":
        z = gc.exp(h) * s + gc.log(gc.sigmoid(h) + 0.5)
    elif op == "scale_1":
        z = h * g.param("c", (1,), init=0.7) + s
    else:
        raise AssertionError(op)
    out = gc.dense(z, N_OUT, name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    return g


@pytest.mark.parametrize(
    "op", ["add", "sub", "mul", "div", "rdiv", "scalars", "neg_square", "exp_log", "scale_1"]
)
def test_arithmetic_gradients(op):
    model = _compile(_arith_graph(op))
    x, y, _, _ = _data(9)
    directional_check(model, (x, y), seed=10)


def test_matmul_sum_mean_on_rank2_samples():
    """Samples of shape (3, 5): matmul on the last axis, then mean and sum over axis 0."""
    g = gc.Graph("rank2")
    x = g.input("x", (3, 5))
    y = g.input("y", 7)
    W = g.param("W", (5, 7), init=("normal", 0.5))
    b = g.param("b", (7,), init=("normal", 0.5))
    z = gc.tanh(gc.matmul(x, W) + b)  # (3, 7)
    m = gc.mean(z, axis=0)  # (7,)
    s = gc.sum(z * z, axis=0)  # (7,)
    out = m + 0.1 * s
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    model = _compile(g)
    rng = np.random.default_rng(11)
    xs = rng.normal(size=(ROWS, 3, 5))
    ys = rng.normal(size=(ROWS, 7))
    directional_check(model, (xs, ys), seed=12)
    # forward against NumPy
    p = model.params
    zz = np.tanh(xs @ p["W"] + p["b"])
    expected = zz.mean(axis=1) + 0.1 * (zz * zz).sum(axis=1)
    np.testing.assert_allclose(model.predict(xs), expected, rtol=1e-12)


def test_sum_and_mean_over_all_axes():
    """gc.sum / gc.mean of a whole sample feed a per-sample scalar into the output."""
    g = gc.Graph("reduce_all")
    x = g.input("x", N_IN)
    y = g.input("y", N_OUT)
    h = gc.dense(x, N_HID, activation="tanh", name="hidden")
    total = gc.sum(h)  # () per sample
    avg = gc.mean(h * h)
    # a parameter may not have more axes than the batched operand: give the sum one axis
    u = g.param("u", (N_OUT,), init=("normal", 1.0))
    out = gc.dense(h, N_OUT, name="out") + gc.reshape(total, (1,)) * u
    out = out - avg
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    model = _compile(g)
    x_, y_, _, _ = _data(13)
    directional_check(model, (x_, y_), seed=14)


def test_matmul_with_a_param():
    g = gc.Graph("matmul_param")
    x = g.input("x", N_IN)
    y = g.input("y", N_OUT)
    W = g.param("W", (N_IN, N_OUT), init=("normal", 1.0))
    out = gc.matmul(x, W)
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    model = _compile(g)
    x_, y_, _, _ = _data(15)
    directional_check(model, (x_, y_), seed=16)
    # the gradient itself in closed form: Xᵀ (XW − Y) / n
    grad = model.gradients(x_, y_)["W"]
    W_ = model.params["W"]
    np.testing.assert_allclose(grad, x_.T @ (x_ @ W_ - y_) / ROWS, rtol=1e-12)


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_deep_mlp(activation):
    g = gc.Graph(f"deep_{activation}")
    x = g.input("x", N_IN)
    y = g.input("y", (), dtype="int32")
    h = gc.dense(x, N_HID, activation=activation, name="h1", init=("normal", 0.8))
    h = gc.dense(h, N_OUT, activation=activation, name="h2", init=("normal", 0.8))
    h = gc.dense(h, 4, activation=activation, name="h3", init=("normal", 0.8))
    logits = gc.dense(h, N_HID, name="logits")
    g.output("logits", logits)
    g.minimize(gc.softmax_cross_entropy(logits, y))
    model = _compile(g)
    x_, _, labels, _ = _data(17, classes=N_HID)
    directional_check(model, (x_, labels), seed=18)


def test_bias_gradients_on_both_sides_of_the_column_block():
    """Bias gradients sum δ's columns in blocks (REDUCE_BLOCK wide): a layer narrower than
    a block, one a whole number of blocks wide and one with a partial last block."""
    from graphc.codegen.c import REDUCE_BLOCK

    widths = [N_IN, REDUCE_BLOCK * 2 + 5, REDUCE_BLOCK, 5]
    g = gc.Graph("bias_blocks")
    x = g.input("x", N_IN)
    y = g.input("y", widths[-1])
    h = x
    for k, width in enumerate(widths[1:]):
        h = gc.dense(h, width, activation="tanh", name=f"d{k}", init=("normal", 0.5))
    g.minimize(gc.mse(h, y))
    model = _compile(g)
    rng = np.random.default_rng(5)
    inputs = (rng.normal(size=(ROWS, N_IN)), rng.normal(size=(ROWS, widths[-1])))
    directional_check(model, inputs, seed=6)
    # the last layer's bias gradient is its δ summed over the rows, exactly
    grads = model.gradients(*inputs)
    W, b = model.params["d2.W"], model.params["d2.b"]
    h1 = np.tanh(np.tanh(inputs[0] @ model.params["d0.W"] + model.params["d0.b"])
                 @ model.params["d1.W"] + model.params["d1.b"])  # fmt: skip
    out = np.tanh(h1 @ W + b)
    delta = (out - inputs[1]) / ROWS * (1 - out**2)  # mse: batch mean of ½ Σ (t − o)²
    np.testing.assert_allclose(grads["d2.b"], delta.sum(axis=0), rtol=1e-10)


def test_node_used_twice_accumulates_delta():
    """A skip connection and a product of a node with itself: δ's of both uses are summed."""
    g = gc.Graph("skip")
    x = g.input("x", N_IN)
    y = g.input("y", N_OUT)
    h = gc.dense(x, N_HID, activation="tanh", name="hidden")
    h2 = gc.dense(h, N_HID, activation="sigmoid", name="inner")
    z = h + h2 + h * h  # h is read three times
    out = gc.dense(z, N_OUT, name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    backward = differentiate(g)
    assert any(n.attrs.get("label") == "sum_deltas" for n in backward.nodes)
    model = _compile(g)
    x_, y_, _, _ = _data(19)
    directional_check(model, (x_, y_), seed=20)


def test_shared_weight_accumulates_gradient():
    """One parameter matrix used by two layers (tied weights)."""
    g = gc.Graph("tied")
    x = g.input("x", N_HID)
    y = g.input("y", N_HID)
    W = g.param("W", (N_HID, N_HID), init=("normal", 0.7))
    h = gc.tanh(gc.matmul(x, W))
    out = gc.matmul(h, W)
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    model = _compile(g)
    rng = np.random.default_rng(21)
    directional_check(model, (rng.normal(size=(ROWS, N_HID)), rng.normal(size=(ROWS, N_HID))))


def test_frozen_parameter_gets_no_gradient():
    g = gc.Graph("frozen")
    x = g.input("x", N_IN)
    y = g.input("y", N_OUT)
    h = gc.dense(x, N_HID, activation="tanh", name="hidden")
    out = gc.dense(h, N_OUT, name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    model = gc.compile(g, dtype="float64", batch_size=8, frozen={"hidden.W", "hidden.b"})
    x_, y_, _, _ = _data(22)
    grads = model.gradients(x_, y_)
    assert set(grads) == {"out.W", "out.b"}
    directional_check(model, (x_, y_), seed=23)


# --- non-differentiable activations -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["step", "sign"])
def test_step_and_sign_predict(kind):
    g = gc.Graph(f"thresh_{kind}")
    x = g.input("x", N_IN)
    W = g.param("W", (N_IN, N_HID), init=("normal", 1.0))
    out = getattr(gc, kind)(gc.matmul(x, W), name="out")
    g.output("out", out)
    model = gc.compile(g, dtype="float64")
    x_, _, _, _ = _data(24)
    z = x_ @ model.params["W"]
    expected = (z > 0).astype(float) if kind == "step" else np.where(z >= 0, 1.0, -1.0)
    np.testing.assert_array_equal(model.predict(x_), expected)


@pytest.mark.parametrize("kind", ["step", "sign"])
def test_step_and_sign_are_not_differentiable(kind):
    g = gc.Graph(f"thresh_train_{kind}")
    x = g.input("x", N_IN)
    y = g.input("y", N_OUT)
    h = gc.dense(x, N_HID, activation=kind, name="hidden")
    out = gc.dense(h, N_OUT, name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    with pytest.raises(gc.NotDifferentiableError) as info:
        differentiate(g)
    message = str(info.value)
    assert "'hidden'" in message
    assert kind in message
    assert "derivative is zero almost everywhere" in message
    assert "test_autodiff.py" in message  # the user's line of the offending node
    with pytest.raises(gc.NotDifferentiableError):
        gc.compile(g)
    # nothing to differentiate through when the step only feeds frozen parts: fine
    model = gc.compile(g, dtype="float64", frozen={"hidden.W", "hidden.b"})
    x_, y_, _, _ = _data(25)
    directional_check(model, (x_, y_), seed=26)


def test_per_position_labels_on_rank2_samples():
    """Samples of 4 positions with 7 classes each: int labels (batch, 4) one-hot inside kernels."""
    g = gc.Graph("positions")
    x = g.input("x", (4, N_IN))
    labels = g.input("labels", 4, dtype="int32")
    W = g.param("W", (N_IN, N_OUT), init=("normal", 1.0))
    b = g.param("b", (N_OUT,), init=("normal", 0.3))
    logits = gc.matmul(x, W) + b
    g.output("logits", logits)
    g.minimize(gc.softmax_cross_entropy(logits, labels))
    model = _compile(g)
    rng = np.random.default_rng(27)
    xs = rng.normal(size=(ROWS, 4, N_IN))
    ys = rng.integers(0, N_OUT, size=(ROWS, 4))
    directional_check(model, (xs, ys), seed=28)
    logits_ = model.predict(xs)
    shifted = logits_ - logits_.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, ys[..., None], axis=-1).sum(axis=(1, 2)).mean()
    result = model.evaluate(xs, ys)
    assert result["loss"] == pytest.approx(expected, rel=1e-12)
    assert result["accuracy"] == pytest.approx(np.mean(logits_.argmax(axis=-1) == ys))


def test_float32_gradients_agree_with_float64():
    """The float32 rendering (expf, 1.0F constants) computes the same gradients."""
    g = gc.Graph("single")
    x = g.input("x", N_IN)
    y = g.input("y", 4)
    h = gc.dense(x, N_HID, activation="elu", name="hidden")
    out = gc.dense(h, 4, activation="softplus", name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    single = gc.compile(g, dtype="float32", batch_size=8, seed=1)
    double = gc.compile(g, dtype="float64", batch_size=8, seed=1)
    double.set_params(single.params)
    x_, _, _, _ = _data(29)
    y_ = np.random.default_rng(30).normal(size=(ROWS, 4))
    g32, g64 = single.gradients(x_, y_), double.gradients(x_, y_)
    for name, value in g64.items():
        np.testing.assert_allclose(g32[name], value, rtol=1e-4, atol=1e-5 * np.abs(value).max())


def test_identical_subgraphs_are_shared_and_differentiated():
    """Two identical tanh(x · W) are one tensor after CSE; both uses still get their δ."""
    g = gc.Graph("cse")
    x = g.input("x", N_IN)
    y = g.input("y", N_OUT)
    W = g.param("W", (N_IN, N_HID), init=("normal", 1.0))
    h1 = gc.tanh(gc.matmul(x, W))
    h2 = gc.tanh(gc.matmul(x, W))
    out = gc.dense(h1 * h2 + h1, N_OUT, name="out", bias=False, activation="sigmoid")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    model = _compile(g)
    x_, y_, _, _ = _data(31)
    directional_check(model, (x_, y_), seed=32)
    p = model.params
    h = np.tanh(x_ @ p["W"])
    expected = 1 / (1 + np.exp(-((h * h + h) @ p["out.W"])))
    np.testing.assert_allclose(model.predict(x_), expected, rtol=1e-12)
    infer = model.plan.programs[0]
    assert infer.name == "infer"
    assert len(infer.kernels) == 2  # one GEMM (+ tanh, product, sum), one GEMM (+ sigmoid)


def test_dense_on_one_hot_is_a_row_lookup():
    """dense(one_hot(ids)) computes W[ids] + b, with gradients, and builds no one-hot tensor."""
    g = gc.Graph("onehot_dense")
    ids = g.input("ids", (3,), dtype="int32")
    y = g.input("y", (3,), dtype="int32")
    h = gc.dense(gc.one_hot(ids, 5), 4, activation="tanh", name="h")
    o = gc.dense(h, 5, name="o")
    g.output("p", gc.softmax(o))
    g.minimize(gc.softmax_cross_entropy(o, y))
    model = gc.compile(g, batch_size=4, dtype="float64", optimizer=gc.SGD(0.1), seed=2)
    ids_v = np.array([[0, 1, 4], [2, 3, 3]], dtype=np.int32)
    p = model.params
    logits = np.tanh(p["h.W"][ids_v] + p["h.b"]) @ p["o.W"] + p["o.b"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(model.predict(ids_v), probs, rtol=1e-12, atol=1e-14)
    directional_check(model, (ids_v, np.array([[1, 0, 2], [4, 4, 3]], dtype=np.int32)))
    assert "ids_onehot" not in model.source  # the one-hot node is never materialized
