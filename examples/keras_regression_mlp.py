"""The familiar Keras regression MLP (20 inputs → Dense 10 ReLU → Dense 10 ReLU → Dense 1),
written for Keras 3 and pruned with prunekit.

1. make a synthetic regression problem (fixed seed): y is a nonlinear function of 20
   standard-normal features plus noise; train the dense model with the mean squared error;
2. prune 80 % of its kernel weights at once by magnitude (``prunekit.keras.prune``), then
   fine-tune with ``MaskEnforcer``, which re-applies the masks after every batch so the
   optimizer cannot revive a pruned weight; ``strip`` returns a plain Keras model;
3. on a copy of the dense model, prune half of the hidden neurons (``granularity="channel"``)
   and let ``remove_neurons`` rebuild a genuinely smaller model with the same outputs.

Run: ``python examples/keras_regression_mlp.py`` (about 15 s on 2 CPU cores). Needs
``pip install prunekit[keras]``; any Keras backend works, torch is used when none is set.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # read by Keras at import

import keras
import numpy as np

import prunekit.keras as pkk


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, 20)).astype("float32")
    y = (
        np.sin(2 * x[:, 0])
        + x[:, 1] * x[:, 2]
        + 0.5 * x[:, 3] ** 2
        + np.tanh(x[:, 4] + x[:, 5])
        + 0.3 * x[:, 6:12].sum(axis=1)
        + 0.1 * rng.standard_normal(n)
    )
    return x, y.astype("float32").reshape(-1, 1)


def build() -> keras.Model:
    model = keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(10, activation="relu"),
        keras.layers.Dense(10, activation="relu"),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def hidden_widths(model: keras.Model) -> list[int]:
    return [layer.units for layer in model.layers[:-1]]


def main() -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = make_data(3000, rng)
    x_test, y_test = make_data(1000, rng)
    print(f"variance of y: {float(y_test.var()):.4f}")

    model = build()
    model.fit(x_train, y_train, epochs=25, batch_size=100, verbose=0)
    dense_mse = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    print(f"dense mse: {dense_mse:.4f}")

    # A copy for neuron removal below, taken before the unstructured pruning changes the weights.
    copy = pkk.strip(model)

    result = pkk.prune(model, 0.8)  # global magnitude over all three kernels
    model.fit(x_train, y_train, epochs=15, batch_size=100, verbose=0, callbacks=[pkk.MaskEnforcer(result.masks)])
    pruned = pkk.strip(model)
    pruned_mse = pruned.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    print(f"pruned mse: {pruned_mse:.4f} at sparsity {pkk.sparsity(pruned):.2%}")

    # Whole hidden neurons, half of each hidden layer: the output unit is never pruned.
    channel = pkk.prune(copy, 0.5, granularity="channel", allocation="uniform")
    small = pkk.remove_neurons(channel.model)
    before, after = hidden_widths(copy), hidden_widths(small)
    equal = np.allclose(copy.predict(x_test, verbose=0), small.predict(x_test, verbose=0), atol=1e-5)
    print(
        f"removed neurons: {sum(before) - sum(after)} of {sum(before)} (hidden widths {before} -> {after}), "
        f"outputs equal: {equal}"
    )
    print(f"channel-pruned mse (no fine-tuning): {small.evaluate(x_test, y_test, batch_size=1000, verbose=0):.4f}")


if __name__ == "__main__":
    main()
