"""Dropout: counter-based masks, inverted and classic modes, on in training only.

Masks are observed through a gradient: with out = dropout(x) + v, v = 0 and the loss
E = mse(out, 0), ∂E/∂v_j = (1/N) Σ_n h_nj.  Row n of x holds 2^n, so N times that sum spells
out every row's mask bit.  The probe's SGD step is negligible (lr = 1e-300): train_step only
advances the step counter, and with it the masks.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc

pytestmark = pytest.mark.needs_cc

ROWS, UNITS, RATE = 8, 1500, 0.3
KEEP = 1.0 - RATE


def probe_graph(name: str, mode: str) -> gc.Graph:
    g = gc.Graph(name)
    x = g.input("x", UNITS)
    y = g.input("y", UNITS)
    v = g.param("v", UNITS, init="zeros")
    out = gc.dropout(x, RATE, mode=mode, name="drop") + v
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    return g


def probe_inputs() -> tuple[np.ndarray, np.ndarray]:
    x = np.repeat(2.0 ** np.arange(ROWS)[:, None], UNITS, axis=1)
    return x, np.zeros_like(x)


def compile_probe(name: str, mode: str, num_threads: int | None = None):
    return gc.compile(
        probe_graph(name, mode),
        batch_size=ROWS,
        dtype="float64",
        optimizer=gc.SGD(1e-300),
        num_threads=num_threads,
    )


def unit_sums(model) -> np.ndarray:
    """Σ_n h_nj under the current step's masks."""
    return model.gradients(*probe_inputs())["v"] * ROWS


def masks(model, mode: str) -> np.ndarray:
    """The (ROWS, UNITS) 0/1 mask of the current step, decoded from ∂E/∂v."""
    scale = 1.0 / KEEP if mode == "inverted" else 1.0
    code = unit_sums(model) / scale
    bits = np.rint(code)
    assert np.max(np.abs(code - bits)) < 1e-9, "kept units must carry exactly x * scale"
    bits = bits.astype(np.int64)
    return np.array([(bits >> n) & 1 for n in range(ROWS)])


@pytest.fixture(scope="module")
def probes() -> dict[str, object]:
    # one thread: these probes make hundreds of tiny calls, and a busy machine slows a team
    return {
        mode: compile_probe(f"probe_{mode}", mode, num_threads=1)
        for mode in ("inverted", "classic")
    }


def test_keep_fraction_and_independence(probes) -> None:
    model = probes["inverted"]
    model.train_step(*probe_inputs())
    first = masks(model, "inverted")
    sigma = np.sqrt(KEEP * RATE / first.size)
    assert abs(first.mean() - KEEP) < 5 * sigma
    # per sample and per unit: rows differ from each other, units differ from each other
    agree = (first[0] == first[1]).mean()
    assert abs(agree - (KEEP**2 + RATE**2)) < 0.05
    assert len({tuple(column) for column in first.T}) > 200  # 256 patterns of 8 rows exist
    # a new step draws a new, uncorrelated mask; the same step draws the same one again
    assert np.array_equal(masks(model, "inverted"), first)
    model.train_step(*probe_inputs())
    second = masks(model, "inverted")
    assert abs(np.corrcoef(first.ravel(), second.ravel())[0, 1]) < 0.05


def test_masks_reproducible_and_seeded(probes) -> None:
    model = probes["inverted"]
    again = compile_probe("probe_inverted", "inverted")
    model.seed, again.seed = 11, 11
    while again.step < model.step:
        again.train_step(*probe_inputs())
    assert np.array_equal(masks(model, "inverted"), masks(again, "inverted"))
    again.seed = 12
    assert not np.array_equal(masks(model, "inverted"), masks(again, "inverted"))
    model.num_threads = 1
    one = masks(model, "inverted")
    model.num_threads = 2
    assert np.array_equal(one, masks(model, "inverted"))


@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_off_outside_training_and_expected_value(mode: str, probes) -> None:
    """Inference gives x (inverted) or keep·x (classic): the mean of the training values."""
    model = probes[mode]
    x, y = probe_inputs()
    inferred = model.predict(x, y)
    np.testing.assert_array_equal(inferred, x if mode == "inverted" else KEEP * x)
    total = np.zeros(UNITS)
    draws = 100
    for _ in range(draws):
        model.train_step(x, y)
        total += unit_sums(model)
    mean = total / draws
    expected = inferred.sum(axis=0)
    # each unit's mean over 100 masks of 8 rows, then the average over 1500 units
    assert abs(mean.mean() / expected.mean() - 1) < 0.01
    relative = np.abs(mean - expected) / expected
    assert np.median(relative) < 0.15


