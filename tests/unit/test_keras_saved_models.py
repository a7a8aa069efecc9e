"""Keras: neuron removal on models saved and loaded from .keras and .h5 files, its report,
and its errors when nothing can be removed."""

from __future__ import annotations

import os

import numpy as np
import pytest

from keras_setup import MARKS, L, keras  # sets the torch backend before keras loads
pytest.importorskip("sklearn")

from sklearn.datasets import load_digits  # noqa: E402

from prunekit import PruneError  # noqa: E402
from prunekit.adapters import keras as pkk  # noqa: E402

pytestmark = [*MARKS,
    pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file"),
    pytest.mark.filterwarnings("ignore:.*load_own_variables:UserWarning"),
]


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32").reshape(-1, 8, 8, 1), y


@pytest.fixture(scope="module")
def trained(digits) -> keras.Model:
    """Conv -> Conv -> pooling -> Dense -> Dense, two epochs on digits."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(8, 3, activation="relu", name="c1"),
        L.Conv2D(16, 3, activation="relu", name="c2"),
        L.GlobalAveragePooling2D(name="gap"),
        L.Dense(32, activation="relu", name="d1"),
        L.Dense(10, name="out"),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(*digits, epochs=2, batch_size=64, verbose=0)
    return model


def _predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_remove_neurons_on_a_reloaded_model(trained, digits, tmp_path, fmt):
    x = digits[0][:256]
    model = pkk.strip(trained)
    result = pkk.prune(model, 0.5, granularity="channel")
    kept = {n: int((result.masks[f"{n}/bias"] != 0).sum()) for n in ("c1", "c2", "d1")}
    masked = _predict(model, x)
    path = tmp_path / f"pruned.{fmt}"
    keras.saving.save_model(model, path)
    loaded = keras.models.load_model(path)
    assert set(pkk.masks(loaded)) == set(result.masks)  # the masks travel with the file

    small = pkk.remove_neurons(loaded)

    assert small.count_params() < loaded.count_params() == model.count_params()
    assert small.get_layer("c1").filters == kept["c1"] < 8
    assert small.get_layer("c2").filters == kept["c2"] < 16
    assert small.get_layer("d1").units == kept["d1"] < 32
    np.testing.assert_allclose(_predict(small, x), masked, atol=1e-5)
    report = small.removal_report
    assert {c.layer: (c.before, c.after) for c in report.layers} == {
        "c1": (8, kept["c1"]), "c2": (16, kept["c2"]), "d1": (32, kept["d1"]), "out": (10, 10),
    }
    assert report.params_after == small.count_params() and report.removed == 56 - sum(kept.values())
    assert "c1" in report.summary() and f"{report.params_after:,}" in report.summary()
    assert loaded.count_params() == model.count_params()  # the loaded model is not changed


def test_remove_neurons_without_dead_units_says_so(trained):
    model = pkk.strip(trained)
    with pytest.raises(PruneError, match="no dead unit.*granularity='channel'"):
        pkk.remove_neurons(model)


def test_remove_neurons_names_the_layer_it_cannot_shrink():
    keras.utils.set_random_seed(1)
    inp = keras.Input((4,))
    a = L.Dense(8, activation="relu", name="a")(inp)
    out = L.Dense(3, name="out")(L.Add(name="add")([a, L.Dense(8, name="b")(inp)]))
    model = keras.Model(inp, out)
    mask = np.ones((4, 8), dtype="float32")
    mask[:, :3] = 0
    pkk.apply_masks(model, {"a/kernel": mask})
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(PruneError, match=r"'a' \(3 dead\).*joined with live units of 'b'"):
        pkk.remove_neurons(model)
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_masks_stay_on_the_smaller_model(trained, digits):
    """Unstructured zeros left in surviving units are still enforced on the smaller model."""
    x, y = digits
    model = pkk.strip(trained)
    pkk.prune(model, 0.5, granularity="channel")
    pkk.prune(model, 0.8)  # then single weights on top: the channel zeros stay
    small = pkk.remove_neurons(model)
    kept = pkk.masks(small)
    assert kept["d1/kernel"].shape == tuple(small.get_layer("d1").kernel.shape)
    zeros = {k: keras.ops.convert_to_numpy(small.get_layer(k.split("/")[0]).kernel) == 0 for k in kept if k.endswith("kernel")}
    small.fit(x[:512], y[:512], epochs=1, batch_size=64, verbose=0)
    for key, was_zero in zeros.items():
        now = keras.ops.convert_to_numpy(small.get_layer(key.split("/")[0]).kernel)
        assert np.all(now[was_zero] == 0), key
