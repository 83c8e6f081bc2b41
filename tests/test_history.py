"""fit's history, callbacks, progress bar and model.summary()."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graphc as gc


@pytest.fixture(scope="module")
def model_and_data():
    g = gc.Graph("hist")
    x = g.input("x", (6,))
    y = g.input("y", (), dtype="int32")
    h = gc.dense(x, 8, activation="tanh", name="hidden")
    logits = gc.dense(h, 3, name="out")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 6))
    Y = (X[:, 0] > 0).astype(np.int32) + (X[:, 1] > 0.5)
    return g, X, Y


def test_history_save_load_plot(model_and_data, tmp_path):
    g, X, Y = model_and_data
    model = gc.compile(g, batch_size=16, optimizer=gc.Adam(0.01), seed=0)
    history = model.fit(X, Y, epochs=4, validation_data=(X[:30], Y[:30]), verbose=0)
    assert len(history) == 4 and set(history.history) == {
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
    }
    history.save(str(tmp_path / "h.json"))
    history.save(str(tmp_path / "h.csv"))
    assert json.loads((tmp_path / "h.json").read_text())["loss"] == history["loss"]
    again = gc.History.load(str(tmp_path / "h.csv"))
    np.testing.assert_allclose(again["val_accuracy"], history["val_accuracy"])
    with pytest.raises(ValueError, match=".json or .csv"):
        history.save(str(tmp_path / "h.txt"))
    pytest.importorskip("matplotlib")
    history.plot(str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_early_stopping_restores_best(model_and_data):
    g, X, Y = model_and_data
    model = gc.compile(g, batch_size=16, optimizer=gc.SGD(5.0), seed=0)  # too large: it diverges
    stop = gc.EarlyStopping("val_loss", patience=2)
    history = model.fit(X, Y, epochs=40, callbacks=[stop], validation_data=(X, Y), verbose=0)
    assert stop.stopped_epoch is not None and len(history) == stop.stopped_epoch < 40
    assert stop.best == min(history["val_loss"])
    # the parameters of the best epoch are back: evaluating them gives the best val_loss
    assert model.evaluate(X, Y)["loss"] == pytest.approx(stop.best, rel=1e-6)
    with pytest.raises(KeyError, match="validation_data"):
        model.fit(X, Y, epochs=1, callbacks=[gc.EarlyStopping("val_loss")], verbose=0)


def test_checkpoint_every(model_and_data, tmp_path):
    g, X, Y = model_and_data
    model = gc.compile(g, batch_size=16, optimizer=gc.SGD(0.1), seed=0)
    saver = gc.CheckpointEvery(str(tmp_path / "ep{epoch}.gcck"), every=2)
    model.fit(X, Y, epochs=5, callbacks=[saver], verbose=0)
    assert [p.rsplit("/", 1)[1] for p in saver.saved] == ["ep2.gcck", "ep4.gcck"]
    fresh = gc.compile(g, batch_size=16, optimizer=gc.SGD(0.1), seed=1)
    fresh.load(saver.saved[-1])
    assert fresh.epoch == 4


def test_progress_bar_shows_metrics(model_and_data, capsys):
    g, X, Y = model_and_data
    model = gc.compile(g, batch_size=16, optimizer=gc.SGD(0.1), seed=0)
    model.fit(X, Y, epochs=2, verbose=1)
    err = capsys.readouterr().err
    assert "2/2" in err and "loss=" in err and "accuracy=" in err and "samples/s=" in err
    model.fit(X, Y, epochs=2, verbose=0)
    assert capsys.readouterr().err == ""


def test_summary(model_and_data):
    g, _, _ = model_and_data
    text = gc.compile(g, batch_size=16, optimizer=gc.SGD(0.1)).summary()
    assert "hidden" in text and "(batch, 8)" in text
    assert "parameters: 83 (83 trainable)" in text  # 6*8+8 + 8*3+3
    # forward FLOPs: 2*6*8 + 8 (bias) + 8 (tanh) + 2*8*3 + 3 + softmax 3 + loss 1
    assert "forward FLOPs per sample: 167" in text
    assert "arena:" in text
