"""Handwritten digits with a small LeNet-style convolutional network, trained in generated C.

Loads scikit-learn's 8x8 digits (1797 images) as single-channel images (1, 8, 8), splits them
70/30 (stratified, shuffled, fixed seed), scales the pixels to [0, 1] and trains

    conv 3x3 x16 (same) -> relu -> max-pool 2x2 -> conv 3x3 x32 (same) -> relu
        -> dropout 0.3 -> dense 10 -> softmax

with softmax cross-entropy and Adam (dropout is on while training only).  Prints the test
accuracy, the training time and where the generated C source lives (each kernel opens with
its equation), and exits with status 1 below 98% accuracy.

Run from the repository root (``--target cuda`` trains on a GPU):  python examples/cnn_digits.py
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

import numpy as np
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

TARGET_ACCURACY = 0.98


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as (N, 1, 8, 8) images in [0, 1], split 70/30 (stratified, fixed seed)."""
    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, stratify=y, shuffle=True, random_state=0
    )
    return X_train, X_test, y_train, y_test


def build_model(target: str = "c") -> "Model":
    """The convnet: two 3x3 convolutions around a 2x2 max-pool, then a softmax classifier."""
    g = gc.Graph("cnn_digits")
    x = g.input("x", (1, 8, 8))
    y = g.input("y", (), dtype="int32")
    h = gc.conv2d(x, 16, 3, padding="same", activation="relu", name="conv1", init="he")
    h = gc.max_pool2d(h, 2, name="pool1")  # (16, 4, 4)
    h = gc.conv2d(h, 32, 3, padding="same", activation="relu", name="conv2", init="he")
    h = gc.dropout(gc.flatten(h), 0.3, name="dropout")
    logits = gc.dense(h, 10, name="out")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    return gc.compile(g, target=target, batch_size=32, dtype="float32", optimizer=gc.Adam(lr=2e-3))


def main(epochs: int = 30, target: str = "c") -> float:
    """Train on the digits, print the test accuracy and timing; return the accuracy."""
    X_train, X_test, y_train, y_test = load_data()
    start = time.perf_counter()
    model = build_model(target)
    compiled = time.perf_counter()
    history = model.fit(X_train, y_train, epochs=epochs, shuffle=True, seed=0)
    trained = time.perf_counter()
    accuracy = model.evaluate(X_test, y_test)["accuracy"]
    print(
        f"digits convnet (conv 3x3x16, max-pool, conv 3x3x32, dropout, dense 10), "
        f"{epochs} epochs of Adam, batch {model.batch_size}"
    )
    print(
        f"final training loss {history['loss'][-1]:.4f}, "
        f"training accuracy {history['accuracy'][-1]:.4f}"
    )
    print(f"test accuracy {accuracy:.4f} on {len(y_test)} images")
    print(
        f"compile {compiled - start:.1f} s, training {trained - compiled:.1f} s "
        f"({epochs * len(y_train) / (trained - compiled):.0f} samples/s)"
    )
    print(f"generated {target} source: {model.source_path}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="c", help="c (default), cuda or cuda-emu")
    sys.exit(0 if main(target=parser.parse_args().target) >= TARGET_ACCURACY else 1)
