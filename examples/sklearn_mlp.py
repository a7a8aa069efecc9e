"""Prune a scikit-learn MLP on the digits data set with ``PrunedEstimator``.

1. train a dense ``MLPClassifier`` (one hidden layer of 128 neurons) on 1,347 digits and
   evaluate it on the other 450;
2. wrap the same classifier in ``PrunedEstimator``: remove 90 % of its weights by
   magnitude, then fine-tune 10 epochs with ``partial_fit`` while the masks keep the pruned
   weights at exactly zero;
3. remove whole hidden neurons instead (``granularity="neuron"``): the MLP gets genuinely
   smaller (``coefs_`` shrink) and still predicts like the masked one.

Run: ``python examples/sklearn_mlp.py`` (a few seconds on 2 CPU cores). Needs
``pip install prunekit[sklearn]``.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from prunekit.sklearn import PrunedEstimator


def nonzero(coefs: list[np.ndarray]) -> int:
    return sum(int(np.count_nonzero(c)) for c in coefs)


def main() -> None:
    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # short training on purpose
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=450, random_state=0, stratify=y)
    mlp = MLPClassifier(hidden_layer_sizes=(128,), max_iter=60, random_state=0)

    dense = mlp.fit(X_train, y_train)
    total = sum(c.size for c in dense.coefs_)
    print(f"dense accuracy: {dense.score(X_test, y_test):.2%}")
    print(f"dense weights: {nonzero(dense.coefs_)} nonzero of {total}, shapes {[c.shape for c in dense.coefs_]}")

    pruned = PrunedEstimator(mlp, sparsity=0.9, finetune_iter=10, random_state=0).fit(X_train, y_train)
    print(f"pruned accuracy: {pruned.score(X_test, y_test):.2%} at sparsity {pruned.sparsity_:.2%}")
    print(f"pruned weights: {nonzero(pruned.estimator_.coefs_)} nonzero of {total} (zeros kept through fine-tuning)")

    slim = PrunedEstimator(mlp, sparsity=0.75, granularity="neuron", finetune_iter=10, random_state=0)
    slim.fit(X_train, y_train)
    shapes = [c.shape for c in slim.estimator_.coefs_]
    print(
        f"neuron-pruned accuracy: {slim.score(X_test, y_test):.2%}, "
        f"{slim.n_removed_neurons_} of 128 hidden neurons removed, shapes {shapes}"
    )
    print(f"neuron-pruned weights: {nonzero(slim.estimator_.coefs_)} nonzero, {sum(c.size for c in slim.estimator_.coefs_)} stored")


if __name__ == "__main__":
    # Digits-sized matrices: one BLAS thread is fastest, and several fight over busy cores.
    with threadpool_limits(limits=1):
        main()
