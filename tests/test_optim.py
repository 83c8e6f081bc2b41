"""Optimizers, schedules and gradient clipping in the generated training step.

Every trajectory runs the compiled float64 model with ``train_step`` on one fixed batch and
compares each parameter, after every step, with a NumPy implementation of the same rule
written here (PyTorch's SGD, Kingma & Ba's Adam, AdaGrad, RMSProp) to 1e-10.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import schedules
from graphc.kernels import GemmKernel

pytestmark = pytest.mark.needs_cc

ROWS, IN, OUT = 6, 4, 3
STEPS = 10


def linear_graph(name: str, bias: bool = True) -> gc.Graph:
    """out = x · W (+ b), mean squared error against y: gradients are easy in NumPy."""
    g = gc.Graph(name)
    x = g.input("x", IN)
    y = g.input("y", OUT)
    out = gc.dense(x, OUT, name="out", bias=bias)
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    return g


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.normal(size=(ROWS, IN)), rng.normal(size=(ROWS, OUT))


def numpy_grads(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict:
    """∂E/∂W, ∂E/∂b of E = mean over rows of ½ Σ (x W + b − y)²."""
    out = x @ params["out.W"] + params.get("out.b", 0.0)
    d_out = (out - y) / len(x)
    grads = {"out.W": x.T @ d_out}
    if "out.b" in params:
        grads["out.b"] = d_out.sum(axis=0)
    return grads


# --- NumPy reference rules: (param, grad, state dict, t, lr) -> new param ------------------
def sgd_rule(momentum=0.0, nesterov=False, weight_decay=0.0):
    def step(p, g, state, t, lr):
        g = g + weight_decay * p
        if momentum:
            v = momentum * state.get("v", 0.0) + g
            state["v"] = v
            g = g + momentum * v if nesterov else v
        return p - lr * g

    return step


def adam_rule(beta1=0.9, beta2=0.999, eps=1e-8, bias_correction=True):
    def step(p, g, state, t, lr):
        m = beta1 * state.get("m", 0.0) + (1 - beta1) * g
        v = beta2 * state.get("v", 0.0) + (1 - beta2) * g * g
        state["m"], state["v"] = m, v
        m_hat = m / (1 - beta1**t) if bias_correction else m
        v_hat = v / (1 - beta2**t) if bias_correction else v
        return p - lr * m_hat / (np.sqrt(v_hat) + eps)

    return step


def adagrad_rule(eps=1e-10):
    def step(p, g, state, t, lr):
        s = state.get("s", 0.0) + g * g
        state["s"] = s
        return p - lr * g / (np.sqrt(s) + eps)

    return step


def rmsprop_rule(rho=0.99, eps=1e-8):
    def step(p, g, state, t, lr):
        s = rho * state.get("s", 0.0) + (1 - rho) * g * g
        state["s"] = s
        return p - lr * g / (np.sqrt(s) + eps)

    return step


def reference(
    params: dict, x: np.ndarray, y: np.ndarray, rule, lr, steps: int, clip: float | None = None
) -> list[dict[str, np.ndarray]]:
    """Parameters after each of ``steps`` steps of ``rule`` (lr: a number or a function of t)."""
    params = {k: v.copy() for k, v in params.items()}
    states: dict[str, dict] = {k: {} for k in params}
    trajectory = []
    for t in range(1, steps + 1):
        grads = numpy_grads(params, x, y)
        if clip is not None:
            norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
            grads = {k: g * min(1.0, clip / norm) for k, g in grads.items()}
        eta = lr(t) if callable(lr) else lr
        params = {k: rule(params[k], grads[k], states[k], t, eta) for k in params}
        trajectory.append({k: v.copy() for k, v in params.items()})
    return trajectory


CASES = {
    "sgd": (lambda: gc.SGD(lr=0.1), sgd_rule(), 0.1),
    "momentum": (lambda: gc.SGD(lr=0.1, momentum=0.9), sgd_rule(0.9), 0.1),
    "nesterov": (lambda: gc.SGD(lr=0.1, momentum=0.9, nesterov=True), sgd_rule(0.9, True), 0.1),
    "weight_decay": (
        lambda: gc.SGD(lr=0.1, momentum=0.5, weight_decay=0.01),
        sgd_rule(0.5, weight_decay=0.01),
        0.1,
    ),
    "adam": (lambda: gc.Adam(lr=0.05), adam_rule(), 0.05),
    "adagrad": (lambda: gc.AdaGrad(lr=0.2), adagrad_rule(), 0.2),
    "rmsprop": (lambda: gc.RMSProp(lr=0.01, rho=0.9, eps=1e-6), rmsprop_rule(0.9, 1e-6), 0.01),
    "adam_inverse_time": (
        lambda: gc.Adam(lr=schedules.InverseTime(0.05, per="step")),
        adam_rule(),
        lambda t: 0.05 / t,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_trajectory_matches_numpy(case: str, batch) -> None:
    make, rule, lr = CASES[case]
    x, y = batch
    model = gc.compile(
        linear_graph(f"opt_{case}"), batch_size=ROWS, dtype="float64", optimizer=make(), seed=3
    )
    expected = reference(model.params, x, y, rule, lr, STEPS)
    for t, want in enumerate(expected, start=1):
        model.train_step(x, y)
        assert model.step == t
        for name, value in model.params.items():
            np.testing.assert_allclose(value, want[name], rtol=0, atol=1e-10, err_msg=name)


def test_adam_bias_correction(batch) -> None:
    """Kingma & Ba's correction: at t = 1 the step is η·g/(|g| + ε); t = 2 and 10 follow it."""
    x, y = batch
    lr = 0.05
    model = gc.compile(
        linear_graph("adam_bias"), batch_size=ROWS, dtype="float64", optimizer=gc.Adam(lr=lr)
    )
    start = model.params
    g = numpy_grads(start, x, y)
    expected = reference(start, x, y, adam_rule(), lr, 10)
    uncorrected = reference(start, x, y, adam_rule(bias_correction=False), lr, 10)
    for t in range(1, 11):
        model.train_step(x, y)
        if t == 1:
            for name in start:
                step = start[name] - model.params[name]
                np.testing.assert_allclose(
                    step, lr * g[name] / (np.abs(g[name]) + 1e-8), atol=1e-12
                )
        if t in (1, 2, 10):
            for name, value in model.params.items():
                np.testing.assert_allclose(value, expected[t - 1][name], rtol=0, atol=1e-10)
                # the check is sharp: leaving the correction out moves the parameters visibly
                assert np.max(np.abs(value - uncorrected[t - 1][name])) > 1e-4


