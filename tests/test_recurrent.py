"""Recurrent layers (graphc/ops/recurrent.py, graphc/ops/combine.py).

Gradients: float64 central differences along random directions (helpers.directional_check)
for rnn, lstm and gru in every output mode (every step, last step, one-to-many through
gc.repeat), bidirectional, T in {1, 3, 7}, with float, one-hot and embedding inputs and an
initial state computed by the graph (so δ reaches it).  Forward: against a NumPy reference
and, when torch imports, torch.nn.RNN/LSTM/GRU with copied weights.  Truncated BPTT against
a NumPy reference.  The C time loops (each thread its own rows, no barrier between steps)
give the same bits on 1, 2 and 3 threads.  Sizes per axis are distinct: features 4,
hidden 5, classes 6, rows 3.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from helpers import directional_check

import graphc as gc
from graphc.kernels import GemmKernel
from graphc.ops import recurrent
from graphc.ops.recurrent import ScanGradKernel, ScanKernel
from graphc.symbolic import O

F, H, V, ROWS = 4, 5, 6, 3
KINDS = ("rnn", "lstm", "gru")


def _compile(g: gc.Graph):
    return gc.compile(g, dtype="float64", batch_size=4, seed=1, optimizer=gc.SGD(0.1))


# --- NumPy reference ----------------------------------------------------------------------
def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v))


def reference(kind, params, x, name, suffix="", reverse=False, h0=None, c0=None):
    """Every hidden state of one direction, (n, T, H), from the layer's parameters."""
    U, W, a = (params[f"{name}.{p}{suffix}"] for p in "UWa")
    rows, steps, _ = x.shape
    hidden = W.shape[0]
    h = np.zeros((rows, hidden)) if h0 is None else h0
    c = np.zeros((rows, hidden)) if c0 is None else c0
    out = np.zeros((rows, steps, hidden))
    for t in reversed(range(steps)) if reverse else range(steps):
        zx, zh = x[:, t] @ U + a, h @ W
        if kind == "rnn":
            h = np.tanh(zx + zh)
        elif kind == "lstm":
            i, f, g, o = np.split(zx + zh, 4, axis=1)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
        else:
            zh = zh + params[f"{name}.b{suffix}"]
            r = _sigmoid(zx[:, :hidden] + zh[:, :hidden])
            z = _sigmoid(zx[:, hidden : 2 * hidden] + zh[:, hidden : 2 * hidden])
            n = np.tanh(zx[:, 2 * hidden :] + r * zh[:, 2 * hidden :])
            h = (1 - z) * n + z * h
        out[:, t] = h
    return out


# --- models ------------------------------------------------------------------------------
def _layer(kind, x, **options):
    if kind != "lstm":
        options.pop("initial_cell", None)
    return getattr(gc, kind)(x, H, name="rec", **options)


def sequence_model(kind: str, steps: int = 7):
    """Every step, float input, initial state (and cell) computed from another input."""
    g = gc.Graph(f"seq_{kind}")
    x = g.input("x", (steps, F))
    s = g.input("s", (2,))
    y = g.input("y", (steps,), dtype="int32")
    h0 = gc.dense(s, H, activation="tanh", name="enc")
    c0 = gc.dense(s, H, name="enc_c")
    h = _layer(kind, x, return_sequences=True, initial_state=h0, initial_cell=c0)
    out = gc.dense(h, V, name="out")
    g.output("h", h)
    g.minimize(gc.softmax_cross_entropy(out, y))
    return g


def last_model(kind: str, steps: int = 3):
    """Last step of a bidirectional layer over one-hot tokens."""
    g = gc.Graph(f"last_{kind}")
    ids = g.input("ids", (steps,), dtype="int32")
    y = g.input("y", (), dtype="int32")
    h = _layer(kind, gc.one_hot(ids, F), bidirectional=True)
    g.output("h", h)
    g.minimize(gc.softmax_cross_entropy(gc.dense(h, V, name="out"), y))
    return g


def embedded_model(kind: str, steps: int = 1):
    """Last step over an embedding, a learnable initial state (an unbatched parameter)."""
    g = gc.Graph(f"emb_{kind}")
    ids = g.input("ids", (steps,), dtype="int32")
    y = g.input("y", (), dtype="int32")
    h0 = g.param("h0", (H,), init=("uniform", 0.5))
    h = _layer(kind, gc.embedding(ids, V, 3, name="emb"), initial_state=h0)
    g.minimize(gc.softmax_cross_entropy(gc.dense(h, V, name="out"), y))
    return g


