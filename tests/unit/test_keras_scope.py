"""Keras: what a pruning call covers (and warns about leaving dense), and how global channel
pruning shares the target between layers of very different fan-in."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from keras_setup import MARKS, L, keras  # sets the torch backend before keras loads

from prunekit import PruneError  # noqa: E402
from prunekit.adapters import keras as pkk  # noqa: E402
from prunekit.coverage import CoverageWarning  # noqa: E402

pytestmark = MARKS


def _zero_fraction(model: keras.Model, keys: list[str]) -> float:
    arrays = [keras.ops.convert_to_numpy(model.get_layer(k.split("/")[0]).kernel) for k in keys]
    return sum(int((a == 0).sum()) for a in arrays) / sum(a.size for a in arrays)


@pytest.mark.parametrize("rnn", [L.LSTM, L.GRU])
def test_recurrent_layers_are_listed_as_skipped_and_warned(rnn):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8)), rnn(32, name="rnn"), L.Dense(10, name="head")])
    with pytest.warns(CoverageWarning, match=f"layer type {rnn.__name__} is not supported by prunekit.keras"):
        result = pkk.prune(model, 0.5)
    cov = result.coverage
    names = {s.name: s for s in cov.skipped}
    cell = "lstm_cell" if rnn is L.LSTM else "gru_cell"
    assert {f"rnn/{cell}/kernel", f"rnn/{cell}/recurrent_kernel"} <= set(names)
    assert names[f"rnn/{cell}/kernel"].reason == f"layer type {rnn.__name__} is not supported by prunekit.keras"
    assert cov.covered == 32 * 10 and cov.total == model.count_params()
    assert result.layer_sparsity == {"head/kernel": 0.5}
    assert result.sparsity == _zero_fraction(model, ["head/kernel"]) == 0.5
    assert "rnn/" in result.summary() and "not supported" in result.summary()
    recurrent = keras.ops.convert_to_numpy(model.get_layer("rnn").weights[0])
    assert np.count_nonzero(recurrent == 0) == 0  # left dense


def test_conv_transpose_and_choices_in_coverage():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(8, 3, padding="same", name="enc"),
        L.BatchNormalization(name="bn"),
        L.Conv2DTranspose(8, 3, padding="same", name="dec"),
        L.GlobalAveragePooling2D(),
        L.Dense(32, name="d"),
        L.Dense(4, name="out"),
    ])
    with pytest.warns(CoverageWarning, match="Conv2DTranspose"):
        result = pkk.prune(model, 0.5, granularity="channel", ignore=["d"])
    reasons = {s.name: (s.reason, s.by_choice) for s in result.coverage.skipped}
    assert reasons["dec/kernel"] == ("layer type Conv2DTranspose is not supported by prunekit.keras", False)
    assert reasons["d/kernel"][1] and "ignore=" in reasons["d/kernel"][0]
    assert reasons["out/kernel"][1] and "output" in reasons["out/kernel"][0]
    assert not any(n.startswith("bn/") for n in reasons)  # 1-D scales are counted, not listed
    assert result.coverage.covered == 3 * 3 * 1 * 8
    assert result.sparsity == _zero_fraction(model, ["enc/kernel"])


def test_a_fully_covered_model_does_not_warn():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20,)), L.Dense(16, name="a"), L.Dense(4, name="b")])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        result = pkk.prune(model, 0.6)
    assert result.coverage.skipped == () and result.coverage.covered == 20 * 16 + 16 * 4
    assert result.sparsity == _zero_fraction(model, ["a/kernel", "b/kernel"])
    assert len(repr(result)) < 300 and f"sparsity={result.sparsity:.4f}" in repr(result)  # no mask arrays


def test_nothing_prunable_names_what_was_left():
    model = keras.Sequential([keras.Input((5, 4)), L.LSTM(3, name="only_lstm")])
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(PruneError, match="only_lstm/lstm_cell/kernel.*LSTM is not supported"):
        pkk.prune(model, 0.5)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def _dense_fan_in() -> keras.Model:
    """512 inputs -> 8 units -> 128 units: column norms differ ~4x between the two layers."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((512,)), L.Dense(8, activation="relu", name="a"),
        L.Dense(128, activation="relu", name="b"), L.Dense(10, name="out"),
    ])


def _conv_fan_in() -> keras.Model:
    """Fan-in 9 (first conv), 144 (second conv) and 64 (dense)."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8, 8, 1)), L.Conv2D(16, 3, activation="relu", name="c1"),
        L.Conv2D(64, 3, activation="relu", name="c2"), L.GlobalAveragePooling2D(),
        L.Dense(8, activation="relu", name="d1"), L.Dense(10, name="out"),
    ])


@pytest.mark.parametrize("build", [_dense_fan_in, _conv_fan_in], ids=["dense", "conv"])
@pytest.mark.parametrize("allocation", ["global", "lamp"])
def test_global_channel_pruning_never_collapses_a_layer(build, allocation):
    model = build()
    result = pkk.prune(model, 0.5, granularity="channel", allocation=allocation)
    for layer in result.layers:
        kept = layer.units - layer.pruned_units
        assert kept >= 0.1 * layer.units, (layer.name, kept, layer.units)
    assert result.sparsity == pytest.approx(0.5, abs=0.03)
    assert result.sparsity == _zero_fraction(model, [l.name for l in result.layers])


def test_channel_cap_can_be_set():
    model = _dense_fan_in()
    result = pkk.prune(model, 0.5, granularity="channel", max_sparsity=0.6)
    assert all(l.pruned_units <= 0.6 * l.units for l in result.layers)
    with pytest.raises(PruneError, match=r"max_sparsity must be a number in \(0, 1\] \(or None for no cap\); got 1.5"):
        pkk.prune(model, 0.5, granularity="channel", max_sparsity=1.5)
