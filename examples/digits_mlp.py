"""Handwritten digits: a 64-128-10 tanh MLP with softmax cross-entropy, trained in generated C.

Loads scikit-learn's 8x8 digits (1797 images), splits them 70/30 stratified, scales the pixels
to [0, 1], declares the network in graphc's DSL, compiles it to C and trains it with
``model.fit``.  Prints the test accuracy and where the generated C source lives (read it: every
kernel opens with the equation it implements), and exits with status 1 below 95% accuracy.

Run from the repository root (``--target cuda`` trains on a GPU):  python examples/digits_mlp.py
"""

from __future__ import annotations

import argparse
import sys
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

TARGET_ACCURACY = 0.95


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits split 70/30 (stratified, fixed seed), pixels scaled from 0..16 to [0, 1]."""
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, stratify=y, shuffle=True, random_state=0
    )
    return X_train, X_test, y_train, y_test


def build_model(target: str = "c") -> "Model":
    """The 64-128-10 network: tanh hidden layer, softmax output, cross-entropy, Adam."""
    g = gc.Graph("digits")
    x = g.input("x", (64,))
    y = g.input("y", (), dtype="int32")
    hidden = gc.dense(x, 128, activation="tanh", name="hidden")
    logits = gc.dense(hidden, 10, name="out")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    return gc.compile(g, target=target, batch_size=32, dtype="float32", optimizer=gc.Adam(lr=1e-3))


def main(epochs: int = 40, target: str = "c") -> float:
    """Train on the digits, print the test accuracy and the C source path; return the accuracy."""
    X_train, X_test, y_train, y_test = load_data()
    model = build_model(target)
    history = model.fit(X_train, y_train, epochs=epochs, shuffle=True, seed=0)
    accuracy = model.evaluate(X_test, y_test)["accuracy"]
    print(f"digits 64-128-10 tanh MLP, {epochs} epochs of Adam, batch {model.batch_size}")
    print(
        f"final training loss {history['loss'][-1]:.4f}, "
        f"training accuracy {history['accuracy'][-1]:.4f}"
    )
    print(f"test accuracy {accuracy:.4f} on {len(y_test)} images")
    print(f"generated {target} source: {model.source_path}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="c", help="c (default), cuda or cuda-emu")
    sys.exit(0 if main(target=parser.parse_args().target) >= TARGET_ACCURACY else 1)