def one_to_many_model(kind: str, steps: int = 3):
    """A vector repeated over time, every step of a bidirectional layer."""
    g = gc.Graph(f"otm_{kind}")
    v = g.input("v", (F,))
    y = g.input("y", (steps,), dtype="int32")
    h = _layer(kind, gc.repeat(v, steps), return_sequences=True, bidirectional=True)
    g.output("h", h)
    g.minimize(gc.softmax_cross_entropy(gc.dense(h, V, name="out"), y))
    return g


def _data(name: str, steps: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    per_step = (ROWS, steps)
    data = {
        "seq": {
            "x": rng.normal(size=per_step + (F,)),
            "s": rng.normal(size=(ROWS, 2)),
            "y": rng.integers(0, V, size=per_step),
        },
        "last": {"ids": rng.integers(0, F, size=per_step), "y": rng.integers(0, V, size=ROWS)},
        "emb": {"ids": rng.integers(0, V, size=per_step), "y": rng.integers(0, V, size=ROWS)},
        "otm": {"v": rng.normal(size=(ROWS, F)), "y": rng.integers(0, V, size=per_step)},
    }
    return data[name]


MODELS = {"seq": (sequence_model, 7), "last": (last_model, 3), "emb": (embedded_model, 1)}
MODELS["otm"] = (one_to_many_model, 3)


@pytest.fixture(scope="module")
def models():
    """Compiled models, shared by the gradient and forward tests (compiled on first use)."""
    cache: dict = {}

    def get(kind: str, mode: str):
        if (kind, mode) not in cache:
            build, steps = MODELS[mode]
            cache[(kind, mode)] = (_compile(build(kind, steps)), _data(mode, steps))
        return cache[(kind, mode)]

    return get


@pytest.mark.needs_cc
@pytest.mark.parametrize("mode", sorted(MODELS))
@pytest.mark.parametrize("kind", KINDS)
def test_gradients(models, kind, mode):
    model, data = models(kind, mode)
    assert max(directional_check(model, data, seed=2)) < 1e-6


def _forward(kind, params, mode, data):
    if mode == "seq":
        h0 = np.tanh(data["s"] @ params["enc.W"] + params["enc.b"])
        c0 = data["s"] @ params["enc_c.W"] + params["enc_c.b"]
        return reference(kind, params, data["x"], "rec", h0=h0, c0=c0 if kind == "lstm" else None)
    if mode == "last":
        x = np.eye(F)[data["ids"]]
        forward = reference(kind, params, x, "rec")[:, -1]
        backward = reference(kind, params, x, "rec", "_reverse", reverse=True)[:, 0]
        return np.concatenate([forward, backward], axis=1)
    x = np.repeat(data["v"][:, None, :], 3, axis=1)
    forward = reference(kind, params, x, "rec")
    return np.concatenate([forward, reference(kind, params, x, "rec", "_reverse", True)], -1)


@pytest.mark.needs_cc
@pytest.mark.parametrize("mode", ["seq", "last", "otm"])
@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_numpy(models, kind, mode):
    model, data = models(kind, mode)
    inputs = {k: v for k, v in data.items() if k != "y"}
    expected = _forward(kind, model.params, mode, data)
    np.testing.assert_allclose(model.predict(inputs), expected, rtol=1e-10, atol=1e-12)


def _torch():
    try:
        import torch as module
    except ImportError:
        pytest.skip("torch is not installed (pip install torch==2.13.0 to compare with it)")
    return module


@pytest.mark.needs_cc
@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_torch(models, kind):
    """Bidirectional last step and full sequence of the seq model against torch.nn."""
    torch = _torch()
    model, data = models(kind, "last")
    module = getattr(torch.nn, kind.upper())(F, H, batch_first=True, bidirectional=True)
    module = module.double()
    values = {}
    for suffix, theirs in (("", "_l0"), ("_reverse", "_l0_reverse")):
        w_ih = getattr(module, f"weight_ih{theirs}").detach().numpy()
        w_hh = getattr(module, f"weight_hh{theirs}").detach().numpy()
        b_ih = getattr(module, f"bias_ih{theirs}").detach().numpy()
        b_hh = getattr(module, f"bias_hh{theirs}").detach().numpy()
        values[f"rec.U{suffix}"] = w_ih.T
        values[f"rec.W{suffix}"] = w_hh.T
        if kind == "gru":
            values[f"rec.a{suffix}"], values[f"rec.b{suffix}"] = b_ih, b_hh
        else:
            values[f"rec.a{suffix}"] = b_ih + b_hh
    start = model.params
    model.set_params(values)
    try:
        ours = model.predict({"ids": data["ids"]})
    finally:
        model.set_params(start)
    x = torch.nn.functional.one_hot(torch.as_tensor(data["ids"]), F).double()
    out = module(x)[0].detach().numpy()
    theirs = np.concatenate([out[:, -1, :H], out[:, 0, H:]], axis=1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


# --- truncated BPTT ----------------------------------------------------------------------
def _truncated_reference(params, x, target, window, suffix=""):
    """Gradients of E = mean over rows of Σ ½(h − target)² with δ cut every ``window`` steps
    (of processing order: a reversed direction is the forward one on time-reversed data)."""
    U, W, a = (params[f"rec.{p}{suffix}"] for p in "UWa")
    values = {"rec.U": U, "rec.W": W, "rec.a": a}
    if suffix:
        x, target = x[:, ::-1], target[:, ::-1]
    rows, steps, _ = x.shape
    h = reference("rnn", values, x, "rec")
    previous = np.concatenate([np.zeros((rows, 1, W.shape[0])), h[:, :-1]], axis=1)
    grads = {f"rec.{p}{suffix}": 0 * v for p, v in zip("UWa", (U, W, a))}
    recurrent = np.zeros((rows, W.shape[0]))
    for t in reversed(range(steps)):
        live = t + 1 < steps and (t + 1) % window != 0
        d_z = ((h[:, t] - target[:, t]) / rows + (recurrent if live else 0)) * (1 - h[:, t] ** 2)
        recurrent = d_z @ W.T
        grads[f"rec.U{suffix}"] += x[:, t].T @ d_z
        grads[f"rec.W{suffix}"] += previous[:, t].T @ d_z
        grads[f"rec.a{suffix}"] += d_z.sum(axis=0)
    return grads


@pytest.mark.needs_cc
def test_truncated_bptt_matches_reference():
    steps, window = 7, 3
    g = gc.Graph("bptt")
    x = g.input("x", (steps, F))
    y = g.input("y", (steps, 2 * H))
    h = gc.rnn(x, H, return_sequences=True, bidirectional=True, name="rec", bptt=window)
    g.minimize(gc.mse(h, y))
    model = _compile(g)
    rng = np.random.default_rng(4)
    data = {"x": rng.normal(size=(ROWS, steps, F)), "y": rng.normal(size=(ROWS, steps, 2 * H))}
    grads = model.gradients(data)
    expected = _truncated_reference(model.params, data["x"], data["y"][..., :H], window)
    expected.update(
        _truncated_reference(model.params, data["x"], data["y"][..., H:], window, "_reverse")
    )
    assert len(expected) == len(grads) == 6
    for name, value in expected.items():
        np.testing.assert_allclose(grads[name], value, rtol=1e-10, atol=1e-12)


# --- derived forms and structure ------------------------------------------------------------
def test_derived_recurrences():
    """δ of the pre-activations, as sympy derived them (in stored gate outputs)."""
    rnn = recurrent.derive(recurrent.elman_cell(gc.ops.elementwise.get_activation("tanh")))
    dh, h = recurrent.incoming("h"), sp.Symbol("h", real=True)
    assert sp.simplify(rnn.d_x[0] - dh * (1 - h**2)) == 0
    assert rnn.saved == ()
    lstm = recurrent.derive(recurrent.lstm_cell())
    i, f, g, o, c, c_prev = sp.symbols("i f g o c c_prev", real=True)
    dc = recurrent.incoming("c") + dh * o * (1 - sp.tanh(c) ** 2)
    expected = [dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g**2)]
    expected.append(dh * sp.tanh(c) * o * (1 - o))
    for got, want in zip(lstm.d_x, expected):
        assert sp.simplify(got - want) == 0
    assert sp.simplify(dict(lstm.d_prev)["c"] - dc * f) == 0
    assert dict(lstm.d_prev)["h"] == 0
    gru = recurrent.derive(recurrent.gru_cell())
    r = sp.Symbol("r", real=True)
    assert sp.simplify(gru.d_u[2] - r * gru.d_x[2]) == 0
    assert [s.name for s in gru.saved] == ["r", "z", "n", "u_n"]
    assert O not in gru.d_x[0].free_symbols


def test_explain_shows_the_recurrence():
    g = gc.Graph("explained")
    x = g.input("x", (3, F))
    y = g.input("y", (3,), dtype="int32")
    h = gc.rnn(x, H, return_sequences=True, name="h")
    g.minimize(gc.softmax_cross_entropy(gc.dense(h, V, name="out"), y))
    text = gc.explain(g)
    assert "δ[h]ᵗ = (1 − hᵗ²) ⊙ (" in text
    assert "δ[h]ᵗ⁺¹ · h.Wᵀ)" in text


@pytest.mark.needs_cc
def test_one_projection_gemm_and_one_time_loop(models):
    """x · U is one GEMM over n·T rows; each direction is one forward and one backward kernel."""
    model, _ = models("rnn", "seq")
    train = next(p for p in model.plan.programs if p.name == "train")
    scans = [k for k in train.kernels if isinstance(k, ScanKernel)]
    grads = [k for k in train.kernels if isinstance(k, ScanGradKernel)]
    projection = [k for k in train.kernels if isinstance(k, GemmKernel) and k.c.label == "rec.z"]
    assert len(scans) == 1 and len(grads) == 1
    assert len(projection) == 1 and projection[0].m.coef == 7 and projection[0].m.batched
    assert "gc_gemm_rows(0, 0, n, 5," in model.source  # one n x H . H x H product per step
    assert "malloc" not in model.source.split("_create(void)")[0]


def test_shape_errors():
    g = gc.Graph("errors")
    flat = g.input("flat", (F,))
    with pytest.raises(gc.ShapeError, match=r"gc.repeat"):
        gc.rnn(flat, H)
    seq = g.input("seq", (3, F))
    with pytest.raises(gc.ShapeError, match=r"initial_state"):
        gc.lstm(seq, H, initial_state=flat)
    with pytest.raises(gc.GraphError, match=r"bptt"):
        gc.gru(seq, H, bptt=0)
    with pytest.raises(gc.ShapeError, match=r"axis"):
        gc.concat([seq, flat])


@pytest.mark.needs_cc
def test_stacked_float32_model_trains():
    """rnn -> bidirectional lstm -> gru in float32 (compiled with -Werror), loss falls."""
    g = gc.Graph("stacked")
    ids = g.input("ids", (5,), dtype="int32")
    y = g.input("y", (5,), dtype="int32")
    h = gc.rnn(gc.embedding(ids, V, 3, name="emb"), H, return_sequences=True, name="first")
    h = gc.lstm(h, 4, return_sequences=True, bidirectional=True, bptt=2, name="second")
    h = gc.gru(h, H, return_sequences=True, name="third")
    g.minimize(gc.softmax_cross_entropy(gc.dense(h, V, name="out"), y))
    model = gc.compile(g, batch_size=8, optimizer=gc.Adam(lr=3e-2), seed=0)
    rng = np.random.default_rng(5)
    data = {"ids": rng.integers(0, V, size=(8, 5)), "y": rng.integers(0, V, size=(8, 5))}
    first = model.train_step(data)
    for _ in range(40):
        last = model.train_step(data)
    assert last < 0.5 * first


@pytest.mark.needs_cc
def test_kernel_templates_get_every_variable_they_use(models):
    from graphc.codegen.c import KernelContexts, Target, environment, template_variables

    env = environment()
    contexts = KernelContexts(Target(real="double"), "float64")
    seen = set()
    for kind in KINDS:
        model, _ = models(kind, "last")
        for program in model.plan.programs:
            for kernel in program.kernels:
                ctx = contexts.context(kernel)
                used = template_variables(env, ctx["template"])
                assert used <= set(ctx), f"{ctx['template']}: missing {sorted(used - set(ctx))}"
                seen.add(ctx["template"])
    assert {"c/rnn_forward.c.j2", "c/rnn_backward.c.j2", "c/copy.c.j2"} <= seen
    assert {"c/gather.c.j2", "c/scatter_add.c.j2"} <= seen


@pytest.mark.needs_cc
@pytest.mark.parametrize("kind", KINDS)
def test_time_loops_give_the_same_bits_on_any_team(kind):
    """In C each thread carries its own band of the batch through a time loop with no
    barrier between steps: training (forward and backward loops, bidirectional, with δ
    reaching an initial state) gives the same parameters on 1, 2 and 3 threads.  The team
    is forced on (GC_TEAM_FLOPS=0) and 13 rows leave a ragged band, and an empty one."""
    from graphc.build import default_flags, find_compiler

    g = gc.Graph(f"team_{kind}")
    x = g.input("x", (6, F))
    s = g.input("s", (2,))
    y = g.input("y", (6,), dtype="int32")
    h0 = gc.dense(s, H, activation="tanh", name="enc")
    h = _layer(kind, x, return_sequences=True, bidirectional=True, initial_state=h0)
    g.minimize(gc.softmax_cross_entropy(gc.dense(h, V, name="out"), y))
    flags = default_flags(find_compiler()) + ["-DGC_TEAM_FLOPS=0"]
    rng = np.random.default_rng(5)
    data = {
        "x": rng.standard_normal((13, 6, F)),
        "s": rng.standard_normal((13, 2)),
        "y": rng.integers(0, V, (13, 6)).astype(np.int32),
    }
    results = []
    for threads in (1, 2, 3):
        model = gc.compile(
            g, dtype="float64", batch_size=13, seed=1, optimizer=gc.Adam(0.01), cflags=flags,
            num_threads=threads,
        )  # fmt: skip
        for _ in range(3):
            model.train_step(**data)
        results.append({k: v.tobytes() for k, v in model.params.items()})
    assert results[0] == results[1] == results[2]