def mlp_with_dropout(name: str, mode: str = "inverted") -> gc.Graph:
    g = gc.Graph(name)
    x = g.input("x", 5)
    y = g.input("y", 3)
    h = gc.dense(x, 7, activation="tanh", name="hidden")
    h = gc.dropout(h, 0.4, mode=mode, name="drop")
    out = gc.dense(h, 3, activation="sigmoid", name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    return g


@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_gradient_check_with_fixed_mask(mode: str) -> None:
    """Central differences of the training loss (same step counter, so the same mask)."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 5)), rng.uniform(size=(6, 3))
    model = gc.compile(mlp_with_dropout(f"drop_fd_{mode}", mode), batch_size=6, dtype="float64")
    model.train_step(x, y)
    loss = model.training_loss(x, y)
    assert loss != pytest.approx(model.evaluate(x, y)["loss"], rel=1e-6), "dropout must be on"
    assert model.training_loss(x, y) == loss
    grads = model.gradients(x, y)
    start = model.params
    for _ in range(2):
        direction = {k: rng.normal(size=g.shape) for k, g in grads.items()}
        analytic = sum(float(np.sum(grads[k] * d)) for k, d in direction.items())

        def loss_at(step: float, direction: dict = direction) -> float:
            model.set_params({k: start[k] + step * d for k, d in direction.items()})
            return model.training_loss(x, y)

        numeric = (loss_at(1e-5) - loss_at(-1e-5)) / 2e-5
        assert abs(analytic - numeric) / max(abs(analytic), abs(numeric)) < 1e-6
    model.set_params(start)


def test_backward_recomputes_the_mask() -> None:
    """No mask is stored: the backward kernel draws the forward layer's stream again."""
    model = gc.compile(mlp_with_dropout("drop_source"), batch_size=4, dtype="float64")
    source = model.source
    assert source.count("gc_stream(seed, ") == 2  # forward and backward kernels
    assert "mask" not in "".join(t.label for t in model.plan.slots)
    assert "d_hidden" in source


def test_training_bit_identical_across_threads_and_runs() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(40, 5)), rng.uniform(size=(40, 3))
    results = []
    for threads in (1, 2, 2):
        model = gc.compile(
            mlp_with_dropout("drop_threads"),
            batch_size=8,
            optimizer=gc.Adam(0.01),
            seed=9,
            num_threads=threads,
        )
        model.fit(x, y, epochs=3, shuffle=True)
        results.append(model.params)
    for other in results[1:]:
        for name, value in results[0].items():
            assert np.array_equal(value, other[name]), name


def test_rate_checks_and_zero_rate() -> None:
    g = gc.Graph("drop_checks")
    x = g.input("x", 3)
    assert gc.dropout(x, 0.0) is x
    with pytest.raises(gc.GraphError, match="rate"):
        gc.dropout(x, 1.0)
    with pytest.raises(gc.GraphError, match="mode"):
        gc.dropout(x, 0.5, mode="gaussian")


def test_digits_mlp_with_adam_and_dropout_reaches_97_percent() -> None:
    """64-128-10 relu MLP, inverted dropout 0.3 on the hidden layer, Adam, 60 epochs of fit."""
    datasets = pytest.importorskip("sklearn.datasets")
    selection = pytest.importorskip("sklearn.model_selection")
    digits = datasets.load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    X_train, X_test, y_train, y_test = selection.train_test_split(
        X, y, test_size=0.3, stratify=y, random_state=0
    )
    g = gc.Graph("digits_dropout")
    x = g.input("x", 64)
    labels = g.input("y", (), dtype="int32")
    h = gc.dropout(gc.dense(x, 128, activation="relu", name="hidden"), 0.3, name="drop")
    logits = gc.dense(h, 10, name="out")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, labels))
    model = gc.compile(g, batch_size=32, optimizer=gc.Adam(lr=1e-3), seed=1, num_threads=1)
    model.fit(X_train, y_train, epochs=60, shuffle=True)
    assert model.evaluate(X_test, y_test)["accuracy"] >= 0.97
