"""Training throughput of compiled graphc MLPs, beside PyTorch eager on the same workloads.

Two workloads, both float32 with softmax cross-entropy:

  W1  784-512-256-10 ReLU MLP, SGD, batch 128, on random data (8192 rows)
  W2  64-128-64-10 tanh MLP, Adam, batch 32, on scikit-learn's digits (1797 rows)

Each is trained with ``model.fit(X, y, epochs=k)``: one warm-up epoch, then the time of
``repeats`` calls of ``k`` epochs each, reported as the median samples/s.  When ``import torch``
works, the same network (layer sizes, optimizer, batch size, a reshuffle each epoch, the last
partial batch included) is trained in PyTorch eager mode and timed the same way; both sides use
the same number of threads (``torch.set_num_threads`` and ``model.num_threads``).  For W1 the
achieved GFLOP/s counts 6 * sum(in * out) flops per sample: 2 * in * out for the forward
matmul of each layer and twice that for its backward (δ and weight gradient).  The first
layer needs no δ for the input, so the work actually required is 2 * in * out less for it;
that figure is printed beside.

Usage: python bench/mlp.py [--quick] [--threads N] [--repeats R]
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass

import common
import numpy as np
from common import gc


@dataclass(frozen=True)
class Workload:
    """One benchmark: the network, its optimizer, batch size, data and epochs per timing."""

    label: str
    sizes: tuple[int, ...]  # input, hidden..., classes
    activation: str
    optimizer: str  # "sgd" or "adam"
    lr: float
    batch: int
    X: np.ndarray
    y: np.ndarray
    epochs: int

    @property
    def flops_per_sample(self) -> int:
        """Forward plus backward matmul flops of one training sample: 6 * sum(in * out)."""
        return 6 * sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def needed_flops_per_sample(self) -> int:
        """The flops a training step must do: the first layer forms no δ for the input."""
        return self.flops_per_sample - 2 * self.sizes[0] * self.sizes[1]


def random_data(
    rows: int, features: int, classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Normal float32 inputs and uniform integer labels."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features), dtype=np.float32)
    y = rng.integers(0, classes, size=rows).astype(np.int32)
    return X, y


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 scikit-learn digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)


def workloads(quick: bool) -> list[Workload]:
    """W1 and W2; ``quick`` shrinks W1's data and both epoch counts."""
    X1, y1 = random_data(2048 if quick else 8192, 784, 10)
    X2, y2 = digits_data()
    return [
        Workload(
            "W1 784-512-256-10 relu SGD b128",
            (784, 512, 256, 10),
            "relu",
            "sgd",
            0.01,
            128,
            X1,
            y1,
            1 if quick else 2,
        ),
        Workload(
            "W2 64-128-64-10 tanh Adam b32",
            (64, 128, 64, 10),
            "tanh",
            "adam",
            1e-3,
            32,
            X2,
            y2,
            2 if quick else 10,
        ),
    ]


def median_rates(
    trainers: dict[str, Callable[[int], None]], w: Workload, repeats: int
) -> dict[str, float]:
    """Median samples/s of each ``train(w.epochs)``, after one warm-up epoch each, the
    trainers taking turns within each repeat (``common.median_rates``)."""
    for train in trainers.values():
        train(1)
    calls = {name: (lambda train=train: train(w.epochs)) for name, train in trainers.items()}
    return common.median_rates(calls, w.epochs * len(w.X), repeats, warmup=0)


