"""Unsupervised pretraining: an autoencoder's encoder becomes a classifier's first layer.

Only a few of the digits carry labels here (``labeled`` images, 50 by default); the other
training images are used without their labels.

1. An autoencoder 64 -> 32 -> 64 (sigmoid encoder ``enc``, sigmoid decoder ``dec``) learns
   to reconstruct every training image (mean squared error, no labels).
2. A classifier 64 -> 32 -> 10 whose first layer is also named ``enc`` takes the encoder's
   weights by name (``set_params(..., strict=False)`` skips the decoder), trains its
   softmax head with the encoder frozen, and is then fine-tuned as a whole on the
   labeled images.
3. The same classifier is trained from a random start on the same labeled images.

A checkpoint carries the encoder from one model to the other, as it would between two
runs: ``autoencoder.save(path)`` then ``gc.load(path).params``.  The script prints the
reconstruction error and a comparison table; ``main()`` returns its figures as a dict.
About 10 s on two cores.

Run from the repository root:  python examples/autoencoder_pretraining.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import TYPE_CHECKING, Any

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

CODE = 32
SEED = 0
#: these nets are small: one thread beats a team's per-kernel synchronisation (and the
#: results are bit-identical for any thread count)
THREADS = 1


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits split 70/30 (stratified, fixed seed), pixels scaled from 0..16 to [0, 1]."""
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    return tuple(train_test_split(X, y, test_size=0.3, stratify=y, random_state=0))


def labeled_subset(X: np.ndarray, y: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` // 10 images of every class."""
    rows = np.concatenate([np.flatnonzero(y == c)[: count // 10] for c in range(10)])
    return X[rows], y[rows]


def autoencoder() -> "Model":
    """x -> enc (sigmoid, CODE units) -> dec (sigmoid, 64 units) ≈ x."""
    g = gc.Graph("autoencoder")
    x = g.input("x", 64)
    code = gc.dense(x, CODE, activation="sigmoid", name="enc")
    recon = gc.dense(code, 64, activation="sigmoid", name="dec")
    g.output("recon", recon)
    g.minimize(gc.mse(recon, x))
    return gc.compile(g, batch_size=32, optimizer=gc.Adam(lr=3e-3), seed=SEED, num_threads=THREADS)


def classifier() -> "Model":
    """x -> enc (sigmoid, CODE units, same names as the autoencoder's) -> softmax head."""
    g = gc.Graph("classifier")
    x = g.input("x", 64)
    y = g.input("y", (), dtype="int32")
    code = gc.dense(x, CODE, activation="sigmoid", name="enc")
    logits = gc.dense(code, 10, name="head")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    return gc.compile(g, batch_size=16, optimizer=gc.Adam(lr=1e-2), seed=SEED, num_threads=THREADS)


def main(labeled: int = 50, pretrain_epochs: int = 60, epochs: int = 100) -> dict[str, Any]:
    """Pretrain, transfer, fine-tune; train from scratch; print and return the figures."""
    X_train, X_test, y_train, y_test = load_data()
    X_few, y_few = labeled_subset(X_train, y_train, labeled)
    print(
        f"digits: {len(X_train)} training images, {len(X_few)} of them labeled; "
        f"{len(X_test)} test images"
    )

    ae = autoencoder()
    before = ae.evaluate(X_test)["loss"]
    history = ae.fit(X_train, epochs=pretrain_epochs, shuffle=True)
    after = ae.evaluate(X_test)["loss"]
    print(
        f"autoencoder: test reconstruction loss {before:.3f} -> {after:.3f} "
        f"after {pretrain_epochs} epochs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "autoencoder.gcc")
        ae.save(path)
        encoder = gc.load(path).params  # enc.W, enc.b, dec.W, dec.b

    head_epochs = epochs // 4
    pretrained = classifier()
    pretrained.set_params(encoder, strict=False)  # enc.* only: the classifier has no dec.*
    pretrained = pretrained.freeze("enc")
    curve = pretrained.fit(X_few, y_few, epochs=head_epochs, shuffle=True)["loss"]
    pretrained = pretrained.unfreeze("enc")
    curve += pretrained.fit(X_few, y_few, epochs=epochs - head_epochs, shuffle=True)["loss"]

    scratch = classifier()
    scratch_curve = scratch.fit(X_few, y_few, epochs=epochs, shuffle=True)["loss"]

    results = {
        "pretrained": {
            "test_accuracy": pretrained.evaluate(X_test, y_test)["accuracy"],
            "train_loss": curve,
        },
        "scratch": {
            "test_accuracy": scratch.evaluate(X_test, y_test)["accuracy"],
            "train_loss": scratch_curve,
        },
        "reconstruction": {"before": before, "after": after, "loss": history["loss"]},
    }
    print()
    print(f"{'classifier':<12} {'test accuracy':>14} {'final train loss':>17}")
    for name in ("pretrained", "scratch"):
        r = results[name]
        print(f"{name:<12} {r['test_accuracy']:>14.4f} {r['train_loss'][-1]:>17.4f}")
    return results


if __name__ == "__main__":
    main()
