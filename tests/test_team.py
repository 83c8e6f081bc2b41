"""Training gives the same bits on any thread team (C target).

Every kernel either splits work that does not interact (elementwise loops, per-sample
windows, matrix-product tiles) or sums in an order fixed by the sizes alone (the GEMM's K
blocks, the sample blocks of kernels.SAMPLE_BLOCKS, the time loops' row bands).  So a
model trained on 1, 2 or 3 threads, with the team forced on for every step
(GC_TEAM_FLOPS=0), ends with the same parameters, optimizer state and losses, to the bit.
One model per op family; 13 rows per step (batch 16), so bands and blocks come out ragged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import graphc as gc

pytestmark = pytest.mark.needs_cc

ROWS = 13


# each builder: the graph, and per input its sample shape and, for integers, their bound
def _mlp() -> tuple[gc.Graph, dict]:
    g = gc.Graph("team_mlp")
    x = g.input("x", 12)
    y = g.input("y", (), dtype="int32")
    h = gc.dense(x, 40, activation="elu", name="h1")
    h = gc.dropout(gc.dense(h, 24, activation="leaky_relu", name="h2"), 0.3)
    g.minimize(gc.softmax_cross_entropy(gc.dense(h, 5, name="out"), y))
    return g, {"x": ((12,), None), "y": ((), 5)}


def _conv() -> tuple[gc.Graph, dict]:
    g = gc.Graph("team_conv")
    x = g.input("x", (2, 12, 11))
    y = g.input("y", (), dtype="int32")
    h = gc.max_pool2d(gc.conv2d(x, 16, 3, padding=1, activation="relu", name="c1"), 2)
    h = gc.mean_pool2d(gc.conv2d(h, 6, 2, activation="tanh", name="c2"), 2)
    g.minimize(gc.softmax_cross_entropy(gc.dense(gc.flatten(h), 4, name="out"), y))
    return g, {"x": ((2, 12, 11), None), "y": ((), 4)}


def _conv1d() -> tuple[gc.Graph, dict]:
    g = gc.Graph("team_conv1d")
    x = g.input("x", (3, 20))
    y = g.input("y", (2,))
    h = gc.max_pool1d(gc.conv1d(x, 17, 4, stride=2, padding="same", activation="relu"), 2)
    g.minimize(gc.mse(gc.dense(gc.flatten(h), 2, activation="sigmoid", name="out"), y))
    return g, {"x": ((3, 20), None), "y": ((2,), None)}


def _text() -> tuple[gc.Graph, dict]:
    g = gc.Graph("team_text")
    ids = g.input("ids", (7,), dtype="int32")
    y = g.input("y", (7,), dtype="int32")
    e = gc.embedding(ids, 11, 6, name="emb")
    h = gc.lstm(e, 9, return_sequences=True, name="lstm")
    h = gc.gru(h, 8, return_sequences=True, bidirectional=True, name="gru")
    g.minimize(gc.softmax_cross_entropy(gc.dense(h, 11, name="out"), y))
    return g, {"ids": ((7,), 11), "y": ((7,), 11)}


def _data(spec: dict, rng) -> dict:
    """Inputs of ROWS rows: integers below ``high`` (labels, token ids), else normal."""
    data = {}
    for name, (shape, high) in spec.items():
        if high is None:
            data[name] = rng.standard_normal((ROWS, *shape))
        else:
            data[name] = rng.integers(0, high, (ROWS, *shape)).astype(np.int32)
    return data


@pytest.mark.parametrize("build", [_mlp, _conv, _conv1d, _text], ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_training_gives_the_same_bits_on_any_team(build, optimizer):
    from graphc.build import default_flags, find_compiler

    graph, spec = build()
    flags = default_flags(find_compiler()) + ["-DGC_TEAM_FLOPS=0"]
    data = _data(spec, np.random.default_rng(3))
    results = []
    for threads in (1, 2, 3):
        opt = gc.Adam(0.01) if optimizer == "adam" else gc.SGD(0.05, momentum=0.9)
        model = gc.compile(
            graph, batch_size=16, dtype="float64", optimizer=opt, seed=2, cflags=flags,
            num_threads=threads,
        )  # fmt: skip
        losses = [model.train_step(**data) for _ in range(3)]
        history = model.fit(data, epochs=2, verbose=0)
        state = {
            f"{name}.{key}": value.tobytes()
            for name, slots in model.optimizer_state.items()
            for key, value in slots.items()
        }
        params = {name: value.tobytes() for name, value in model.params.items()}
        results.append((losses, history.history["loss"], params, state))
    assert results[0] == results[1], "2 threads differ from 1"
    assert results[0] == results[2], "3 threads differ from 1"


def _schedstat_readable() -> bool:
    try:
        with open("/proc/thread-self/schedstat") as f:
            return len(f.read().split()) >= 2
    except OSError:
        return False


@pytest.mark.skipif(
    not _schedstat_readable(),
    reason="the shared-core guard reads /proc/thread-self/schedstat (Linux with schedstats)",
)
def test_the_guard_drops_threads_while_the_cores_are_shared():
    """With a busy process on every CPU, the team's threads wait for a CPU about half the
    time: the guard (runtime/gc_team.h) runs calls on fewer threads, and training still
    ends with the bits of a model trained on one thread."""
    from graphc.build import find_compiler, openmp_flags

    if not openmp_flags(find_compiler()):
        pytest.skip("the C compiler has no OpenMP: every call runs on one thread")
    g = gc.Graph("team_guard")
    x = g.input("x", 256)
    y = g.input("y", (), dtype="int32")
    h = gc.dense(x, 256, activation="relu", name="h")
    g.minimize(gc.softmax_cross_entropy(gc.dense(h, 10, name="out"), y))
    rng = np.random.default_rng(5)
    data = {"x": rng.standard_normal((2048, 256)), "y": rng.integers(0, 10, 2048)}

    def model(threads: int):
        return gc.compile(  # 64 rows: 26 MFLOP a step, above GC_TEAM_FLOPS
            g, batch_size=64, optimizer=gc.SGD(0.01), seed=4, num_threads=threads
        )

    shared = model(2)
    cpus = len(os.sched_getaffinity(0))
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cpus)]
    try:
        epochs, deadline = 0, time.monotonic() + 20
        while shared.guarded_calls == 0 and time.monotonic() < deadline:
            shared.fit(data, epochs=1, verbose=0)
            epochs += 1
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert shared.guarded_calls > 0, f"no call ran on fewer threads in {epochs} epochs"
    alone = model(1)
    alone.fit(data, epochs=epochs, verbose=0)
    assert alone.guarded_calls == 0
    for name, value in alone.params.items():
        assert value.tobytes() == shared.params[name].tobytes(), name
