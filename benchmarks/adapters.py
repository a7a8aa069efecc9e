"""Framework adapters end to end: accuracy, weight counts and saved-model size, Keras 3 and scikit-learn.

Keras 3 (torch backend unless one is set): an MLP 784-128-10 (ReLU) on real MNIST, trained
2 epochs (Adam, batch 64) on the first 20,000 images of the ``train`` split, evaluated on
the 10,000 ``test`` images. Variants, each starting from the dense weights:

* ``pruned 80 %`` / ``pruned 90 %``: one more epoch with ``PruningCallback`` (cubic
  ``Gradual`` schedule reaching the target at step 200 of 313, re-pruning every 20 steps),
  then ``strip``;
* ``neurons -50 %``: half of the 128 hidden neurons pruned at once (``granularity="channel"``,
  magnitude), one epoch of fine-tuning with ``MaskEnforcer``, then ``remove_neurons``
  rebuilds a 784-64-10 model.

The dense row gets no extra epoch. scikit-learn: ``MLPClassifier(hidden_layer_sizes=(128,))``
(Adam, 60 iterations) on the digits data (1,347 train / 450 test), dense vs
``PrunedEstimator(sparsity=0.8 / 0.9, finetune_iter=10)`` and ``granularity="neuron"`` at 50 %.

Columns: nonzero and stored counts are over the weight matrices (kernels / ``coefs_``,
biases excluded). Size: Keras's own ``model.save("m.keras")`` file of an uncompiled copy
(config and weights, no optimizer variables) and that file compressed with lzma;
scikit-learn's format is pickle: ``pickle.dumps`` of the fitted estimator without the state
only training uses (``_optimizer``, ``_best_coefs``, ``_best_intercepts``) and the same bytes
compressed with lzma. Zeros do not shrink the raw file; they compress.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/adapters.py [--out DIR]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KERAS_BACKEND", "torch")

import argparse
import copy
import lzma
import pickle
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import _common
import keras
import numpy as np
import sklearn
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

import prunekit.keras as pkk
from prunekit.datasets import load_mnist
from prunekit.schedules import Gradual
from prunekit.sklearn import PrunedEstimator

N_TRAIN = 20_000
EPOCHS = 2
BATCH = 64
SPARSITIES = (0.8, 0.9)
NEURON_SPARSITY = 0.5
# MLP attributes only training uses: Adam's moments, and the early-stopping snapshot (without
# early stopping a copy of the initial weights).
TRAINING_STATE = ("_optimizer", "_best_coefs", "_best_intercepts")
COLUMNS = ("framework", "model", "variant", "test acc", "nonzero weights", "stored weights",
           "file bytes", "lzma bytes")


# -- Keras -----------------------------------------------------------------------------------
def _keras_row(name: str, model: keras.Model, x: np.ndarray, y: np.ndarray, tmp: Path) -> dict[str, Any]:
    _, acc = model.evaluate(x, y, batch_size=1000, verbose=0)
    kernels = [layer.get_weights()[0] for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    path = tmp / "m.keras"
    # Rebuilt from its config, not compiled (clone_model compiles a Sequential's copy): the
    # file holds the architecture and the weights, no optimizer variables.
    plain = type(model).from_config(model.get_config())
    plain.set_weights(model.get_weights())
    plain.save(path)
    raw = path.read_bytes()
    return {
        "framework": "keras", "model": "MLP 784-128-10 / MNIST", "variant": name, "accuracy": float(acc),
        "nonzero": int(sum(np.count_nonzero(k) for k in kernels)), "stored": int(sum(k.size for k in kernels)),
        "file_bytes": len(raw), "lzma_bytes": len(lzma.compress(raw)),
    }


def _copy(model: keras.Model) -> keras.Model:
    return pkk.strip(model)  # same weights, compiled like the original, fresh optimizer


def run_keras(tmp: Path) -> list[dict[str, Any]]:
    keras.utils.set_random_seed(0)
    train, test = load_mnist("train", flatten=True), load_mnist("test", flatten=True)
    x_train, y_train = train.tensors[0][:N_TRAIN].numpy(), train.tensors[1][:N_TRAIN].numpy()
    x_test, y_test = test.tensors[0].numpy(), test.tensors[1].numpy()

    dense = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ])
    dense.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    dense.fit(x_train, y_train, epochs=EPOCHS, batch_size=BATCH, verbose=0)
    rows = [_keras_row("dense", dense, x_test, y_test, tmp)]

    for s in SPARSITIES:
        model = _copy(dense)
        callback = pkk.PruningCallback(Gradual(s, begin=0, end=200, frequency=20))
        model.fit(x_train, y_train, epochs=1, batch_size=BATCH, verbose=0, callbacks=[callback])
        rows.append(_keras_row(f"pruned {s:.0%}", pkk.strip(model), x_test, y_test, tmp))

    model = _copy(dense)
    result = pkk.prune(model, NEURON_SPARSITY, granularity="channel")
    model.fit(x_train, y_train, epochs=1, batch_size=BATCH, verbose=0, callbacks=[pkk.MaskEnforcer(result.masks)])
    small = pkk.remove_neurons(model)
    rows.append(_keras_row(f"neurons -{NEURON_SPARSITY:.0%}", small, x_test, y_test, tmp))
    return rows


# -- scikit-learn ----------------------------------------------------------------------------
def _sklearn_row(name: str, est: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    saved = copy.copy(est)
    for attr in TRAINING_STATE:  # not used by predict; left out like Keras's optimizer variables
        if hasattr(saved, attr):
            delattr(saved, attr)
    raw = pickle.dumps(saved)
    return {
        "framework": "sklearn", "model": "MLPClassifier 64-128-10 / digits", "variant": name,
        "accuracy": float(est.score(x, y)),
        "nonzero": int(sum(np.count_nonzero(c) for c in est.coefs_)), "stored": int(sum(c.size for c in est.coefs_)),
        "file_bytes": len(raw), "lzma_bytes": len(lzma.compress(raw)),
    }


def run_sklearn() -> list[dict[str, Any]]:
    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # short training on purpose
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=450, random_state=0, stratify=y)
    mlp = MLPClassifier(hidden_layer_sizes=(128,), max_iter=60, random_state=0)
    with threadpool_limits(limits=1):
        rows = [_sklearn_row("dense", clone(mlp).fit(X_train, y_train), X_test, y_test)]
        for s in SPARSITIES:
            p = PrunedEstimator(mlp, sparsity=s, finetune_iter=10, random_state=0).fit(X_train, y_train)
            rows.append(_sklearn_row(f"pruned {s:.0%}", p.estimator_, X_test, y_test))
        p = PrunedEstimator(mlp, sparsity=NEURON_SPARSITY, granularity="neuron", finetune_iter=10, random_state=0)
        p.fit(X_train, y_train)
        rows.append(_sklearn_row(f"neurons -{NEURON_SPARSITY:.0%}", p.estimator_, X_test, y_test))
    return rows


# -- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_keras(Path(tmp))
    keras_s = time.perf_counter() - start
    rows += run_sklearn()
    wall = time.perf_counter() - start

    env = _common.environment()
    env.update({"keras": keras.__version__, "keras_backend": keras.backend.backend(), "sklearn": sklearn.__version__})
    payload = {
        "benchmark": "adapters",
        "environment": env,
        "config": {
            "keras": {"n_train": N_TRAIN, "epochs": EPOCHS, "batch": BATCH, "prune_epochs": 1,
                      "schedule": "Gradual(end=200, frequency=20)", "neuron_sparsity": NEURON_SPARSITY},
            "sklearn": {"hidden": 128, "max_iter": 60, "finetune_iter": 10, "neuron_sparsity": NEURON_SPARSITY},
            "sparsities": list(SPARSITIES),
        },
        "wall_s": {"keras": round(keras_s, 1), "total": round(wall, 1)},
        "rows": rows,
    }
    path = _common.write_json("adapters", payload, args.out)
    _common.print_table(
        "Keras 3 and scikit-learn adapters",
        COLUMNS,
        [(r["framework"], r["model"], r["variant"], f"{r['accuracy']:.2%}", r["nonzero"], r["stored"],
          r["file_bytes"], r["lzma_bytes"]) for r in rows],
    )
    print(f"wall time {wall:.0f} s (keras {keras_s:.0f} s); wrote {path}")


if __name__ == "__main__":
    main()
