"""Memory over many steps: remember the first symbol of a length-100 sequence.

Each sequence is 100 symbols from an alphabet of eight; the label is the first symbol (one
of four), to be given after the last step.  The four label symbols also occur at random
later in the sequence, so the network must carry the *first* one unchanged across 99
steps of distraction.  The same small network is trained with each recurrent cell:

    one_hot(8) -> {rnn, lstm, gru}(32 units, last step) -> dense(4) -> softmax cross-entropy

A vanilla (Elman) RNN's gradient from the answer back to step 0 is a product of 99
Jacobians diag(1 − h²) · Wᵀ, which vanishes: it stays at chance (25 %).  The gated cells
pass it along their memory path: c = f ⊙ cᵗ⁻¹ + … (LSTM) and h = z ⊙ hᵗ⁻¹ + … (GRU).  Gate
block 1 of NAME.a is the forget gate f of the LSTM and the update gate z of the GRU (PyTorch
order); starting its bias at 5 makes both keep σ(5) ≈ 99 % of their state per step, so the
memory path is open from the first update.  The LSTM's cell also adds i ⊙ g at every step:
its input gate (block 0) starts at σ(−2) ≈ 0.12, else 99 such additions drive c into
tanh's flat tails and training stalls with two of the four symbols told apart.

Prints the test accuracy of each cell; ``main`` returns them by cell.
Run from the repository root:  python examples/sequence_long_dependence.py
"""

from __future__ import annotations

import sys
import time

import numpy as np

try:
    import graphc as gc
except ImportError:  # a source checkout without install: use the repository next door
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import graphc as gc

STEPS, LABELS, SYMBOLS, HIDDEN = 100, 4, 8, 32
MEMORY_BIAS = 5.0
INPUT_BIAS = -2.0


def make_data(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of symbol ids (any symbol after the first) and their first symbol."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, LABELS, size=count)
    rest = rng.integers(0, SYMBOLS, size=(count, STEPS - 1))
    sequences = np.concatenate([labels[:, None], rest], axis=1)
    return sequences.astype(np.int32), labels.astype(np.int32)


def build(kind: str) -> gc.Graph:
    """One-hot symbols -> a recurrent layer's last state -> four classes."""
    g = gc.Graph(f"first_symbol_{kind}")
    ids = g.input("ids", (STEPS,), dtype="int32")
    label = g.input("label", (), dtype="int32")
    h = getattr(gc, kind)(gc.one_hot(ids, SYMBOLS), HIDDEN, name=kind)
    logits = gc.dense(h, LABELS, name="out")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, label))
    return g


def open_memory(model, kind: str) -> None:
    """Start the forget (LSTM) or update (GRU) gate's bias, gate block 1 of a, at 5 (and the
    LSTM's input gate, block 0, at -2)."""
    bias = model.params[f"{kind}.a"]
    bias[HIDDEN : 2 * HIDDEN] = MEMORY_BIAS
    if kind == "lstm":
        bias[:HIDDEN] = INPUT_BIAS
    model.set_params({f"{kind}.a": bias})


def main(epochs: int = 6) -> dict[str, float]:
    """Train each cell on 10000 sequences; print and return the accuracy on 1000 new ones."""
    X, y = make_data(10_000, seed=0)
    X_test, y_test = make_data(1000, seed=1)
    results = {}
    for kind in ("rnn", "lstm", "gru"):
        start = time.perf_counter()
        # 32 units are too few to share out: one thread saves a barrier per step
        model = gc.compile(
            build(kind),
            batch_size=32,
            optimizer=gc.Adam(lr=5e-3, clip_norm=1.0),
            seed=0,
            num_threads=1,
        )
        if kind != "rnn":
            open_memory(model, kind)
        model.fit(X, y, epochs=epochs)
        accuracy = model.evaluate(X_test, y_test)["accuracy"]
        results[kind] = accuracy
        seconds = time.perf_counter() - start
        print(f"{kind:5s} test accuracy {accuracy:6.1%}   ({epochs} epochs, {seconds:.1f} s)")
    print(f"chance is {1 / LABELS:.0%}; the answer depends on a symbol {STEPS - 1} steps back")
    return results


if __name__ == "__main__":
    main()
