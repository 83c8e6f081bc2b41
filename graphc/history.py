"""Per-epoch training metrics, and the callbacks ``fit`` calls after each epoch."""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any


class History:
    """Per-epoch metrics of ``fit``: ``history['loss']``, ``['accuracy']``, ``['val_loss']``..."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}

    def append(self, **metrics: float) -> None:
        """Record one epoch."""
        for key, value in metrics.items():
            self.history.setdefault(key, []).append(float(value))

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return len(self.history.get("loss", []))

    def __repr__(self) -> str:
        last = {k: round(v[-1], 5) for k, v in self.history.items() if v}
        return f"<History {len(self)} epochs, last {last}>"

    def save(self, path: str) -> None:
        """Write the metrics as JSON (``.json``) or CSV (``.csv``, one row per epoch)."""
        ext = os.path.splitext(path)[1].lower()
        if ext == ".json":
            with open(path, "w") as f:
                json.dump(self.history, f, indent=2)
        elif ext == ".csv":
            keys = list(self.history)
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["epoch", *keys])
                for epoch in range(len(self)):
                    writer.writerow([epoch + 1, *(self.history[k][epoch] for k in keys)])
        else:
            raise ValueError(f"History.save: use a .json or .csv file name, got {path!r}")

    @classmethod
    def load(cls, path: str) -> "History":
        """Read a history written by ``save`` (JSON or CSV)."""
        history = cls()
        if path.lower().endswith(".json"):
            with open(path) as f:
                history.history = {k: [float(v) for v in vs] for k, vs in json.load(f).items()}
        else:
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    history.append(**{k: float(v) for k, v in row.items() if k != "epoch"})
        return history

    def plot(self, path: str | None = None):
        """Loss (and accuracy) per epoch, train and validation; saved as PNG when ``path`` is given.

        Needs matplotlib (``pip install graphc[plot]``); returns the figure.
        """
        try:
            import matplotlib

            if path is not None:
                matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError("History.plot needs matplotlib: pip install matplotlib") from exc
        panels = [m for m in ("loss", "accuracy") if m in self.history]
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
        epochs = range(1, len(self) + 1)
        for ax, metric in zip(axes[0], panels):
            ax.plot(epochs, self.history[metric], label=f"train {metric}")
            if f"val_{metric}" in self.history:
                ax.plot(epochs, self.history[f"val_{metric}"], label=f"validation {metric}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=100)
        return fig


class Callback:
    """Called by ``fit`` after every epoch; return True from ``on_epoch_end`` to stop."""

    def on_train_begin(self, model: Any) -> None:
        """Before the first epoch."""

    def on_epoch_end(self, model: Any, epoch: int, metrics: dict[str, float]) -> bool:
        """After each epoch (1-based ``epoch``); True stops training."""
        return False

    def on_train_end(self, model: Any) -> None:
        """After the last epoch."""


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best=True`` the parameters of the best epoch are put back at the end.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best: bool = True,
    ) -> None:
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min', 'max' or 'auto', not {mode!r}")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.mode, self.restore_best = mode, restore_best
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.stopped_epoch: int | None = None
        self._best_params: dict | None = None

    def on_train_begin(self, model: Any) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch, self.stopped_epoch, self._best_params = 0, None, None

    def on_epoch_end(self, model: Any, epoch: int, metrics: dict[str, float]) -> bool:
        if self.monitor not in metrics:
            raise KeyError(
                f"EarlyStopping monitors {self.monitor!r} but fit reports {sorted(metrics)}; "
                "pass validation_data to fit for val_* metrics"
            )
        value = metrics[self.monitor]
        better = (
            value < self.best - self.min_delta
            if self.mode == "min"
            else value > self.best + self.min_delta
        )
        if better:
            self.best, self.best_epoch = value, epoch
            if self.restore_best:
                self._best_params = model.params
            return False
        if epoch - self.best_epoch >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, model: Any) -> None:
        if self.restore_best and self._best_params is not None:
            model.set_params(self._best_params)


class CheckpointEvery(Callback):
    """Save a checkpoint every ``every`` epochs; ``path`` may contain ``{epoch}``."""

    def __init__(self, path: str, every: int = 1) -> None:
        if every <= 0:
            raise ValueError("CheckpointEvery: every must be a positive number of epochs")
        self.path, self.every = path, int(every)
        self.saved: list[str] = []

    def on_epoch_end(self, model: Any, epoch: int, metrics: dict[str, float]) -> bool:
        if epoch % self.every == 0:
            path = self.path.format(epoch=epoch)
            model.save(path)
            self.saved.append(path)
        return False
