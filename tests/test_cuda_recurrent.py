"""The recurrent time loops on the CUDA backend (templates/cuda/rnn_*.cu.j2): each kind of
cell, emulated (target "cuda-emu"), against the C backend: outputs, gradients and two
optimizer steps, float32, relative 1e-4; on a GPU (marker ``cuda``) target "cuda" the same
way.  The nvcc compile of a recurrent graph is in
tests/test_cuda.py (graph "recurrent"), with the fit/evaluate comparison of that graph."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.build import cuda_device_error, find_cxx
from graphc.errors import CompilerNotFoundError

RTOL = 1e-4
T, F, BATCH = 3, 5, 3


def _has_cxx() -> bool:
    try:
        find_cxx()
    except CompilerNotFoundError:
        return False
    return True


needs_cxx = pytest.mark.skipif(not _has_cxx(), reason="the CUDA emulation needs a C++ compiler")
NO_GPU = cuda_device_error()
TARGETS = [
    pytest.param("cuda-emu", marks=needs_cxx),
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(NO_GPU is not None, reason=f"needs a CUDA GPU: {NO_GPU}"),
        ],
    ),
]


def relative(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over max |a|: the error relative to the tensor's scale."""
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-6))


def elman() -> gc.Graph:
    """An RNN with a batched initial state (δ flows into it), truncated BPTT, every step out."""
    g = gc.Graph("cu_rnn")
    x = g.input("x", (T, F))
    s = g.input("s", 3)
    y = g.input("y", 2)
    h0 = gc.dense(s, 4, activation="tanh", name="h0")
    h = gc.rnn(x, 4, return_sequences=True, initial_state=h0, bptt=2, name="rnn")
    out = gc.dense(gc.flatten(h), 2, name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    return g


def lstm() -> gc.Graph:
    """A bidirectional LSTM with a learned initial cell state, last step out."""
    g = gc.Graph("cu_lstm")
    x = g.input("x", (T, F))
    y = g.input("y", 2)
    c0 = g.param("c0", (6,), init=0.1)
    h = gc.lstm(x, 6, bidirectional=True, initial_cell=c0, name="lstm")
    out = gc.dense(h, 2, activation="sigmoid", name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    return g


def gru() -> gc.Graph:
    """A GRU (its hidden bias, δ of h·W as a second output) with a learned initial state."""
    g = gc.Graph("cu_gru")
    x = g.input("x", (T, F))
    y = g.input("y", 2)
    h0 = g.param("h0", (5,), init=0.2)
    h = gc.gru(x, 5, initial_state=h0, name="gru")
    out = gc.dense(h, 2, name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    return g


CASES = {
    "rnn": (elman, lambda: gc.SGD(lr=0.1, momentum=0.9)),
    "lstm": (lstm, lambda: gc.Adam(lr=1e-2)),
    "gru": (gru, lambda: gc.RMSProp(lr=1e-2, clip_norm=0.5)),
}


def _inputs(model) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {}
    for t in model.plan.inputs:
        shape = (BATCH,) + t.shape
        value = rng.uniform(size=shape) if t.label == "y" else rng.normal(size=shape)
        out[t.label] = value.astype(np.float32)
    return out


@pytest.mark.needs_cc
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_recurrent_layer_agrees_with_c(name, target):
    build, optimizer = CASES[name]
    reference, model = (
        gc.compile(build(), target=t, batch_size=BATCH, optimizer=optimizer(), seed=5)
        for t in ("c", target)
    )
    assert "gc_cuda_gemm(gc_queue, 0, 1" in model.source, "the backward loop's δu · Wᵀ"
    batch = _inputs(reference)
    for key, value in reference.params.items():
        assert np.array_equal(value, model.params[key]), f"initial {key}"
    a, b = reference.predict(batch), model.predict(batch)
    assert relative(a, b) < RTOL, f"predict: {relative(a, b):.2e}"
    ref_grads, grads = reference.gradients(batch), model.gradients(batch)
    assert ref_grads.keys() == grads.keys()
    for key, value in ref_grads.items():
        assert relative(value, grads[key]) < RTOL, f"gradient of {key}"
    for _ in range(2):
        ref_loss, loss = reference.train_step(batch), model.train_step(batch)
        assert abs(loss - ref_loss) <= RTOL * abs(ref_loss)
    for key, value in reference.params.items():
        assert relative(value, model.params[key]) < RTOL, f"trained {key}"
    for key, states in reference.optimizer_state.items():
        for state, value in states.items():
            assert relative(value, model.optimizer_state[key][state]) < RTOL, f"{key}.{state}"
