"""LeNet-5 on handwritten digits upsampled to 28x28, trained in generated C; reports throughput.

The classic network (LeCun et al. 1998, with ReLU and max-pooling as usually done today):

    conv 5x5 x6 (padding 2) -> relu -> max-pool 2x2       (6, 28, 28) -> (6, 14, 14)
    conv 5x5 x16            -> relu -> max-pool 2x2       (16, 10, 10) -> (16, 5, 5)
    dense 120 -> relu -> dense 84 -> relu -> dense 10 -> softmax

trained with SGD (momentum 0.9) on batches of 64.  The images are scikit-learn's 8x8 digits,
upsampled to 28x28 (bilinear, scipy.ndimage.zoom) and split 70/30 stratified.  Prints the
test accuracy and the training throughput in samples per second (compilation excluded).

Run from the repository root:  python examples/lenet5.py [epochs]
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import zoom
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

try:
    import graphc as gc
except ImportError:  # a source checkout without install: use the repository next door
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import graphc as gc

if TYPE_CHECKING:
    from graphc.model import Model

BATCH = 64


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as (N, 1, 28, 28) images in [0, 1], split 70/30 (stratified, fixed seed)."""
    digits = load_digits()
    images = zoom(digits.images / 16.0, (1, 3.5, 3.5), order=1)  # 8x8 -> 28x28
    X = np.clip(images, 0.0, 1.0).astype(np.float32).reshape(-1, 1, 28, 28)
    y = digits.target.astype(np.int32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, stratify=y, shuffle=True, random_state=0
    )
    return X_train, X_test, y_train, y_test


def lenet5() -> gc.Graph:
    """The LeNet-5 graph: two convolution + pooling stages, then three dense layers."""
    g = gc.Graph("lenet5")
    x = g.input("x", (1, 28, 28))
    y = g.input("y", (), dtype="int32")
    h = gc.conv2d(x, 6, 5, padding=2, activation="relu", name="conv1", init="he")
    h = gc.max_pool2d(h, 2, name="pool1")
    h = gc.conv2d(h, 16, 5, activation="relu", name="conv2", init="he")
    h = gc.max_pool2d(h, 2, name="pool2")
    h = gc.dense(gc.flatten(h), 120, activation="relu", name="fc1", init="he")
    h = gc.dense(h, 84, activation="relu", name="fc2", init="he")
    logits = gc.dense(h, 10, name="out")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    return g


def build_model(num_threads: int | None = None) -> "Model":
    """LeNet-5 compiled for float32 training with SGD (momentum 0.9), batch 64."""
    optimizer = gc.SGD(lr=0.02, momentum=0.9)
    return gc.compile(lenet5(), batch_size=BATCH, optimizer=optimizer, num_threads=num_threads)


def main(epochs: int = 15, num_threads: int | None = None) -> dict[str, float]:
    """Train LeNet-5; print and return the test accuracy and the training throughput."""
    X_train, X_test, y_train, y_test = load_data()
    model = build_model(num_threads)
    start = time.perf_counter()
    history = model.fit(X_train, y_train, epochs=epochs, shuffle=True, seed=0)
    seconds = time.perf_counter() - start
    throughput = epochs * len(y_train) / seconds
    accuracy = model.evaluate(X_test, y_test)["accuracy"]
    print(f"LeNet-5 on {len(y_train)} digits (28x28), {epochs} epochs of SGD, batch {BATCH}")
    print(
        f"final training loss {history['loss'][-1]:.4f}, "
        f"training accuracy {history['accuracy'][-1]:.4f}"
    )
    print(f"test accuracy {accuracy:.4f} on {len(y_test)} images")
    print(f"training: {seconds:.2f} s, {throughput:.0f} samples/s")
    print(f"generated C: {model.source_path}")
    return {"accuracy": accuracy, "samples_per_second": throughput}


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
