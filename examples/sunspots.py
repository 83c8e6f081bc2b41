"""Forecasting the yearly sunspot numbers (1700-2008) one year ahead with a recurrent network.

Data: statsmodels' bundled copy of the yearly mean sunspot numbers (``pip install
statsmodels``; the ``examples`` extra installs it).  Each input is the previous 24 years,
the target the next year's number; the model is

    x (24, 1) -> rnn(32 units, tanh, last step) -> dense(1) -> mean squared error

trained on the years up to 1920 and tested on 1921-2008, the last ~90 years it never saw.
The naive forecast "next year = this year" is the baseline to beat: the ~11-year cycle
makes it wrong by a lot on the rising and falling flanks.

Prints the test RMSE of both; ``main`` returns the network's test RMSE (in sunspot numbers).
Run from the repository root:  python examples/sunspots.py
"""

from __future__ import annotations

import sys

import numpy as np

try:
    import graphc as gc
except ImportError:  # a source checkout without install: use the repository next door
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import graphc as gc

WINDOW, HIDDEN, SPLIT_YEAR = 24, 32, 1920


def load() -> tuple[np.ndarray, np.ndarray]:
    """Years and yearly sunspot numbers."""
    try:
        from statsmodels.datasets import sunspots
    except ImportError:
        sys.exit("this example needs statsmodels: pip install statsmodels")
    data = sunspots.load_pandas().data
    return data["YEAR"].to_numpy(dtype=int), data["SUNACTIVITY"].to_numpy(dtype=float)


def windows(series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(count, WINDOW, 1) inputs and the value after each window."""
    X = np.stack([series[i : i + WINDOW] for i in range(len(series) - WINDOW)])
    return X[:, :, None].astype(np.float32), series[WINDOW:, None].astype(np.float32)


def build() -> gc.Graph:
    """The last state of a tanh RNN over the window, then a linear read-out."""
    g = gc.Graph("sunspots")
    x = g.input("x", (WINDOW, 1))
    y = g.input("y", (1,))
    h = gc.rnn(x, HIDDEN, name="rnn")
    forecast = gc.dense(h, 1, name="out")
    g.output("forecast", forecast)
    g.minimize(gc.mse(forecast, y))
    return g


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    """Root mean squared error."""
    return float(np.sqrt(np.mean((a - b) ** 2)))


def main(epochs: int = 300) -> float:
    """Train on the years up to 1920, print test RMSE against the naive forecast, return it."""
    years, values = load()
    scale = values[years <= SPLIT_YEAR].std()
    X, y = windows(values / scale)
    target_years = years[WINDOW:]
    train, test = target_years <= SPLIT_YEAR, target_years > SPLIT_YEAR
    model = gc.compile(build(), batch_size=16, optimizer=gc.Adam(lr=2e-3), seed=0)
    for epoch in range(1, epochs + 1):
        history = model.fit(X[train], y[train], epochs=1)
        if epoch % 100 == 0:
            print(f"epoch {epoch:4d}: training mse {history['loss'][-1] * 2 * scale**2:8.1f}")
    forecast = model.predict(X[test])[:, 0] * scale
    truth = y[test, 0] * scale
    naive = X[test, -1, 0] * scale
    ours, baseline = rmse(forecast, truth), rmse(naive, truth)
    first, last = target_years[test][0], target_years[test][-1]
    print(f"test years {first}-{last} ({test.sum()} forecasts, trained on {train.sum()})")
    print(f"  rnn forecast      RMSE {ours:6.1f}")
    print(f"  naive last value  RMSE {baseline:6.1f}")
    print(f"  the network's error is {ours / baseline:.0%} of the naive forecast's")
    return ours


if __name__ == "__main__":
    main()
