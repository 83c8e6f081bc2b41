"""Convolution and pooling (graphc/ops/conv.py, graphc/ops/pool.py).

Each model below is compiled once (float64, module fixtures) and serves both checks: its
outputs against a direct NumPy reference, and its gradients against central differences.
Every model stacks two convolutions, so δ flows through the second one's input (the
transposed convolution) as well as into both filters and biases.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from helpers import directional_check

import graphc as gc

pytestmark = pytest.mark.needs_cc

SWISH = gc.activation("swish", lambda v: v / (1 + sp.exp(-v)))
ACTIVATIONS = {
    "tanh": np.tanh,
    "swish": lambda v: v / (1 + np.exp(-v)),
    None: lambda v: v,
}


# --- NumPy references ---------------------------------------------------------------------------
def conv_reference(x, W, b, stride, before, after):
    """Cross-correlation of x (N, C, *S) with W (O, C, *K), zero padding, plus b."""
    rank = W.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + list(zip(before, after)))
    K = W.shape[2:]
    out_size = [(xp.shape[2 + a] - K[a]) // stride[a] + 1 for a in range(rank)]
    out = np.zeros((x.shape[0], W.shape[0], *out_size))
    axes = list(range(1, 2 + rank))
    for idx in np.ndindex(*out_size):
        window = tuple(slice(idx[a] * stride[a], idx[a] * stride[a] + K[a]) for a in range(rank))
        patch = xp[(slice(None), slice(None)) + window]
        out[(slice(None), slice(None)) + idx] = np.tensordot(patch, W, axes=(axes, axes))
    return out + b.reshape((1, -1) + (1,) * rank)


def pool_reference(x, kind, size, stride):
    """Max or mean of each window (floor mode) of x (N, C, *S)."""
    rank = x.ndim - 2
    out_size = [(x.shape[2 + a] - size[a]) // stride[a] + 1 for a in range(rank)]
    out = np.zeros(x.shape[:2] + tuple(out_size))
    for idx in np.ndindex(*out_size):
        window = tuple(slice(idx[a] * stride[a], idx[a] * stride[a] + size[a]) for a in range(rank))
        patch = x[(slice(None), slice(None)) + window].reshape(x.shape[:2] + (-1,))
        out[(slice(None), slice(None)) + idx] = patch.max(-1) if kind == "max" else patch.mean(-1)
    return out


# --- the models ---------------------------------------------------------------------------------
# name: (sample shape, kernel, stride, padding, activation, (pool kind, size, stride)[,
#        (output channels of conv1, of conv2): (3, 2) when left out])
CASES = {
    "2d_k3_valid_maxpool": ((2, 9, 8), 3, 1, "valid", "tanh", ("max", 2, None)),
    "2d_k2x3_stride2_same_meanpool": ((3, 11, 9), (2, 3), 2, "same", "swish", ("mean", 2, 1)),
    "2d_k4_same_overlapping_maxpool": ((2, 8, 7), 4, 1, "same", "tanh", ("max", (3, 2), (2, 1))),
    "2d_k3_stride2_pad1_meanpool3": ((2, 11, 10), 3, 2, 1, None, ("mean", 3, 2)),
    "2d_k5_pad2": ((1, 7, 6), 5, 1, 2, "tanh", ("max", 2, 2)),
    "1d_k3_valid_maxpool": ((3, 13), 3, 1, "valid", "tanh", ("max", 2, None)),
    "1d_k4_stride2_same_meanpool": ((2, 15), 4, 2, "same", "swish", ("mean", 2, 1)),
    "1d_k2_pad2_maxpool3": ((2, 10), 2, 1, 2, "tanh", ("max", 3, 2)),  # pad > k - 1
    # 16 or more output channels: the filter gradient sweeps them in vector lanes, two
    # blocks with the last one partial (20, 17) or whole blocks (16).  Mean pooling after
    # 20 channels: some max-pool window there holds two values closer than the central
    # difference's step, and the difference straddles the kink.
    "2d_k3_valid_20_16ch": ((2, 10, 9), 3, 1, "valid", "tanh", ("mean", 2, None), (20, 16)),
    "2d_k2x3_stride2_pad1_16_17ch": ((2, 9, 8), (2, 3), 2, 1, None, ("mean", 2, 1), (16, 17)),
    "1d_k3_stride2_same_17_16ch": ((2, 12), 3, 2, "same", "tanh", ("max", 2, None), (17, 16)),
}


def build(name: str) -> gc.Graph:
    """x -> conv1 (activation) -> pool -> conv2 -> flatten -> dense(3) -> mse."""
    shape, kernel, stride, padding, activation, (kind, size, pool_stride) = CASES[name][:6]
    channels = CASES[name][6] if len(CASES[name]) > 6 else (3, 2)
    rank = len(shape) - 1
    conv = gc.conv2d if rank == 2 else gc.conv1d
    pool = {("max", 2): gc.max_pool2d, ("mean", 2): gc.mean_pool2d}
    pool.update({("max", 1): gc.max_pool1d, ("mean", 1): gc.mean_pool1d})
    g = gc.Graph(f"conv_{name}")
    x = g.input("x", shape)
    y = g.input("y", (3,))
    h1 = conv(x, channels[0], kernel, stride=stride, padding=padding, activation=activation,
              name="conv1")  # fmt: skip
    pooled = pool[(kind, rank)](h1, size, pool_stride, name="pooled")
    h2 = conv(pooled, channels[1], kernel, stride=stride, padding=padding, name="conv2")
    out = gc.dense(gc.flatten(h2), 3, activation="tanh", name="out")
    for node in (h1, pooled, h2):
        g.output(node.name, node)
    g.minimize(gc.mse(out, y))
    return g


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    """(name, compiled float64 model with random biases, inputs)."""
    name = request.param
    model = gc.compile(build(name), batch_size=4, dtype="float64", optimizer=gc.SGD(0.1))
    rng = np.random.default_rng(sorted(CASES).index(name))
    params = model.params
    for key in params:
        if key.endswith(".b"):
            params[key] = rng.normal(scale=0.5, size=params[key].shape)
    model.set_params(params)
    x = rng.normal(size=(4,) + CASES[name][0])
    y = rng.normal(size=(4, 3))
    return name, model, (x, y)


def _window(model, layer: str):
    return model.graph.node(f"{layer}.conv").attrs["window"]


def test_forward_matches_numpy(case):
    name, model, (x, _) = case
    _, _, _, _, activation, (kind, size, pool_stride) = CASES[name][:6]
    params = model.params
    outputs = model.predict(x[:3])  # fewer rows than the batch
    w1 = _window(model, "conv1")
    expected = ACTIVATIONS[activation](
        conv_reference(
            x[:3], params["conv1.W"], params["conv1.b"], w1.stride, w1.pad_before, w1.pad_after
        )
    )
    np.testing.assert_allclose(outputs["conv1"], expected, rtol=1e-12, atol=1e-12)
    rank = x.ndim - 2
    size = (size,) * rank if isinstance(size, int) else size
    steps = size if pool_stride is None else pool_stride
    steps = (steps,) * rank if isinstance(steps, int) else steps
    pooled = pool_reference(expected, kind, size, steps)
    np.testing.assert_allclose(outputs["pooled"], pooled, rtol=1e-12, atol=1e-12)
    w2 = _window(model, "conv2")
    second = conv_reference(
        pooled, params["conv2.W"], params["conv2.b"], w2.stride, w2.pad_before, w2.pad_after
    )
    np.testing.assert_allclose(outputs["conv2"], second, rtol=1e-12, atol=1e-12)


def test_gradients_match_central_differences(case):
    _, model, inputs = case
    errors = directional_check(model, inputs, seed=1, directions=2)
    assert max(errors) < 1e-6
    # 3 rows: the filter gradient's samples go one at a time, not in its groups of four
    errors = directional_check(model, tuple(a[:3] for a in inputs), seed=2, directions=2)
    assert max(errors) < 1e-6


@pytest.mark.parametrize(
    "name", ["2d_k5_pad2", "2d_k3_valid_20_16ch", "1d_k3_stride2_same_17_16ch"]
)
def test_filter_gradients_summed_in_sample_blocks(name):
    """On the C target a filter gradient is summed per block of samples (40 rows: blocks
    of 5, so the four-sample groups and the one-sample rest both run), then over the
    blocks.  The gradient of 37 rows (a ragged last block) equals the row-weighted mean of
    the gradients of its parts, each summed on its own; and training gives the same bits
    on 1, 2 and 3 threads with the team forced on."""
    from graphc.build import default_flags, find_compiler

    flags = default_flags(find_compiler()) + ["-DGC_TEAM_FLOPS=0"]
    rng = np.random.default_rng(7)
    x = rng.normal(size=(37,) + CASES[name][0])
    y = rng.normal(size=(37, 3))
    results = []
    for threads in (1, 2, 3):
        model = gc.compile(
            build(name), batch_size=40, dtype="float64", optimizer=gc.SGD(0.05),
            cflags=flags, num_threads=threads, seed=3,
        )  # fmt: skip
        if threads == 1:
            assert "block_sums" in model.source
            whole = model.gradients(x, y)
            parts = [(0, 11), (11, 12), (12, 37)]
            for key, value in whole.items():
                mean = sum((b - a) * model.gradients(x[a:b], y[a:b])[key] for a, b in parts)
                np.testing.assert_allclose(value, mean / 37, rtol=1e-11, atol=1e-13)
        for _ in range(3):
            model.train_step(x, y)
        model.train_step(x[:9], y[:9])  # two blocks, the second partial
        results.append({k: v.tobytes() for k, v in model.params.items()})
    assert results[0] == results[1] == results[2]


def test_a_mean_over_the_batch_per_channel():
    """gc.mean over the batch and positions of each channel (a batch statistic) takes the
    same sample blocks in C: 17 of 20 rows, against NumPy, the same bits on any team."""
    from graphc.build import default_flags, find_compiler

    g = gc.Graph("channel_mean")
    x = g.input("x", (3, 5, 4))
    h = gc.conv2d(x, 4, 2, activation="tanh", name="conv")
    g.output("centered", h - gc.reshape(gc.mean(h, axis=(1, 2), batch=True), (4, 1, 1)))
    g.output("h", h)
    X = np.random.default_rng(0).normal(size=(17, 3, 5, 4))
    flags = default_flags(find_compiler()) + ["-DGC_TEAM_FLOPS=0"]
    results = []
    for threads in (1, 2, 3):
        model = gc.compile(g, batch_size=20, dtype="float64", cflags=flags, num_threads=threads)
        assert "block_sums" in model.source
        out = model.predict(X)
        reference = out["h"] - out["h"].mean(axis=(0, 2, 3), keepdims=True)
        np.testing.assert_allclose(out["centered"], reference, rtol=0, atol=1e-14)
        results.append(out["centered"].tobytes())
    assert results[0] == results[1] == results[2]


def test_same_padding_puts_the_extra_zero_after():
    g = gc.Graph("same_even")
    x = g.input("x", (1, 6, 5))
    h = gc.conv2d(x, 1, 4, padding="same", name="c")
    window = g.node("c.conv").attrs["window"]
    assert (window.pad_before, window.pad_after) == ((1, 1), (2, 2))
    assert h.shape == (1, 6, 5)
    strided = gc.conv2d(x, 1, 3, stride=2, padding="same", name="s")
    assert strided.shape == (1, 3, 3)  # ceil(6 / 2), ceil(5 / 2)


def test_pooling_drops_windows_that_do_not_fit():
    g = gc.Graph("floor")
    x = g.input("x", (2, 7, 5))
    assert gc.max_pool2d(x, 2).shape == (2, 3, 2)
    assert gc.mean_pool2d(x, 3, stride=2).shape == (2, 3, 2)
    assert gc.max_pool1d(g.input("s", (2, 9)), 4).shape == (2, 2)


def test_course_notes_pooling_example():
    g = gc.Graph("notes")
    x = g.input("x", (1, 4, 4))
    g.output("max", gc.max_pool2d(x, 2))
    g.output("mean", gc.mean_pool2d(x, 2))
    model = gc.compile(g)
    image = np.array([[1, 3, 2, 4], [3, 9, 2, 4], [1, 3, 3, 2], [4, 2, 2, 5]], np.float32)
    out = model.predict(image.reshape(1, 1, 4, 4))
    np.testing.assert_array_equal(out["max"][0, 0], [[9, 4], [4, 5]])
    np.testing.assert_array_equal(out["mean"][0, 0], [[4, 3], [2.5, 3]])


def test_max_pool_routes_delta_to_the_first_maximum():
    """Ties go to the first maximum of the window in row-major order, as in PyTorch."""
    g = gc.Graph("ties")
    x = g.input("x", (1, 2, 4))
    y = g.input("y", (1, 1, 2))
    image = g.param("image", (1, 2, 4))
    g.minimize(gc.mse(gc.max_pool2d(x + image, 2), y))
    model = gc.compile(g, dtype="float64")
    model.set_params({"image": [[[1.0, 5.0, 2.0, 2.0], [5.0, 0.0, 2.0, 1.0]]]})
    grads = model.gradients(np.zeros((1, 1, 2, 4)), np.zeros((1, 1, 1, 2)))
    expected = np.zeros((1, 2, 4))
    expected[0, 0, 1] = 5.0  # the first 5 of the left window (pooled - target = 5)
    expected[0, 0, 2] = 2.0  # the first 2 of the right window
    np.testing.assert_array_equal(grads["image"], expected)


def test_generated_code_reads_like_the_equations(case):
    _, model, _ = case
    source = model.source
    rank = len(model.graph.node("x").shape) - 1
    taps = "sum_p sum_q" if rank == 2 else "sum_q"
    assert "conv1.conv[n][o]" in source and f"sum_c {taps} x[n][c]" in source
    assert "grad_conv1.W[o][c]" in source
    assert "#pragma omp for schedule(static) collapse(" in source
    assert "malloc" not in source.split("_create(void)")[0]


def test_explain_shows_the_conv_and_pool_adjoints(case):
    name, model, _ = case
    text = model.explain()
    conv = "conv2d" if name.startswith("2d") else "conv1d"
    assert f"{conv}_transpose(δ[conv2], conv2.W" in text
    assert "∂E/∂conv1.W = Σ_batch x ⋆ δ[conv1]" in text
    routed = "routed to the arg-max" in text
    spread = "spread over each" in text
    assert routed or spread


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda g: gc.conv2d(g.input("x", (1, 4, 4)), 2, 5), "does not fit"),
        (lambda g: gc.conv2d(g.input("x", (4, 4)), 2, 3), "(C, H, W)"),
        (lambda g: gc.conv1d(g.input("x", (2, 3, 4)), 2, 3), "(C, L)"),
        (lambda g: gc.conv2d(g.input("x", (1, 4, 4)), 2, 3, padding="full"), "'valid', 'same'"),
        (lambda g: gc.conv2d(g.input("x", (1, 4, 4)), 2, (3, 3, 3)), "tuple of 2"),
        (lambda g: gc.conv2d(g.input("x", (1, 4, 4)), 0, 3), "positive integer"),
        (lambda g: gc.max_pool2d(g.input("x", (1, 3, 4)), 4), "does not fit"),
        (lambda g: gc.mean_pool1d(g.input("x", (1, 6)), 2, stride=0), ">= 1"),
    ],
)
def test_shape_errors_name_the_problem(make, message):
    with pytest.raises(gc.GraphcError) as info:
        make(gc.Graph("bad"))
    assert message in str(info.value)


def test_float32_training_learns_a_pattern():
    """A tiny convnet separates vertical from horizontal bars."""
    rng = np.random.default_rng(0)
    images = np.zeros((64, 1, 6, 6), np.float32)
    labels = rng.integers(0, 2, 64).astype(np.int32)
    for k, label in enumerate(labels):
        line = rng.integers(1, 5)
        if label:
            images[k, 0, :, line] = 1.0
        else:
            images[k, 0, line, :] = 1.0
    images += rng.normal(scale=0.1, size=images.shape).astype(np.float32)
    g = gc.Graph("bars")
    x = g.input("x", (1, 6, 6))
    y = g.input("y", (), dtype="int32")
    h = gc.conv2d(x, 4, 3, padding="same", activation="relu", name="conv")
    h = gc.max_pool2d(h, 2)
    logits = gc.dense(gc.flatten(h), 2, name="out")
    g.minimize(gc.softmax_cross_entropy(logits, y))
    model = gc.compile(g, batch_size=16, optimizer=gc.SGD(0.1, momentum=0.9))
    model.fit(images, labels, epochs=30)
    assert model.evaluate(images, labels)["accuracy"] == 1.0