def graphc_trainer(
    w: Workload, threads: int, cflags: list[str] | None = None
) -> Callable[[int], None]:
    """A function training the compiled graphc model for some epochs (``cflags`` replaces
    the default compiler flags)."""
    g = gc.Graph("bench_mlp")
    x = g.input("x", (w.sizes[0],))
    y = g.input("y", (), dtype="int32")
    h = x
    for k, units in enumerate(w.sizes[1:-1]):
        h = gc.dense(h, units, activation=w.activation, name=f"hidden{k + 1}")
    logits = gc.dense(h, w.sizes[-1], name="out")
    g.minimize(gc.softmax_cross_entropy(logits, y))
    optimizer = gc.SGD(lr=w.lr) if w.optimizer == "sgd" else gc.Adam(lr=w.lr)
    model = common.timed(
        gc.compile(
            g,
            batch_size=w.batch,
            dtype="float32",
            optimizer=optimizer,
            seed=0,
            num_threads=threads,
            cflags=cflags,
        )
    )

    def train(epochs: int) -> None:
        model.fit(w.X, w.y, epochs=epochs, shuffle=True)

    return train


def torch_trainer(w: Workload, threads: int, compiled: bool = False) -> Callable[[int], None]:
    """A function training the same network in PyTorch for some epochs: eager mode, or
    with ``compiled`` the network under ``torch.compile`` (the optimizer step stays eager)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for a, b in zip(w.sizes[:-2], w.sizes[1:-1]):
        layers += [
            torch.nn.Linear(a, b),
            torch.nn.ReLU() if w.activation == "relu" else torch.nn.Tanh(),
        ]
    layers.append(torch.nn.Linear(w.sizes[-2], w.sizes[-1]))
    net = torch.nn.Sequential(*layers)
    if w.optimizer == "sgd":
        optimizer = torch.optim.SGD(net.parameters(), lr=w.lr)
    else:
        optimizer = torch.optim.Adam(net.parameters(), lr=w.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    forward = torch.compile(net, dynamic=False) if compiled else net
    X = torch.from_numpy(w.X)
    y = torch.from_numpy(w.y.astype(np.int64))
    generator = torch.Generator().manual_seed(0)

    def train(epochs: int) -> None:
        for _ in range(epochs):
            order = torch.randperm(len(X), generator=generator)
            for start in range(0, len(X), w.batch):
                rows = order[start : start + w.batch]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(forward(X[rows]), y[rows])
                loss.backward()
                optimizer.step()

    return train


def _init_params(w: Workload) -> list[tuple[np.ndarray, np.ndarray]]:
    """Glorot-uniform weights and zero biases, float32 (the peers written by hand share them)."""
    rng = np.random.default_rng(0)
    params = []
    for a, b in zip(w.sizes[:-1], w.sizes[1:]):
        limit = np.sqrt(6.0 / (a + b))
        params.append(
            (rng.uniform(-limit, limit, (a, b)).astype(np.float32), np.zeros(b, np.float32))
        )
    return params


def jax_trainer(w: Workload, threads: int) -> Callable[[int], None]:
    """JAX: the whole step (forward, grad, update) is one ``jax.jit`` function, called once
    per mini-batch from Python.  XLA's CPU thread pool uses every core (here ``threads``)."""
    import jax
    import jax.numpy as jnp

    act = jax.nn.relu if w.activation == "relu" else jnp.tanh

    def loss_fn(params, x, y):
        h = x
        for W, b in params[:-1]:
            h = act(h @ W + b)
        W, b = params[-1]
        logp = jax.nn.log_softmax(h @ W + b)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in _init_params(w)]
    if w.optimizer == "sgd":

        @jax.jit
        def step(params, state, x, y):
            grads = jax.grad(loss_fn)(params, x, y)
            return jax.tree.map(lambda p, g: p - w.lr * g, params, grads), state

        state = ()
    else:

        @jax.jit
        def step(params, state, x, y):
            grads = jax.grad(loss_fn)(params, x, y)
            m, v, t = state
            t = t + 1.0
            m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, grads)
            v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, grads)
            scale = w.lr * jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)
            params = jax.tree.map(
                lambda p, m, v: p - scale * m / (jnp.sqrt(v) + 1e-8), params, m, v
            )
            return params, (m, v, t)

        zeros = jax.tree.map(jnp.zeros_like, params)
        state = (zeros, zeros, jnp.float32(0.0))
    rng = np.random.default_rng(0)
    holder = {"params": params, "state": state}

    def train(epochs: int) -> None:
        params, state = holder["params"], holder["state"]
        for _ in range(epochs):
            order = rng.permutation(len(w.X))
            for start in range(0, len(w.X), w.batch):
                rows = order[start : start + w.batch]
                params, state = step(params, state, w.X[rows], w.y[rows])
        jax.block_until_ready(params)
        holder["params"], holder["state"] = params, state

    return train


