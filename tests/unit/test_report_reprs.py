"""Result objects print short: no mask arrays in a repr (PruneResult and the Keras result
have their own checks in test_api.py and test_keras_scope.py; this adds scikit-learn's)."""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

from prunekit.adapters.sklearn import PrunedEstimator  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.mark.parametrize("granularity", ["unstructured", "neuron"])
def test_fitted_pruned_estimator_repr_is_short(granularity):
    from threadpoolctl import threadpool_limits

    X, y = load_digits(return_X_y=True)
    with threadpool_limits(limits=1):
        pe = PrunedEstimator(MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=20, random_state=0),
                             sparsity=0.8, granularity=granularity).fit(X / 16.0, y)
    assert pe.masks_  # the masks exist, but the repr does not print them
    for text in (repr(pe), str(pe)):
        assert len(text) < 300, text
        assert "array" not in text and "True" not in text and "sparsity=0.8" in text

