"""Keras 3 adapter: one-shot and gradual pruning, strip, neuron removal, save/load (torch backend)."""

from __future__ import annotations


import warnings

import numpy as np
import pytest

from keras_setup import MARKS, L, keras  # sets the torch backend before keras loads

from prunekit import PruneError, PruneTypeError  # noqa: E402
from prunekit.adapters import keras as pkk  # noqa: E402
from prunekit.coverage import CoverageWarning  # noqa: E402
from prunekit.criteria.base import Criterion  # noqa: E402
from prunekit.schedules import Gradual  # noqa: E402

pytestmark = MARKS


def _zeros(model: keras.Model, name: str) -> np.ndarray:
    return keras.ops.convert_to_numpy(model.get_layer(name).kernel) == 0


def _predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    from prunekit.datasets import load_mnist

    ds = load_mnist("train", flatten=True)
    return ds.tensors[0][:5000].numpy(), ds.tensors[1][:5000].numpy()


@pytest.fixture(scope="module")
def trained_mlp(mnist) -> keras.Model:
    """The MNIST MLP 784-128-10, one epoch on 5,000 images."""
    keras.utils.set_random_seed(0)
    x, y = mnist
    model = keras.Sequential(
        [keras.Input((784,)), L.Dense(128, activation="relu", name="hidden"), L.Dense(10, name="logits")]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    return model


@pytest.fixture
def mlp(trained_mlp) -> keras.Model:
    return pkk.strip(trained_mlp)  # a fresh, compiled copy per test


@pytest.fixture(scope="module")
def regression() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 20)).astype("float32")
    return x, (x[:, :5] @ rng.normal(size=(5, 1))).astype("float32")