@pytest.mark.parametrize(
    "make",
    [lambda: gc.SGD(lr=0.1, momentum=0.9, clip_norm=0.05), lambda: gc.Adam(0.05, clip_norm=0.1)],
)
def test_clipping_by_global_norm(make, batch) -> None:
    """One kernel computes ‖g‖ over all gradients; updates use g · min(1, c/‖g‖)."""
    x, y = batch
    optimizer = make()
    rule = sgd_rule(0.9) if isinstance(optimizer, gc.SGD) else adam_rule()
    model = gc.compile(
        linear_graph(f"clip_{optimizer.name}"),
        batch_size=ROWS,
        dtype="float64",
        optimizer=optimizer,
    )
    start = model.params
    norm = np.sqrt(sum(np.sum(g * g) for g in numpy_grads(start, x, y).values()))
    assert norm > optimizer.clip_norm, "the test batch must have a gradient to clip"
    expected = reference(start, x, y, rule, optimizer.lr, 5, clip=optimizer.clip_norm)
    unclipped = reference(start, x, y, rule, optimizer.lr, 5)
    for want, free in zip(expected, unclipped):
        model.train_step(x, y)
        for name, value in model.params.items():
            np.testing.assert_allclose(value, want[name], rtol=0, atol=1e-10)
        assert any(np.max(np.abs(want[k] - free[k])) > 1e-6 for k in want)
    source = model.source
    assert source.count("static void k_clip_scale(") == 1
    # the training step clips; the gradient program (model.gradients) does not
    grad_program = source[source.index("static void grad_program") :]
    train_program = source[source.index("static void train_program") :]
    assert "k_clip_scale(" not in grad_program[: grad_program.index("\n}\n")]
    assert "k_clip_scale(" in train_program[: train_program.index("\n}\n")]


def test_gradients_are_not_clipped(batch) -> None:
    x, y = batch
    model = gc.compile(
        linear_graph("clip_grads"),
        batch_size=ROWS,
        dtype="float64",
        optimizer=gc.SGD(0.1, clip_norm=1e-3),
    )
    grads = model.gradients(x, y)
    want = numpy_grads(model.params, x, y)
    for name in want:
        np.testing.assert_allclose(grads[name], want[name], rtol=1e-12, atol=1e-14)


def test_fused_sgd_step_equals_the_gradient_step(batch) -> None:
    """Plain SGD adds −η times each weight gradient's product straight into
    the weight, with no stored gradient.  One step must still equal p − η·∂E/∂p for every
    parameter, hidden layers included (whose δ product reads the weight before its step)."""
    x, y = batch
    g = gc.Graph("fused_sgd")
    xi, yi = g.input("x", IN), g.input("y", OUT)
    h = gc.dense(gc.dense(xi, 5, activation="tanh", name="h1"), 4, activation="relu", name="h2")
    g.minimize(gc.mse(gc.dense(h, OUT, name="out"), yi))
    model = gc.compile(g, batch_size=ROWS, dtype="float64", optimizer=gc.SGD(lr=0.1), seed=5)
    train = next(p for p in model.plan.programs if p.name == "train")
    fused = {k.c.label for k in train.kernels if isinstance(k, GemmKernel) and k.scale}
    assert fused == {"h1.W", "h2.W", "out.W"}
    before, grads = model.params, model.gradients(x, y)
    model.train_step(x, y)
    for name, value in model.params.items():
        np.testing.assert_allclose(
            value, before[name] - 0.1 * grads[name], rtol=0, atol=1e-13, err_msg=name
        )


