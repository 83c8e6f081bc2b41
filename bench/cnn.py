"""Training throughput of LeNet-5 (examples/lenet5.py) beside PyTorch eager, channels-last.

Workload (float32): 28x28x1 digits (scikit-learn's 8x8 digits upsampled, 1257 training
images), conv 5x5x6 padding 2, relu, max-pool 2, conv 5x5x16, relu, max-pool 2, dense 120,
84, 10, softmax cross-entropy, SGD with momentum 0.9, batch 64.  graphc trains with
``model.fit`` (one call into C per epoch); PyTorch with the usual eager loop, the network
and its inputs in ``torch.channels_last`` memory format.  Both use the same threads.

Usage: python bench/cnn.py [--quick] [--threads N] [--repeats R]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np
from common import ROOT, median_rates, optional, timed

sys.path.insert(0, str(ROOT / "examples"))
import lenet5  # noqa: E402  (the example defines the graph the benchmark trains)

BATCH = lenet5.BATCH
#: forward multiply-adds of one sample, x2 for flops: conv1, conv2, fc1, fc2, out
FORWARD_FLOPS = 2 * (6 * 28 * 28 * 25 + 16 * 10 * 10 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10)
#: a training step does about three times the forward work (δ of each input but the
#: image's, and each weight gradient)
TRAIN_FLOPS = 3 * FORWARD_FLOPS - 2 * 6 * 28 * 28 * 25


def data(quick: bool) -> tuple[np.ndarray, np.ndarray]:
    """The training images (N, 1, 28, 28) and labels; ``quick`` keeps the first 512."""
    X, _, y, _ = lenet5.load_data()
    return (X[:512], y[:512]) if quick else (X, y)


def graphc_trainer(X: np.ndarray, y: np.ndarray, threads: int) -> Callable[[], None]:
    """One epoch of graphc training per call."""
    model = timed(lenet5.build_model(num_threads=threads))
    return lambda: model.fit(X, y, epochs=1, verbose=0)


def torch_trainer(X: np.ndarray, y: np.ndarray, threads: int) -> Callable[[], None]:
    """One epoch of PyTorch eager training per call, channels-last."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    ).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    images = torch.from_numpy(X).contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy(y.astype(np.int64))

    def epoch() -> None:
        order = torch.randperm(len(images))
        for start in range(0, len(images), BATCH):
            rows = order[start : start + BATCH]
            optimizer.zero_grad(set_to_none=True)
            batch = images[rows].contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(net(batch), labels[rows])
            loss.backward()
            optimizer.step()

    return epoch


#: peer name -> (module it needs, trainer)
PEERS = {"torch": ("torch", torch_trainer)}


def measure(quick: bool, threads: int, repeats: int) -> dict[str, float]:
    """Samples/s of graphc and of every installed peer, by alternating median."""
    X, y = data(quick)
    trainers = {"graphc": graphc_trainer(X, y, threads)}
    for name, (module, make) in PEERS.items():
        if optional(module) is not None:
            trainers[name] = make(X, y, threads)
    return median_rates(trainers, len(X), repeats)


def main() -> None:
    """Print samples/s of graphc and PyTorch eager (channels-last) on LeNet-5."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 images per epoch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rates = measure(args.quick, args.threads, args.repeats)
    for name, rate in rates.items():
        ratio = rates["graphc"] / rate
        print(f"LeNet-5 {name:8} {rate:10.0f} samples/s   graphc/{name} {ratio:5.2f}")
    print(f"graphc: {rates['graphc'] * TRAIN_FLOPS / 1e9:.1f} GFLOP/s ({TRAIN_FLOPS / 1e6:.2f} "
          "MFLOP per training sample)")  # fmt: skip


if __name__ == "__main__":
    main()
