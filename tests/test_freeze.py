"""Freezing and transfer: frozen parameters get no gradient work, weights move by name."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc

pytestmark = pytest.mark.needs_cc


def two_layer(name: str, trainable_hidden: bool = True) -> gc.Graph:
    g = gc.Graph(name)
    x = g.input("x", 4)
    y = g.input("y", 2)
    h = gc.dense(x, 6, activation="tanh", name="hidden", trainable=trainable_hidden)
    out = gc.dense(h, 2, activation="sigmoid", name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    return g


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.normal(size=(24, 4)), rng.uniform(size=(24, 2))


@pytest.fixture(scope="module")
def model(data):
    m = gc.compile(
        two_layer("freeze"), batch_size=8, dtype="float64", optimizer=gc.Adam(0.01), seed=4
    )
    m.fit(*data, epochs=2)
    return m


@pytest.fixture(scope="module")
def frozen(model):
    return model.freeze("hidden")


def test_freeze_carries_everything_over(model, frozen) -> None:
    assert frozen is not model
    assert frozen.frozen == ["hidden.W", "hidden.b"]
    assert model.frozen == []
    for name, value in model.params.items():
        assert np.array_equal(frozen.params[name], value)
    assert set(frozen.optimizer_state) == {"out.W", "out.b"}
    for name, states in frozen.optimizer_state.items():
        for state, value in states.items():
            assert np.array_equal(value, model.optimizer_state[name][state])
    assert (frozen.step, frozen.epoch, frozen.seed) == (model.step, model.epoch, model.seed)


def test_frozen_params_unchanged_by_fit(frozen, data) -> None:
    before = frozen.params
    frozen.fit(*data, epochs=2)
    after = frozen.params
    assert np.array_equal(after["hidden.W"], before["hidden.W"])
    assert np.array_equal(after["hidden.b"], before["hidden.b"])
    assert not np.array_equal(after["out.W"], before["out.W"])


def test_no_gradient_work_for_frozen_params(frozen) -> None:
    source = frozen.source
    for gone in ("grad_hidden_W", "grad_hidden_b", "update_hidden_W", "update_hidden_b"):
        assert gone not in source
    assert "delta_hidden" not in source  # nothing upstream of the frozen layer needs a δ
    assert "update_out_W" in source and "grad_out_W" in source
    assert set(frozen.gradients(np.zeros((2, 4)), np.zeros((2, 2)))) == {"out.W", "out.b"}


def test_unfreeze_trains_again_with_fresh_state(frozen, data) -> None:
    thawed = frozen.unfreeze(["hidden.W", "hidden.b"])
    assert thawed.frozen == []
    assert np.array_equal(thawed.params["hidden.W"], frozen.params["hidden.W"])
    assert not np.any(thawed.optimizer_state["hidden.W"]["m"])
    np.testing.assert_array_equal(
        thawed.optimizer_state["out.W"]["v"], frozen.optimizer_state["out.W"]["v"]
    )
    before = thawed.params["hidden.W"]
    thawed.fit(*data, epochs=1)
    assert not np.array_equal(thawed.params["hidden.W"], before)


def test_freeze_errors(model) -> None:
    with pytest.raises(gc.GraphError, match="no parameter or layer 'nope'"):
        model.freeze("nope")
    declared = gc.compile(two_layer("declared", trainable_hidden=False), dtype="float64")
    assert declared.frozen == ["hidden.W", "hidden.b"]
    with pytest.raises(gc.GraphError, match="trainable=False"):
        declared.unfreeze("hidden")


def test_frozen_model_matches_declared_frozen(model, data) -> None:
    """freeze(...) behaves exactly like a graph declared with trainable=False."""
    declared = gc.compile(
        two_layer("freeze", trainable_hidden=False),
        batch_size=8,
        dtype="float64",
        optimizer=gc.Adam(0.01),
        seed=4,
    )
    frozen = model.freeze(["hidden.W", "hidden.b"])
    declared.load(frozen.checkpoint())
    frozen.fit(*data, epochs=1, seed=3)
    declared.fit(*data, epochs=1, seed=3)
    for name, value in frozen.params.items():
        assert np.array_equal(value, declared.params[name]), name


def test_set_params_by_name(model) -> None:
    g = gc.Graph("bigger")
    x = g.input("x", 4)
    y = g.input("y", 3)
    h = gc.dense(x, 6, activation="tanh", name="hidden")
    out = gc.dense(h, 3, name="head")
    g.minimize(gc.mse(out, y))
    other = gc.compile(g, dtype="float64")
    start = other.params
    other.set_params(model.params, strict=False)  # hidden.* match; out.* do not exist here
    assert np.array_equal(other.params["hidden.W"], model.params["hidden.W"])
    assert np.array_equal(other.params["head.W"], start["head.W"])
    with pytest.raises(KeyError, match="out.W"):
        other.set_params(model.params)
    with pytest.raises(ValueError, match="shape"):
        other.set_params({"head.W": np.zeros((6, 2))})


def _example(name: str):
    import importlib.util
    from pathlib import Path

    pytest.importorskip("sklearn")
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_greedy_pretraining_example_runs(capsys) -> None:
    example = _example("greedy_pretraining")
    figures = example.main(depth=2, epochs_per_layer=1, finetune_epochs=2)
    assert len(figures["greedy"]["loss"]) == len(figures["scratch"]["loss"]) == 4
    assert 0 <= figures["greedy"]["test_accuracy"] <= 1
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_autoencoder_pretraining_example_runs(capsys) -> None:
    figures = _example("autoencoder_pretraining").main(labeled=20, pretrain_epochs=2, epochs=4)
    assert figures["reconstruction"]["after"] < figures["reconstruction"]["before"]
    assert len(figures["pretrained"]["train_loss"]) == len(figures["scratch"]["train_loss"]) == 4
    assert "test accuracy" in capsys.readouterr().out