# --- schedules ------------------------------------------------------------------------------
SCHEDULES = {
    "constant": lambda per: schedules.Constant(0.1, per=per),
    "inverse_time": lambda per: schedules.InverseTime(0.1, per=per),
    "linear": lambda per: schedules.LinearDecay(0.1, 0.01, T=3, per=per),
    "step_decay": lambda per: schedules.StepDecay(0.1, gamma=0.5, every=2, per=per),
    "cosine": lambda per: schedules.Cosine(0.1, T=4, eta_min=0.01, per=per),
}


def observed_lr(model, x: np.ndarray, y: np.ndarray, advance) -> float:
    """The η the generated step used: plain SGD moves W by −η·g, so η = −ΔW / g."""
    g = model.gradients(x, y)["out.W"]
    before = model.params["out.W"]
    advance()
    delta = before - model.params["out.W"]
    big = np.abs(g) > 1e-3
    rates = delta[big] / g[big]
    assert np.ptp(rates) < 1e-12 * np.max(np.abs(rates))
    return float(rates.mean())


def test_schedule_formulas() -> None:
    """Closed forms of each schedule, t 1-based."""
    assert schedules.InverseTime(0.3)(3) == pytest.approx(0.1)
    linear = schedules.LinearDecay(0.1, 0.01, T=3)
    assert [linear(t) for t in (1, 2, 3, 4, 9)] == pytest.approx([0.07, 0.04, 0.01, 0.01, 0.01])
    decay = schedules.StepDecay(0.1, gamma=0.5, every=2)
    assert [decay(t) for t in (1, 2, 3, 4, 5)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    cosine = schedules.Cosine(0.1, T=4, eta_min=0.01)
    assert cosine(1) == pytest.approx(0.1)
    assert cosine(3) == pytest.approx(0.055)
    assert cosine(5) == pytest.approx(0.01) and cosine(50) == pytest.approx(0.01)
    with pytest.raises(gc.GraphError, match="per="):
        schedules.Constant(0.1, per="batch")


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_schedule_per_epoch_in_fit(kind: str, batch) -> None:
    """per='epoch': every step of epoch e (1-based) uses η_e; one batch = one step per epoch."""
    x, y = batch
    schedule = SCHEDULES[kind]("epoch")
    model = gc.compile(
        linear_graph(f"sched_{kind}", bias=False),
        batch_size=ROWS,
        dtype="float64",
        optimizer=gc.SGD(lr=schedule),
    )
    for epoch in range(1, 7):
        eta = observed_lr(model, x, y, lambda: model.fit(x, y, epochs=1, shuffle=False))
        assert eta == pytest.approx(schedule(epoch), rel=1e-9), f"epoch {epoch}"
        assert model.epoch == epoch


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_per_step(kind: str, batch) -> None:
    """per='step': step s uses η_s, across train_step calls and across epochs of fit."""
    x, y = batch
    schedule = SCHEDULES[kind]("step")
    model = gc.compile(
        linear_graph(f"sched_step_{kind}", bias=False),
        batch_size=ROWS // 2,
        dtype="float64",
        optimizer=gc.SGD(lr=schedule),
    )
    half = ROWS // 2
    for step in range(1, 4):
        eta = observed_lr(model, x[:half], y[:half], lambda: model.train_step(x[:half], y[:half]))
        assert eta == pytest.approx(schedule(step), rel=1e-9)
    # an epoch of fit takes two steps (ROWS rows, batches of ROWS / 2): η_4 then η_5
    before = model.params["out.W"]
    model.fit(x, y, epochs=1, shuffle=False)
    assert model.step == 5
    w = before.copy()
    for step, rows in ((4, slice(0, half)), (5, slice(half, ROWS))):
        w = w - schedule(step) * numpy_grads({"out.W": w}, x[rows], y[rows])["out.W"]
    np.testing.assert_allclose(model.params["out.W"], w, rtol=0, atol=1e-12)


def test_lr_setter_scales_the_schedule(batch) -> None:
    x, y = batch
    model = gc.compile(
        linear_graph("sched_eta0", bias=False),
        batch_size=ROWS,
        dtype="float64",
        optimizer=gc.SGD(lr=schedules.InverseTime(0.1, per="step")),
    )
    model.train_step(x, y)
    model.lr = 0.3
    eta = observed_lr(model, x, y, lambda: model.train_step(x, y))
    assert eta == pytest.approx(0.3 / 2, rel=1e-9)
