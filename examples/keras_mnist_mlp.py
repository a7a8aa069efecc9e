"""The classic Keras MNIST MLP (Flatten → Dense 128 ReLU → Dropout → Dense 10), pruned to
90 % sparsity with prunekit while it trains.

1. train the dense model for one epoch on 10,000 MNIST images and evaluate it on the
   10,000 test images;
2. train a second epoch with ``PruningCallback``: the cubic Zhu & Gupta schedule raises
   sparsity from 0 to 90 % over the epoch's first 250 steps, re-pruning by magnitude every
   25 steps; after every batch the masks are re-applied, so Adam cannot revive a pruned weight;
3. ``strip`` returns a plain Keras model whose kernels hold the zeros; evaluate it.

Run: ``python examples/keras_mnist_mlp.py`` (about 20 s on 2 CPU cores). Needs
``pip install prunekit[keras]``; any Keras backend works, torch is used when none is set.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # read by Keras at import

import keras

import prunekit.keras as pkk
from prunekit.datasets import load_mnist
from prunekit.schedules import Gradual


def main() -> None:
    keras.utils.set_random_seed(0)
    train, test = load_mnist("train"), load_mnist("test")
    x_train, y_train = train.tensors[0][:10_000].reshape(-1, 28, 28).numpy(), train.tensors[1][:10_000].numpy()
    x_test, y_test = test.tensors[0].reshape(-1, 28, 28).numpy(), test.tensors[1].numpy()

    model = keras.Sequential([
        keras.Input((28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10),
    ])
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
    _, dense_acc = model.evaluate(x_test, y_test, batch_size=500, verbose=0)
    print(f"dense accuracy: {dense_acc:.2%}")

    # 313 steps per epoch: reach 90 % by step 250, then fine-tune at that sparsity.
    pruning = pkk.PruningCallback(Gradual(0.9, begin=0, end=250, frequency=25))
    model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0, callbacks=[pruning])

    pruned = pkk.strip(model)  # plain model, compiled like the original
    _, pruned_acc = pruned.evaluate(x_test, y_test, batch_size=500, verbose=0)
    print(f"pruned accuracy: {pruned_acc:.2%} at sparsity {pkk.sparsity(pruned):.2%}")


if __name__ == "__main__":
    main()
