"""PrunedEstimator: the scikit-learn meta-estimator over the prunekit core."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone, is_classifier, is_regressor  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.linear_model import Lasso, LogisticRegression, SGDClassifier, SGDRegressor  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from prunekit import PruneError, PruneTypeError  # noqa: E402
from prunekit.adapters.sklearn import PrunedEstimator  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    # These fits are tiny: extra BLAS threads only contend for busy cores (10x slower seen).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def _mlp(**kw) -> MLPClassifier:
    return MLPClassifier(**{"hidden_layer_sizes": (32,), "max_iter": 30, "random_state": 0, **kw})


def _zeros(arrays) -> int:
    return sum(int(np.count_nonzero(a == 0)) for a in arrays)


def test_unstructured_sparsity_is_exact_and_masks_match(digits):
    X, y = digits
    pe = PrunedEstimator(_mlp(hidden_layer_sizes=(32, 16)), sparsity=0.9).fit(X, y)
    coefs = pe.estimator_.coefs_
    total = sum(c.size for c in coefs)
    assert _zeros(coefs) == round(0.9 * total)
    assert pe.sparsity_ == pytest.approx(round(0.9 * total) / total)
    assert pe.n_removed_neurons_ == 0
    assert list(pe.masks_) == ["coefs_[0]", "coefs_[1]", "coefs_[2]"]
    for c, m in zip(coefs, pe.masks_.values()):
        assert m.dtype == bool and m.shape == c.shape
        assert np.all(c[~m] == 0)
    assert pe.score(X, y) > 0.2  # above chance (0.1) without fine-tuning at 90 %


def test_masks_hold_through_partial_fit_finetuning(digits):
    X, y = digits
    plain = PrunedEstimator(_mlp(), sparsity=0.8, random_state=0).fit(X, y)
    tuned = PrunedEstimator(_mlp(), sparsity=0.8, finetune_iter=2, random_state=0).fit(X, y)
    for c, m, c0 in zip(tuned.estimator_.coefs_, tuned.masks_.values(), plain.estimator_.coefs_):
        assert np.all(c[~m] == 0)
        assert not np.allclose(c[m], c0[m])  # fine-tuning did move the kept weights
    assert tuned.sparsity_ == pytest.approx(plain.sparsity_)
    assert tuned.score(X, y) >= plain.score(X, y) - 0.02


@pytest.mark.parametrize("activation", ["relu", "logistic", "tanh"])
def test_neuron_removal_shrinks_mlp_and_keeps_predictions(digits, activation):
    X, y = digits
    inner = _mlp(hidden_layer_sizes=(32, 16), activation=activation)
    pe = PrunedEstimator(inner, sparsity=0.5, granularity="neuron").fit(X, y)
    small = pe.estimator_
    # Oracle: the same dense fit, masked (neurons' incoming weights and bias zeroed) but
    # not shrunk. A removed logistic neuron still emits 0.5, which the surgery must fold
    # into the next layer's bias.
    ref = clone(inner).fit(X, y)
    for i, m in enumerate(pe.masks_.values()):
        ref.coefs_[i] = ref.coefs_[i] * m
        if i < len(ref.intercepts_) - 1:
            ref.intercepts_[i] = ref.intercepts_[i] * m.any(axis=0)
    widths = [int(m.any(axis=0).sum()) for m in list(pe.masks_.values())[:-1]]
    assert pe.n_removed_neurons_ == (32 + 16) - sum(widths) > 0
    assert small.hidden_layer_sizes == tuple(widths)
    assert [c.shape for c in small.coefs_] == [(64, widths[0]), (widths[0], widths[1]), (widths[1], 10)]
    assert [b.shape for b in small.intercepts_] == [(widths[0],), (widths[1],), (10,)]
    np.testing.assert_allclose(pe.predict_proba(X), ref.predict_proba(X), atol=1e-10)
    assert np.array_equal(pe.predict(X), ref.predict(X))
    assert pe.sparsity_ > 0.4


def test_neuron_removal_then_finetune_on_the_smaller_regressor(digits):
    X, y = digits
    y = y.astype(float)
    pe = PrunedEstimator(
        MLPRegressor(hidden_layer_sizes=(32,), max_iter=30, random_state=0), sparsity=0.5, granularity="neuron", finetune_iter=1,
        random_state=0,
    ).fit(X, y)
    width = pe.estimator_.hidden_layer_sizes[0]
    assert width < 32 and pe.estimator_.coefs_[0].shape == (64, width)
    assert pe.predict(X).shape == (len(X),)
    assert pe.score(X, y) > 0.3


@pytest.mark.parametrize(
    "estimator",
    [SGDClassifier(random_state=0), SGDRegressor(random_state=0), LogisticRegression(max_iter=300), Lasso(alpha=1e-3)],
    ids=lambda e: type(e).__name__,
)
def test_linear_models_pruned_to_exact_sparsity(digits, estimator):
    X, y = digits
    y = y if is_classifier(estimator) else y.astype(float)
    pe = PrunedEstimator(estimator, sparsity=0.7).fit(X, y)
    coef = pe.estimator_.coef_
    assert pe.masks_["coef_"].shape == coef.shape
    # Lasso zeroes a few constant features on its own; magnitude removes those first.
    assert _zeros([coef]) == round(0.7 * coef.size) == int((~pe.masks_["coef_"]).sum())
    assert pe.score(X, y) > (0.8 if is_classifier(estimator) else 0.2)


def test_sgd_finetuning_keeps_linear_zeros(digits):
    X, y = digits
    pe = PrunedEstimator(SGDClassifier(random_state=0), sparsity=0.7, finetune_iter=2, random_state=0).fit(X, y)
    assert np.all(pe.estimator_.coef_[~pe.masks_["coef_"]] == 0)


@pytest.mark.parametrize(
    "estimator, target",
    [
        (_mlp(), "multiclass"),
        (MLPRegressor(hidden_layer_sizes=(16,), max_iter=20, random_state=0), "regression"),
        (MLPRegressor(hidden_layer_sizes=(16,), loss="poisson", max_iter=20, random_state=0), "regression"),
        (LogisticRegression(max_iter=300), "binary"),
    ],
    ids=["cross_entropy", "mse", "poisson", "binary_cross_entropy"],
)
def test_data_driven_criterion_uses_a_matching_loss(digits, estimator, target):
    X, y = digits
    y = {"multiclass": y, "regression": y.astype(float), "binary": (y > 4).astype(int)}[target]
    pe = PrunedEstimator(estimator, sparsity=0.6, criterion="taylor").fit(X, y)
    w = pe.estimator_.coefs_ if hasattr(pe.estimator_, "coefs_") else [pe.estimator_.coef_]
    assert _zeros(w) == round(0.6 * sum(a.size for a in w))


def test_params_clone_and_set_params():
    pe = PrunedEstimator(LogisticRegression(C=2.0), sparsity=0.3, criterion="random", random_state=1)
    params = pe.get_params()
    assert params["sparsity"] == 0.3 and params["estimator__C"] == 2.0
    twin = clone(pe)
    assert twin is not pe and twin.get_params()["estimator__C"] == 2.0
    assert twin.set_params(sparsity=0.8, estimator__C=0.5) is twin
    assert twin.sparsity == 0.8 and twin.estimator.C == 0.5 and pe.estimator.C == 2.0
    with pytest.raises(ValueError, match="Invalid parameter"):
        twin.set_params(nonsense=1)
    assert is_classifier(pe) and is_regressor(PrunedEstimator(Lasso()))


def test_pipeline_gridsearch_and_cross_val_score(digits):
    X, y = digits[0][:600], digits[1][:600]  # a third of digits keeps the 10 fits quick
    pipe = make_pipeline(StandardScaler(), PrunedEstimator(LogisticRegression(max_iter=200)))
    assert pipe.fit(X, y).score(X, y) > 0.9
    search = GridSearchCV(pipe, {"prunedestimator__sparsity": [0.2, 0.97]}, cv=3).fit(X, y)
    assert search.best_params_ == {"prunedestimator__sparsity": 0.2}
    scores = search.cv_results_["mean_test_score"]
    assert scores[0] > scores[1]  # 97 % of the weights gone costs accuracy
    cv = cross_val_score(PrunedEstimator(LogisticRegression(max_iter=200), sparsity=0.5), X, y, cv=3)
    assert cv.shape == (3,) and cv.min() > 0.8


def test_unsupported_estimator_names_its_type(digits):
    X, y = digits
    with pytest.raises(PruneTypeError, match=r"RandomForestClassifier.*MLPClassifier"):
        PrunedEstimator(RandomForestClassifier(n_estimators=2)).fit(X, y)


def test_bad_settings_fail_before_fitting(digits):
    X, y = digits
    with pytest.raises(PruneError, match=r"sparsity must be a number in \[0, 1\); got 1.5"):
        PrunedEstimator(LogisticRegression(), sparsity=1.5).fit(X, y)
    with pytest.raises(PruneError, match="unknown criterion"):
        PrunedEstimator(LogisticRegression(), criterion="nope").fit(X, y)
    with pytest.raises(PruneError, match="needs an MLP"):
        PrunedEstimator(LogisticRegression(), granularity="neuron").fit(X, y)
    with pytest.raises(PruneError, match="lbfgs"):
        PrunedEstimator(_mlp(solver="lbfgs"), finetune_iter=1).fit(X, y)
    with pytest.raises(PruneError, match="partial_fit"):
        PrunedEstimator(Lasso(), finetune_iter=1).fit(X, y.astype(float))
    with pytest.raises(PruneError, match=r"finetune_iter must be an integer >= 0 \(epochs\); got -1"):
        PrunedEstimator(_mlp(), finetune_iter=-1).fit(X, y)


def test_unfitted_and_delegated_methods(digits):
    X, y = digits
    pe = PrunedEstimator(SGDRegressor())
    with pytest.raises(NotFittedError):
        pe.predict(X)
    assert not hasattr(pe, "predict_proba") and not hasattr(pe, "n_features_in_")
    clf = PrunedEstimator(LogisticRegression(max_iter=200)).fit(X, y)
    assert clf.n_features_in_ == 64 and np.array_equal(clf.classes_, np.arange(10))
    assert clf.decision_function(X[:5]).shape == (5, 10)


def test_missing_sklearn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` fail
    monkeypatch.delitem(sys.modules, "prunekit.adapters.sklearn")
    with pytest.raises(ImportError, match=r"pip install prunekit\[sklearn\]"):
        importlib.import_module("prunekit.adapters.sklearn")


# Every scikit-learn estimator check applies and passes with the default sparsity=0.5.
@parametrize_with_checks([PrunedEstimator(LogisticRegression(max_iter=200))])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)  # each scikit-learn check asserts internally and raises on a failure


def test_pickled_pruned_mlp_carries_no_dense_copy(digits):
    import pickle

    X, y = digits
    pe = PrunedEstimator(_mlp(early_stopping=True, max_iter=20), sparsity=0.5, granularity="neuron").fit(X, y)
    est = pickle.loads(pickle.dumps(pe)).estimator_
    assert [c.shape for c in est._best_coefs] == [c.shape for c in est.coefs_]
    assert all(np.array_equal(a, b) for a, b in zip(est._best_coefs, est.coefs_))