def pytensor_trainer(w: Workload, threads: int) -> Callable[[int], None]:
    """PyTensor: one compiled function per step (symbolic gradients, in-place updates)."""
    import pytensor
    import pytensor.tensor as pt

    pytensor.config.floatX = "float32"
    x, y = pt.matrix("x", dtype="float32"), pt.ivector("y")
    shared = [
        (pytensor.shared(W, name=f"W{k}"), pytensor.shared(b, name=f"b{k}"))
        for k, (W, b) in enumerate(_init_params(w))
    ]
    act = (lambda z: pt.maximum(z, 0)) if w.activation == "relu" else pt.tanh
    h = x
    for W, b in shared[:-1]:
        h = act(pt.dot(h, W) + b)
    W, b = shared[-1]
    logp = pt.special.log_softmax(pt.dot(h, W) + b, axis=-1)
    loss = -pt.mean(logp[pt.arange(y.shape[0]), y])
    flat = [p for pair in shared for p in pair]
    grads = pytensor.grad(loss, flat)
    updates = []
    if w.optimizer == "sgd":
        updates = [(p, p - np.float32(w.lr) * g) for p, g in zip(flat, grads)]
    else:
        t = pytensor.shared(np.float32(0.0), name="t")
        t_new = t + 1
        scale = np.float32(w.lr) * pt.sqrt(1 - 0.999**t_new) / (1 - 0.9**t_new)
        updates.append((t, t_new))
        for p, g in zip(flat, grads):
            m = pytensor.shared(np.zeros_like(p.get_value()))
            v = pytensor.shared(np.zeros_like(p.get_value()))
            m_new = np.float32(0.9) * m + np.float32(0.1) * g
            v_new = np.float32(0.999) * v + np.float32(0.001) * g * g
            updates += [(m, m_new), (v, v_new)]
            updates.append((p, p - pt.cast(scale, "float32") * m_new / (pt.sqrt(v_new) + 1e-8)))
    updates = [(var, pt.cast(value, var.dtype)) for var, value in updates]
    step = pytensor.function([x, y], loss, updates=updates)
    rng = np.random.default_rng(0)

    return _epochs(w, step, rng)


def _epochs(
    w: Workload, step: Callable[[np.ndarray, np.ndarray], object], rng: np.random.Generator
) -> Callable[[int], None]:
    """train(epochs): ``step`` on each mini-batch of a fresh permutation per epoch, the last
    partial batch included (the loop the Python-driven peers share)."""

    def train(epochs: int) -> None:
        for _ in range(epochs):
            order = rng.permutation(len(w.X))
            for start in range(0, len(w.X), w.batch):
                rows = order[start : start + w.batch]
                step(w.X[rows], w.y[rows])

    return train


def numpy_trainer(w: Workload, threads: int) -> Callable[[int], None]:
    """NumPy with backpropagation written out by hand (SGD only; its BLAS picks threads)."""
    if w.optimizer != "sgd":
        raise ValueError("the NumPy peer implements SGD only")
    params = _init_params(w)
    relu = w.activation == "relu"
    rng = np.random.default_rng(0)
    lr = np.float32(w.lr)

    def step(x: np.ndarray, y: np.ndarray) -> None:
        outs = [x]
        for W, b in params[:-1]:
            z = outs[-1] @ W + b
            outs.append(np.maximum(z, 0, out=z) if relu else np.tanh(z, out=z))
        W, b = params[-1]
        z = outs[-1] @ W + b
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        z[np.arange(len(y)), y] -= 1.0
        delta = z / np.float32(len(y))
        for k in range(len(params) - 1, -1, -1):
            W, b = params[k]
            back = delta @ W.T if k > 0 else None
            W -= lr * (outs[k].T @ delta)
            b -= lr * delta.sum(axis=0)
            if back is not None:
                h = outs[k]
                delta = back * (h > 0) if relu else back * (1 - h * h)

    return _epochs(w, step, rng)


