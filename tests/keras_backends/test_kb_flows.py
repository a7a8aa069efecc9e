"""The classic tf.keras pruning flows, on the Keras backend of this process (``make test``
runs them on TensorFlow, JAX and PyTorch): the MNIST MLP pruned by magnitude with a
threshold and fine-tuned, the 20-10-10-1 regression MLP with neuron removal, and a CNN pruned during
training on a polynomial schedule."""

from __future__ import annotations

import numpy as np
import pytest

from kb_setup import MARKS, L, digits, keras

import prunekit.keras as pkk  # noqa: E402
from prunekit import PruneError  # noqa: E402
from prunekit.schedules import Gradual  # noqa: E402

pytestmark = MARKS
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


@pytest.mark.slow
def test_mnist_mlp_pruned_by_magnitude_with_a_threshold():
    from prunekit.datasets import load_mnist

    train, test = load_mnist("train"), load_mnist("test")
    x, y = train.tensors[0][:6000].reshape(-1, 28, 28).numpy(), train.tensors[1][:6000].numpy()
    xt, yt = test.tensors[0][:2000].reshape(-1, 28, 28).numpy(), test.tensors[1][:2000].numpy()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28)), L.Flatten(), L.Dense(128, activation="relu", name="hidden"),
                              L.Dropout(0.2), L.Dense(10, name="logits")])
    model.compile("adam", LOSS, metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    dense_acc = model.evaluate(xt, yt, verbose=0)[1]
    model = pkk.wrap(model)
    kernels = {n: _np(model.get_layer(n).layer.kernel) for n in ("hidden", "logits")}
    result = pkk.prune(model, threshold=0.2)  # |w| <= 0.2 · (largest |w| of its layer) goes
    for n, k in kernels.items():
        np.testing.assert_array_equal(result.masks[f"{n}/kernel"] == 0, np.abs(k) <= 0.2 * np.abs(k).max())
    total = 784 * 128 + 128 * 10
    expected = sum(int((np.abs(k) <= 0.2 * np.abs(k).max()).sum()) for k in kernels.values()) / total
    assert result.sparsity == pytest.approx(expected) and result.sparsity > 0.3
    model.compile("adam", LOSS, metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    acc = model.evaluate(xt, yt, verbose=0)[1]
    assert pkk.sparsity(model) == pytest.approx(result.sparsity)
    assert acc > dense_acc - 0.02 and acc > 0.88, (dense_acc, acc)
    plain = pkk.strip(model)
    np.testing.assert_allclose(_np(plain(xt[:128])), _np(model(xt[:128])), atol=1e-5)


def test_regression_mlp_20_10_10_1_with_neuron_removal():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 20)).astype("float32")
    y = (x[:, :5] @ rng.normal(size=(5, 1))).astype("float32")
    keras.utils.set_random_seed(1)
    inp = keras.Input((20,))
    h = L.Dense(10, activation="relu", name="h1")(inp)
    h = L.Dense(10, activation="relu", name="h2")(h)
    model = keras.Model(inp, L.Dense(1, name="out")(h))
    model.compile("adam", "mse")
    model.fit(x, y, epochs=20, batch_size=32, verbose=0)
    result = pkk.prune(model, 0.4, granularity="neuron")
    dead = sum(int((m == 0).sum()) for k, m in result.masks.items() if k.endswith("/bias"))
    small = pkk.remove_neurons(model)
    assert small.count_params() < model.count_params()
    assert small.removal_report.removed == dead >= 5  # every dead hidden unit goes
    np.testing.assert_allclose(_np(small(x)), _np(model(x)), atol=1e-5)


@pytest.mark.slow
def test_cnn_pruned_during_training_on_a_polynomial_schedule():
    x, y = digits(1024, images=True)
    keras.utils.set_random_seed(2)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), L.Conv2D(8, 3, activation="relu", name="c1"), L.MaxPooling2D(),
        L.Conv2D(16, 2, activation="relu", name="c2"), L.Flatten(), L.Dense(10, name="out"),
    ])
    model.compile(keras.optimizers.Adam(3e-3), LOSS, metrics=["accuracy"])
    model.fit(x, y, epochs=4, batch_size=32, verbose=0)
    dense_acc = model.evaluate(x, y, verbose=0)[1]
    model = pkk.wrap(model)
    model.compile(keras.optimizers.Adam(3e-3), LOSS, metrics=["accuracy"])
    cb = pkk.PruningCallback(Gradual(0.8, begin=0, end=64, frequency=8))  # cubic ramp, Zhu & Gupta
    seen = []
    probe = keras.callbacks.LambdaCallback(  # every 4th step (reading the model syncs JAX's state)
        on_train_batch_end=lambda b, logs: seen.append(pkk.sparsity(cb.model)) if b % 4 == 3 else None)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[cb, probe])  # 96 steps
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(0.8, abs=0.01)
    assert all(a <= b + 1e-12 for a, b in zip(seen, seen[1:]))
    assert 0 < seen[7] < 0.8 * (1 - (1 - 32 / 64) ** 3) + 0.05  # step 31: still ramping
    acc = model.evaluate(x, y, verbose=0)[1]
    assert acc > dense_acc - 0.1 and acc > 0.6, (dense_acc, acc)


def test_conv_filters_removed_through_flatten_into_dense():
    x, _ = digits(64, images=True)
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), L.Conv2D(8, 3, activation="relu", name="c1"), L.MaxPooling2D(name="pool"),
        L.Flatten(name="flat"), L.Dropout(0.1), L.Dense(16, activation="relu", name="d1"), L.Dense(10, name="out"),
    ])
    model = pkk.wrap(model)
    result = pkk.prune(model, 0.5, granularity="channel", allocation="uniform")
    dead = int((result.masks["c1/bias"] == 0).sum())
    assert dead == 4
    small = pkk.remove_neurons(model)
    report = {c.layer: c for c in small.removal_report.layers}
    assert report["c1"].after == 4 and report["c1"].note == ""
    assert tuple(small.get_layer("d1").layer.kernel.shape) == (3 * 3 * 4, 16 - int((result.masks["d1/bias"] == 0).sum()))
    np.testing.assert_allclose(_np(small(x)), _np(model(x)), atol=1e-5)
    for key, m in pkk.masks(small).items():  # masks kept, sliced like the weights
        layer = small.get_layer(key.split("/")[0]).layer
        assert m.shape == tuple(getattr(layer, key.split("/")[1]).shape)


def test_threshold_is_checked():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="d")])
    with pytest.raises(PruneError, match="not both"):
        pkk.prune(model, 0.5, threshold=0.1)
    with pytest.raises(PruneError, match=r"threshold must be"):
        pkk.prune(model, threshold=1.5)
    with pytest.raises(PruneError, match="threshold= works with allocation"):
        pkk.prune(model, threshold=0.1, allocation="erk")
