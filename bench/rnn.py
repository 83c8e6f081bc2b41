"""Training throughput of a character-level RNN and LSTM, beside PyTorch eager.

Workload (float32): one-hot characters (vocabulary 65) -> recurrent layer of 128 units over
T = 32 steps -> dense 65 with softmax cross-entropy at every step, Adam, batch 32, on random
token sequences (the data does not change the work).  graphc trains with ``model.fit``
(one call into C per epoch); PyTorch with the usual eager loop (nn.RNN / nn.LSTM on one-hot
float input, nn.Linear, cross-entropy, Adam).  Both use the same number of threads.  After
one warm-up epoch each, the two take turns for ``repeats`` timed epochs; the median is
reported in tokens/s (batch x T per step).

Usage: python bench/rnn.py [--quick] [--threads N] [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

try:
    import graphc as gc
except ImportError:  # a source checkout without install: use the repository next door
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import graphc as gc

VOCAB, HIDDEN, STEPS, BATCH = 65, 128, 32, 32


def data(sequences: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random token sequences and their next-token targets."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, size=(sequences, STEPS + 1)).astype(np.int32)
    return tokens[:, :-1], tokens[:, 1:]


def graphc_trainer(kind: str, X: np.ndarray, y: np.ndarray, threads: int) -> Callable[[], None]:
    """One epoch of graphc training per call."""
    g = gc.Graph(f"bench_char_{kind}")
    ids = g.input("ids", (STEPS,), dtype="int32")
    targets = g.input("next", (STEPS,), dtype="int32")
    h = getattr(gc, kind)(gc.one_hot(ids, VOCAB), HIDDEN, return_sequences=True, name=kind)
    logits = gc.dense(h, VOCAB, name="out")
    g.minimize(gc.softmax_cross_entropy(logits, targets))
    model = gc.compile(g, batch_size=BATCH, optimizer=gc.Adam(lr=2e-3), num_threads=threads)
    return lambda: model.fit(X, y, epochs=1)


def torch_trainer(kind: str, X: np.ndarray, y: np.ndarray, threads: int) -> Callable[[], None]:
    """One epoch of PyTorch eager training per call (same sizes, optimizer, batch)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layer = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM}[kind](VOCAB, HIDDEN, batch_first=True)
    head = torch.nn.Linear(HIDDEN, VOCAB)
    params = list(layer.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=2e-3)
    inputs = torch.nn.functional.one_hot(torch.as_tensor(X, dtype=torch.long), VOCAB).float()
    targets = torch.as_tensor(y, dtype=torch.long)

    def epoch() -> None:
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), BATCH):
            rows = order[start : start + BATCH]
            optimizer.zero_grad()
            out, _ = layer(inputs[rows])
            logits = head(out)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, VOCAB), targets[rows].reshape(-1)
            )
            loss.backward()
            optimizer.step()

    return epoch


def tokens_per_second(
    trainers: dict[str, Callable[[], None]], tokens: int, repeats: int
) -> dict[str, float]:
    """Median rate of each trainer over ``repeats`` timed epochs, after one warm-up epoch each;
    the trainers take turns within each round, so load from other jobs hits both alike."""
    for train in trainers.values():
        train()
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(repeats):
        for name, train in trainers.items():
            start = time.perf_counter()
            train()
            rates[name].append(tokens / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def main(quick: bool = False, threads: int = 2, repeats: int = 5) -> dict[str, float]:
    """Print tokens/s of graphc (and PyTorch, when installed) for the RNN and the LSTM."""
    sequences = 256 if quick else 1024
    X, y = data(sequences)
    tokens = sequences * STEPS
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    results: dict[str, float] = {}
    print(
        f"char model: one-hot {VOCAB} -> {HIDDEN} hidden, T={STEPS}, batch {BATCH}, Adam, "
        f"{threads} threads, {sequences} sequences per epoch"
    )
    for kind in ("rnn", "lstm"):
        trainers = {"graphc": graphc_trainer(kind, X, y, threads)}
        if have_torch:
            trainers["torch"] = torch_trainer(kind, X, y, threads)
        rates = tokens_per_second(trainers, tokens, repeats)
        results.update({f"{name} {kind}": rate for name, rate in rates.items()})
        line = f"  {kind:5s} graphc {rates['graphc']:10.0f} tokens/s"
        if have_torch:
            ratio = rates["graphc"] / rates["torch"]
            line += f"   torch eager {rates['torch']:10.0f} tokens/s   ratio {ratio:5.2f}x"
        print(line)
    if not have_torch:
        print("  (PyTorch not installed: pip install torch==2.13.0 to compare)")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sequences per epoch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    main(arguments.quick, arguments.threads, arguments.repeats)