#: peer name -> (module it needs, trainer); graphc is timed against each that imports
PEERS: dict[str, tuple[str, Callable[[Workload, int], Callable[[int], None]]]] = {
    "torch": ("torch", torch_trainer),
    "torch.compile": ("torch", lambda w, t: torch_trainer(w, t, compiled=True)),
    "jax": ("jax", jax_trainer),
    "pytensor": ("pytensor", pytensor_trainer),
    "numpy": ("numpy", numpy_trainer),
}


def torch_version() -> str | None:
    """PyTorch's version, or None when it cannot be imported."""
    try:
        import torch
    except ImportError:
        return None
    return str(torch.__version__)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run both workloads, print the table and return {workload: {metric: value}}."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="less data and fewer epochs")
    parser.add_argument("--threads", type=int, default=2, help="threads for both (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timings per median (>= 3)")
    args = parser.parse_args(argv)
    repeats = max(3, args.repeats or (3 if args.quick else 5))
    load_before = os.getloadavg()[0]
    version = torch_version()
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, graphc "
        f"{gc.__version__}, {os.cpu_count()} CPUs, {args.threads} threads, median of "
        f"{repeats} timings after 1 warm-up epoch"
    )
    if version is None:
        print(
            "PyTorch is not installed: skipping the PyTorch comparison "
            "(pip install torch==2.13.0 to include it)"
        )
    else:
        print(f"PyTorch {version} eager, torch.set_num_threads({args.threads})")
    results: dict[str, dict[str, float]] = {}
    header = (
        f"{'workload':34} {'rows':>5} {'epochs':>6} {'graphc/s':>10} {'torch/s':>10} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    benchmarks = workloads(args.quick)
    for w in benchmarks:
        trainers = {"graphc": graphc_trainer(w, args.threads)}
        if version is not None:
            trainers["torch"] = torch_trainer(w, args.threads)
        row = median_rates(trainers, w, repeats)
        torch_text = f"{'-':>10} {'-':>6}"
        if "torch" in row:
            row["ratio"] = row["graphc"] / row["torch"]
            torch_text = f"{row['torch']:10.0f} {row['ratio']:6.2f}"
        results[w.label] = row
        print(f"{w.label:34} {len(w.X):5d} {w.epochs:6d} {row['graphc']:10.0f} {torch_text}")
    print(
        f"1-minute load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
        "(other work on the machine slows both sides; the ratio is the steadier figure)"
    )
    print_gflops(benchmarks[0], results[benchmarks[0].label])
    return results


def print_gflops(w: Workload, row: dict[str, float]) -> None:
    """Add W1's achieved GFLOP/s to ``row`` and print them, by the 6 * sum(in * out) count."""
    sides = [name for name in ("graphc", "torch") if name in row]
    for name in sides:
        row[f"{name}_gflops"] = row[name] * w.flops_per_sample / 1e9
    names = {"graphc": "graphc", "torch": "PyTorch"}
    counted = ", ".join(f"{names[n]} {row[f'{n}_gflops']:.1f}" for n in sides)
    print(
        f"W1 GFLOP/s: {counted} (counting 6 * sum(in * out) = "
        f"{w.flops_per_sample / 1e6:.2f} MFLOP per training sample)"
    )
    needed = w.needed_flops_per_sample
    executed = ", ".join(f"{names[n]} {row[n] * needed / 1e9:.1f}" for n in sides)
    print(f"W1 GFLOP/s on the {needed / 1e6:.2f} MFLOP a sample needs (no input δ): {executed}")


if __name__ == "__main__":
    main()
