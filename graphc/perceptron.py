"""Rosenblatt's perceptron: a compiled step-function neuron trained with the perceptron rule.

The forward pass is a graphc graph, o = step(x · W + b), compiled to C like any other model;
``predict`` always runs that compiled code.  Training is not gradient descent (the derivative
of a step is zero almost everywhere, so graphc refuses to differentiate through it), so the
perceptron rule

    w <- w + lr * (t - o) * x,    b <- b + lr * (t - o)

runs over the samples in NumPy, and the new weights are written into the compiled model with
``Model.set_params`` after every ``fit``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.compiler import compile as compile_graph
from graphc.graph import Graph
from graphc.model import Model
from graphc.ops.elementwise import step
from graphc.ops.linalg import matmul

_PREDICT_BATCH = 64


class Perceptron:
    """A single threshold unit o = step(w · x + b) with 0/1 outputs, trained by Rosenblatt's rule.

    ``n_inputs`` is the length of a sample, ``lr`` the learning rate η of the rule, and ``seed``
    fixes the order in which ``fit`` visits the samples in each epoch.  Weights and bias start
    at zero.  The compiled model works in float64 so that it agrees with the NumPy update.
    """

    def __init__(self, n_inputs: int, lr: float = 1.0, seed: int = 0) -> None:
        if isinstance(n_inputs, bool) or not isinstance(n_inputs, (int, np.integer)):
            raise TypeError(f"Perceptron: n_inputs must be an integer, got {n_inputs!r}")
        if n_inputs <= 0:
            raise ValueError(f"Perceptron: n_inputs must be positive, got {n_inputs}")
        if not np.isfinite(lr) or lr <= 0:
            raise ValueError(f"Perceptron: lr must be a positive number, got {lr!r}")
        self.n_inputs = int(n_inputs)
        self.lr = float(lr)
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._w = np.zeros(self.n_inputs)
        self._b = 0.0
        self.model = self._compile()
        self._sync()

    def _compile(self) -> Model:
        graph = Graph("perceptron")
        x = graph.input("x", (self.n_inputs,))
        weights = graph.param("W", (self.n_inputs, 1), init="zeros")
        bias = graph.param("b", (1,), init="zeros")
        graph.output("o", step(matmul(x, weights) + bias, name="o"))
        return compile_graph(graph, batch_size=_PREDICT_BATCH, dtype="float64", seed=self.seed)

    def _sync(self) -> None:
        """Write the NumPy weights into the compiled model, the one ``predict`` runs."""
        self.model.set_params({"W": self._w.reshape(-1, 1), "b": np.array([self._b])})

    def _check_inputs(self, X: Any, what: str) -> np.ndarray:
        array = np.asarray(X, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != self.n_inputs:
            raise ValueError(
                f"Perceptron.{what}: X must have shape (N, {self.n_inputs}), got {array.shape}"
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"Perceptron.{what}: X holds NaN or infinite values")
        return array

    def fit(self, X: Any, t: Any, epochs: int = 100, shuffle: bool = True) -> list[int]:
        """Apply the perceptron rule sample by sample; return the mistakes made in each epoch.

        ``X`` is (N, n_inputs), ``t`` holds N targets in {0, 1}.  An epoch's count is the number
        of samples the unit got wrong (and so updated on) during that epoch.  Once an epoch makes
        no mistakes the weights can no longer change, so the remaining epochs are recorded as 0
        without being run.  Calling ``fit`` again continues from the current weights.
        """
        X = self._check_inputs(X, "fit")
        targets = np.asarray(t)
        if targets.ndim == 2 and targets.shape[1] == 1:
            targets = targets[:, 0]
        if targets.shape != (X.shape[0],):
            raise ValueError(
                f"Perceptron.fit: t must hold {X.shape[0]} targets (shape (N,)), got "
                f"{targets.shape}"
            )
        if not np.all((targets == 0) | (targets == 1)):
            raise ValueError("Perceptron.fit: targets must be 0 or 1")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(
                f"Perceptron.fit: epochs must be a non-negative integer, got {epochs!r}"
            )
        targets = targets.astype(np.float64)
        errors: list[int] = []
        for _ in range(epochs):
            order = self._rng.permutation(X.shape[0]) if shuffle else np.arange(X.shape[0])
            mistakes = 0
            for i in order:
                output = 1.0 if X[i] @ self._w + self._b > 0 else 0.0
                change = self.lr * (targets[i] - output)
                if change != 0.0:
                    self._w += change * X[i]
                    self._b += change
                    mistakes += 1
            errors.append(mistakes)
            if mistakes == 0:
                errors += [0] * (epochs - len(errors))
                break
        self._sync()
        return errors

    def predict(self, X: Any) -> np.ndarray:
        """Outputs step(w · x + b) in {0, 1} for each row of ``X``, computed by the compiled C."""
        X = self._check_inputs(X, "predict")
        if X.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        outputs = self.model.predict(X)
        return outputs[:, 0].astype(np.int64)

    @property
    def weights(self) -> np.ndarray:
        """A copy of the weight vector w, shape (n_inputs,)."""
        return self.model.params["W"][:, 0].copy()

    @property
    def bias(self) -> float:
        """The bias b."""
        return float(self.model.params["b"][0])

    def __repr__(self) -> str:
        return f"<Perceptron {self.n_inputs} inputs, lr={self.lr}>"