def _regressor(bn: bool = False) -> keras.Model:
    """The 20-10-10-1 regression MLP (functional), optionally with BatchNormalization."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((20,))
    h = L.Dense(10, activation="relu", name="h1")(inp)
    if bn:
        h = L.BatchNormalization(name="bn")(h)
    h = L.Dense(10, activation="tanh", name="h2")(h)
    model = keras.Model(inp, L.Dense(1, name="out")(h))
    model.compile("adam", "mse")
    return model


def test_one_shot_sparsity_is_exact(mlp, mnist):
    total = 784 * 128 + 128 * 10
    for crit in ("magnitude", "normalized_magnitude", "random"):
        model = pkk.strip(mlp)
        result = pkk.prune(model, 0.9, criterion=crit)
        zeros = int(_zeros(model, "hidden").sum() + _zeros(model, "logits").sum())
        assert zeros == round(0.9 * total), crit
        assert result.sparsity == pytest.approx(round(0.9 * total) / total)
        assert set(result.masks) == {"hidden/kernel", "logits/kernel"}
        assert pkk.sparsity(model) == pytest.approx(result.sparsity)
    # gradient criteria run through the torch backend, on the compiled loss
    x, y = mnist
    for crit in ("gradient", "taylor"):
        model = pkk.strip(mlp)
        assert pkk.prune(model, 0.5, criterion=crit, data=(x[:512], y[:512])).sparsity == pytest.approx(0.5, abs=1e-5)


def test_magnitude_masks_match_the_smallest_weights(mlp):
    kernels = [keras.ops.convert_to_numpy(mlp.get_layer(n).kernel) for n in ("hidden", "logits")]
    cut = np.sort(np.abs(np.concatenate([k.ravel() for k in kernels])))[round(0.5 * sum(k.size for k in kernels)) - 1]
    result = pkk.prune(mlp, 0.5)
    for name, k in zip(("hidden", "logits"), kernels):
        np.testing.assert_array_equal(result.masks[f"{name}/kernel"] == 0, np.abs(k) <= cut)


def test_masks_hold_through_fit_with_adam(mlp, mnist):
    x, y = mnist
    result = pkk.prune(mlp, 0.8)
    before = _zeros(mlp, "hidden")
    mlp.fit(x[:1000], y[:1000], epochs=1, batch_size=50, verbose=0, callbacks=[pkk.MaskEnforcer(result.masks)])
    np.testing.assert_array_equal(_zeros(mlp, "hidden") & before, before)  # every pruned weight is still zero
    assert pkk.sparsity(mlp) == pytest.approx(result.sparsity)


def test_gradual_callback_reaches_final_sparsity(regression):
    x, y = regression
    model = _regressor()
    cb = pkk.PruningCallback(Gradual(0.75, begin=0, end=20, frequency=5))
    seen = []
    probe = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(pkk.sparsity(cb.model)))  # cb.model: synced on JAX
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb, probe])  # 64 steps
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(0.75, abs=0.01)
    assert all(a <= b + 1e-12 for a, b in zip(seen, seen[1:]))  # zeros only accumulate
    assert cb.step == 64 and cb.sparsity_ == pytest.approx(0.75, abs=0.01)
    config = cb.get_config()
    assert pkk.PruningCallback(**config).get_config() == config


def test_strip_gives_a_plain_model_with_the_same_outputs(mlp, mnist):
    x = mnist[0][:256]
    pkk.prune(mlp, 0.7)
    plain = pkk.strip(mlp)
    assert plain is not mlp and type(plain) is type(mlp)
    np.testing.assert_allclose(_predict(plain, x), _predict(mlp, x), atol=1e-6)
    assert pkk.sparsity(plain) == pytest.approx(0.7, abs=1e-4)


def test_neuron_removal_keeps_outputs_and_shrinks(mlp, regression):
    x = np.random.default_rng(0).normal(size=(64, 784)).astype("float32")
    result = pkk.prune(mlp, 0.5, granularity="channel")
    assert "logits/kernel" not in result.masks  # the output layer's units are the outputs
    small = pkk.remove_neurons(mlp)
    kept = int((result.masks["hidden/bias"] != 0).sum())
    assert tuple(small.get_layer("hidden").kernel.shape) == (784, kept) < tuple(mlp.get_layer("hidden").kernel.shape)
    assert tuple(small.get_layer("logits").kernel.shape) == (kept, 10)
    np.testing.assert_allclose(_predict(small, x), _predict(mlp, x), atol=1e-5)
    # functional, with BatchNormalization after the pruned layer: the constant outputs of
    # removed units are folded into the next layer's bias
    xr, yr = regression
    reg = _regressor(bn=True)
    reg.fit(xr, yr, epochs=2, verbose=0)
    pkk.prune(reg, 0.4, granularity="neuron", criterion="fpgm")
    small = pkk.remove_neurons(reg)
    assert small.count_params() < reg.count_params()
    assert small.get_layer("bn").get_weights()[0].shape[0] == small.get_layer("h1").kernel.shape[1]
    np.testing.assert_allclose(_predict(small, xr), _predict(reg, xr), atol=1e-5)


def test_conv2d_channel_pruning_and_removal():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([
        keras.Input((12, 12, 3)),
        L.Conv2D(8, 3, activation="relu", name="c1"),
        L.Conv2D(16, 3, padding="same", activation="relu", name="c2"),
        L.DepthwiseConv2D(3, name="dw"),
        L.GlobalAveragePooling2D(),
        L.Dense(4, name="out"),
    ])
    x = np.random.default_rng(0).normal(size=(8, 12, 12, 3)).astype("float32")
    result = pkk.prune(model, 0.5, granularity="channel", allocation="uniform")
    filters = keras.ops.convert_to_numpy(model.get_layer("c1").kernel).reshape(-1, 8)
    assert int(np.all(filters == 0, axis=0).sum()) == 4  # half of c1's filters, whole
    assert result.masks["c1/bias"].shape == (8,)
    small = pkk.remove_neurons(model)
    assert small.get_layer("c1").filters == 4 and small.get_layer("c2").kernel.shape[2] == 4
    np.testing.assert_allclose(_predict(small, x), _predict(model, x), atol=1e-5)


def test_other_layers_and_patterns():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((6,), dtype="int32"), L.Embedding(50, 8, name="emb"),
        L.Conv1D(8, 3, name="conv"), L.Flatten(), L.Dense(2, name="out"),
    ])
    result = pkk.prune(model, granularity="2:4")
    m = result.masks["emb/embeddings"].reshape(50, 2, 4)
    assert (m.sum(-1) == 2).all()
    assert result.sparsity == pytest.approx(0.5)


def test_keras_file_round_trip_of_a_pruned_model(mlp, mnist, tmp_path):
    x = mnist[0][:128]
    pkk.prune(mlp, 0.9)
    mlp.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(_predict(loaded, x), _predict(mlp, x), atol=1e-6)
    assert pkk.sparsity(loaded) == pytest.approx(0.9, abs=1e-5)


def test_h5_model_saved_elsewhere_loads_and_prunes(mnist, tmp_path, trained_mlp):
    path = tmp_path / "legacy.h5"
    trained_mlp.save(path)
    loaded = keras.models.load_model(path)
    result = pkk.prune(loaded, 0.5, criterion="gradient", data=(mnist[0][:256], mnist[1][:256]))
    assert pkk.sparsity(loaded) == pytest.approx(0.5, abs=1e-5) and result.sparsity == pytest.approx(0.5, abs=1e-5)
    _, acc = loaded.evaluate(mnist[0][:1000], mnist[1][:1000], verbose=0)
    assert acc > 0.8


def test_unsupported_layer_is_left_dense_and_named():
    model = keras.Sequential([keras.Input((5, 4)), L.LSTM(3, return_sequences=True, name="my_lstm"), L.Dense(2, name="d")])
    lstm = [w.copy() for w in model.get_layer("my_lstm").get_weights()]
    with pytest.warns(CoverageWarning, match="my_lstm.*LSTM is not supported"):
        result = pkk.prune(model, 0.5)
    assert result.layer_sparsity == {"d/kernel": 0.5}
    for before, after in zip(lstm, model.get_layer("my_lstm").get_weights()):
        np.testing.assert_array_equal(before, after)  # untouched
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)  # left out by choice: listed, not warned
        ignored = pkk.prune(pkk.strip(model), 0.5, ignore=["my_lstm"])
    assert all(s.by_choice for s in ignored.coverage.skipped)


def test_bad_inputs_raise_clear_errors(mlp):
    with pytest.raises(PruneError, match=r"sparsity must be a number in \[0, 1\); got 1.5"):
        pkk.prune(mlp, 1.5)
    with pytest.raises(PruneError, match="needs data"):
        pkk.prune(mlp, 0.5, criterion="taylor")
    with pytest.raises(PruneError, match="criterion 'apoz' needs data"):
        pkk.prune(mlp, 0.5, criterion="apoz", granularity="channel")
    class NeedsTorchForward(Criterion):  # a custom data criterion that runs a torch model
        needs_data = True

    with pytest.raises(PruneError, match="not available for Keras"):
        pkk.prune(mlp, 0.5, criterion=NeedsTorchForward(), data=(np.zeros((4, 784), "float32"), np.zeros(4)))
    with pytest.raises(PruneError, match="criterion 'wanda' needs data"):
        pkk.prune(mlp, 0.5, criterion="wanda")
    with pytest.raises(PruneError, match="names no weight"):
        pkk.apply_masks(mlp, {"nope/kernel": np.ones(3)})
    with pytest.raises(PruneTypeError, match="keras.Model"):
        pkk.prune(object(), 0.5)
