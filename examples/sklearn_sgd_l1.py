"""An L1-penalized ``SGDRegressor`` on the diabetes data, pruned further with ``PrunedEstimator``.

1. standardize the ten diabetes features and the target, and fit ``SGDRegressor(penalty="l1")``:
   the L1 penalty already drives some coefficients to exactly zero;
2. wrap the same regressor in ``PrunedEstimator`` at 70 % sparsity: after the fit the seven
   smallest coefficients are zeroed by magnitude, then 5 epochs of ``partial_fit`` fine-tune
   the rest while the masks keep the pruned coefficients at exactly zero.

Run: ``python examples/sklearn_sgd_l1.py`` (a few seconds). Needs ``pip install prunekit[sklearn]``.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.linear_model import SGDRegressor
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from prunekit.sklearn import PrunedEstimator


def main() -> None:
    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=2)
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    mean, std = y_train.mean(), y_train.std()
    y_train, y_test = (y_train - mean) / std, (y_test - mean) / std

    sgd = SGDRegressor(penalty="l1", alpha=0.02, max_iter=1000, tol=1e-4, random_state=0)
    dense = sgd.fit(X_train, y_train)
    zeros = int(np.sum(dense.coef_ == 0))
    print(f"l1 zeros: {zeros} of {dense.coef_.size}")
    print(f"dense r2: {dense.score(X_test, y_test):.4f}")

    pruned = PrunedEstimator(sgd, sparsity=0.7, finetune_iter=5, random_state=0).fit(X_train, y_train)
    print(f"pruned r2: {pruned.score(X_test, y_test):.4f} at sparsity {pruned.sparsity_:.2%}")
    kept = np.flatnonzero(pruned.estimator_.coef_)
    print(f"kept features: {[load_diabetes().feature_names[i] for i in kept]}")


if __name__ == "__main__":
    with threadpool_limits(limits=1):
        main()
