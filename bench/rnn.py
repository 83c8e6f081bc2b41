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
from collections.abc import Callable

import common
import numpy as np
from common import gc

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
    model = common.timed(
        gc.compile(g, batch_size=BATCH, optimizer=gc.Adam(lr=2e-3), num_threads=threads)
    )
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


def jax_trainer(kind: str, X: np.ndarray, y: np.ndarray, threads: int) -> Callable[[], None]:
    """One epoch of JAX training per call: the step (a ``lax.scan`` over time, its gradient
    and Adam) is one ``jax.jit`` function called once per mini-batch."""
    import jax
    import jax.numpy as jnp

    gates = {"rnn": 1, "lstm": 4}[kind]
    rng = np.random.default_rng(0)
    bound = 1.0 / np.sqrt(HIDDEN)

    def uniform(*shape: int) -> jnp.ndarray:
        return jnp.asarray(rng.uniform(-bound, bound, shape).astype(np.float32))

    params = {
        "U": uniform(VOCAB, gates * HIDDEN),
        "W": uniform(HIDDEN, gates * HIDDEN),
        "a": uniform(gates * HIDDEN),
        "V": uniform(HIDDEN, VOCAB),
        "c": uniform(VOCAB),
    }

    def loss_fn(p, ids, targets):
        def cell(carry, xu):
            h, c = carry
            z = xu + h @ p["W"]
            if kind == "rnn":
                h = jnp.tanh(z)
            else:
                i, f, g, o = jnp.split(z, 4, axis=-1)
                c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
                h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        xu = p["U"][ids] + p["a"]  # one-hot · U is a row lookup
        zeros = jnp.zeros((ids.shape[0], HIDDEN), jnp.float32)
        _, hs = jax.lax.scan(cell, (zeros, zeros), jnp.swapaxes(xu, 0, 1))
        logits = jnp.swapaxes(hs, 0, 1) @ p["V"] + p["c"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

    @jax.jit
    def step(p, m, v, t, ids, targets):
        grads = jax.grad(loss_fn)(p, ids, targets)
        t = t + 1.0
        m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, grads)
        v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, grads)
        scale = 2e-3 * jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        p = jax.tree.map(lambda p, m, v: p - scale * m / (jnp.sqrt(v) + 1e-8), p, m, v)
        return p, m, v, t

    zeros = jax.tree.map(jnp.zeros_like, params)
    state = {"p": params, "m": zeros, "v": zeros, "t": jnp.float32(0.0)}

    def epoch() -> None:
        p, m, v, t = state["p"], state["m"], state["v"], state["t"]
        order = rng.permutation(len(X))
        for start in range(0, len(X), BATCH):
            rows = order[start : start + BATCH]
            p, m, v, t = step(p, m, v, t, X[rows], y[rows])
        jax.block_until_ready(p)
        state.update(p=p, m=m, v=v, t=t)

    return epoch


#: peer name -> (module it needs, trainer)
PEERS = {"torch": ("torch", torch_trainer), "jax": ("jax", jax_trainer)}


def tokens_per_second(
    trainers: dict[str, Callable[[], None]], tokens: int, repeats: int
) -> dict[str, float]:
    """Median tokens/s of each trainer over ``repeats`` timed epochs, after one warm-up
    epoch each, the trainers taking turns within each round (``common.median_rates``)."""
    return common.median_rates(trainers, tokens, repeats)


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
