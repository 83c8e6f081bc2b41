"""Train the digits MLP in Python, export it as plain C99, build it and run it on the test set.

    python examples/embedded/train_and_export.py [OUT_DIR]

The export in OUT_DIR (default examples/embedded/digits_export) is a self-contained C
project: digits.h, digits.c, digits_weights.c (const weights), main.c, a Makefile and a
CMakeLists.txt. The script builds it with `make`, feeds it the held-out digits on stdin
and checks that its classes equal model.predict's.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

try:
    import graphc as gc
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    import graphc as gc


def main(out_dir: str | None = None) -> float:
    """Train, export, build, run; returns the exported program's test accuracy."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_export")
    data = load_digits()
    X = data.data / 16.0
    X_train, X_test, y_train, y_test = train_test_split(
        X, data.target, test_size=0.3, stratify=data.target, random_state=0
    )
    g = gc.Graph("digits")
    x = g.input("x", (64,))
    y = g.input("y", (), dtype="int32")
    h = gc.dense(x, 32, activation="tanh", name="hidden")
    logits = gc.dense(h, 10, name="out")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    model = gc.compile(g, batch_size=32, optimizer=gc.Adam(lr=0.01), seed=0)
    model.fit(X_train, y_train, epochs=30)

    result = model.export(out_dir)
    print(result.report())
    subprocess.run(["make", "-s", "-C", out_dir], check=True)
    rows = "\n".join(" ".join(f"{v:.9g}" for v in row) for row in X_test)
    out = subprocess.run(
        [os.path.join(out_dir, "digits")], input=rows, capture_output=True, text=True, check=True
    ).stdout
    probs = np.array([[float(v) for v in line.split()] for line in out.strip().splitlines()])
    agree = (probs.argmax(1) == model.predict(X_test).argmax(1)).mean()
    accuracy = (probs.argmax(1) == y_test).mean()
    print(
        f"exported C program: test accuracy {accuracy:.4f}, agrees with model.predict on "
        f"{agree:.1%} of rows"
    )
    return float(accuracy)


if __name__ == "__main__":
    acc = main(sys.argv[1] if len(sys.argv) > 1 else None)
    sys.exit(0 if acc >= 0.95 else 1)
