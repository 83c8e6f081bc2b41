"""Greedy supervised layer-wise pretraining of a deep sigmoid network on the digits.

A network of several sigmoid hidden layers trained by plain SGD from a random start learns
slowly: the δ's shrink by σ' <= 1/4 per layer on their way down.  Greedy layer-wise
pretraining (Bengio et al., 2007) builds the network one layer at a time:

1. train a net with one hidden layer and its own softmax head;
2. add a hidden layer (and a new head) on top, compile it with the trained layers frozen
   (``frozen=``: no gradient work at all for them), copy their weights in by name
   (``set_params(..., strict=False)`` leaves the old head behind) and train the new layer;
3. repeat until the network is deep enough, then unfreeze everything (``model.unfreeze``)
   and fine-tune the whole network.

The same deep network is also trained from scratch for the same total number of epochs.
The script prints the training-loss curves and a comparison table, and ``main()`` returns
its figures (accuracies and per-epoch losses) as a dict.  About 20 s on two cores.

Run from the repository root:  python examples/greedy_pretraining.py
"""

from __future__ import annotations

import sys
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

WIDTH = 32
DEPTH = 4
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


def deep_graph(depth: int) -> gc.Graph:
    """x -> hidden1 .. hidden<depth> (sigmoid) -> a softmax head of its own, head<depth>."""
    g = gc.Graph(f"greedy{depth}")
    x = g.input("x", 64)
    y = g.input("y", (), dtype="int32")
    h = x
    for k in range(1, depth + 1):
        h = gc.dense(h, WIDTH, activation="sigmoid", name=f"hidden{k}")
    logits = gc.dense(h, 10, name=f"head{depth}")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    return g


def compile_depth(depth: int, frozen_layers: int = 0) -> "Model":
    """The depth-``depth`` network with hidden1..hidden<frozen_layers> frozen."""
    frozen = {f"hidden{k}.{p}" for k in range(1, frozen_layers + 1) for p in ("W", "b")}
    optimizer = gc.SGD(lr=0.1, momentum=0.9)
    return gc.compile(
        deep_graph(depth),
        batch_size=32,
        optimizer=optimizer,
        seed=SEED,
        frozen=frozen,
        num_threads=THREADS,
    )


def greedy(data: tuple, depth: int, epochs_per_layer: int, finetune_epochs: int) -> dict:
    """Layer by layer with the earlier layers frozen, then everything fine-tuned."""
    X_train, X_test, y_train, y_test = data
    losses: list[float] = []
    previous: Model | None = None
    for stage in range(1, depth + 1):
        model = compile_depth(stage, frozen_layers=stage - 1)
        if previous is not None:
            # hidden1..hidden<stage-1> come from the last stage; its head is left behind
            model.set_params(previous.params, strict=False)
        history = model.fit(X_train, y_train, epochs=epochs_per_layer, shuffle=True)
        losses += history["loss"]
        accuracy = model.evaluate(X_test, y_test)["accuracy"]
        print(f"  stage {stage}: trained hidden{stage} + head{stage}, test accuracy {accuracy:.4f}")
        previous = model
    model = previous.unfreeze([f"hidden{k}" for k in range(1, depth)])
    losses += model.fit(X_train, y_train, epochs=finetune_epochs, shuffle=True)["loss"]
    return {"test_accuracy": model.evaluate(X_test, y_test)["accuracy"], "loss": losses}


def scratch(data: tuple, depth: int, epochs: int) -> dict[str, Any]:
    """The same deep network from a random start, trained for as many epochs."""
    X_train, X_test, y_train, y_test = data
    model = compile_depth(depth)
    losses = model.fit(X_train, y_train, epochs=epochs, shuffle=True)["loss"]
    return {"test_accuracy": model.evaluate(X_test, y_test)["accuracy"], "loss": losses}


def curve_table(curves: dict[str, list[float]], every: int) -> str:
    """Training loss every ``every`` epochs, one column per run."""
    names = list(curves)
    lines = ["epoch  " + "  ".join(f"{n:>10}" for n in names)]
    length = max(len(c) for c in curves.values())
    for e in range(every, length + 1, every):
        values = "  ".join(f"{curves[n][e - 1]:>10.4f}" for n in names)
        lines.append(f"{e:>5}  {values}")
    return "\n".join(lines)


def main(depth: int = DEPTH, epochs_per_layer: int = 10, finetune_epochs: int = 20) -> dict:
    """Run both trainings, print the loss curves and the comparison; return the figures."""
    data = load_data()
    total = depth * epochs_per_layer + finetune_epochs
    print(f"digits, {depth} sigmoid layers of {WIDTH}, SGD(0.1, momentum 0.9), {total} epochs")
    print("greedy layer-wise pretraining:")
    pretrained = greedy(data, depth, epochs_per_layer, finetune_epochs)
    baseline = scratch(data, depth, total)
    print()
    print(
        "training loss (greedy: each stage's own net, then fine-tuning from epoch "
        f"{depth * epochs_per_layer + 1})"
    )
    curves = {"greedy": pretrained["loss"], "scratch": baseline["loss"]}
    print(curve_table(curves, every=max(1, total // 12)))
    print()
    print(f"{'run':<10} {'test accuracy':>14} {'final loss':>11}")
    for name, result in (("greedy", pretrained), ("scratch", baseline)):
        print(f"{name:<10} {result['test_accuracy']:>14.4f} {result['loss'][-1]:>11.4f}")
    return {"greedy": pretrained, "scratch": baseline, "epochs": total}


if __name__ == "__main__":
    main()
