"""PrunedEstimator on estimators that are already fitted (prefit=True, FrozenEstimator), and
the coverage every fit reports."""

from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.frozen import FrozenEstimator  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import cross_val_score, train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

from prunekit import PruneError  # noqa: E402
from prunekit.adapters.sklearn import PrunedEstimator  # noqa: E402
from prunekit.coverage import CoverageWarning  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def split() -> list[np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.3, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def fitted(split) -> MLPClassifier:
    X_train, _, y_train, _ = split
    return MLPClassifier((32,), max_iter=200, random_state=0).fit(X_train, y_train)


def _zeros(arrays) -> int:
    return sum(int(np.count_nonzero(a == 0)) for a in arrays)


def test_prefit_prunes_a_copy_without_refitting(fitted, split):
    _, X_test, _, y_test = split
    before = copy.deepcopy(fitted)
    pe = PrunedEstimator(fitted, sparsity=0.5, prefit=True).fit()  # no data needed for magnitude
    coefs = pe.estimator_.coefs_
    total = sum(c.size for c in coefs)
    assert _zeros(coefs) == round(0.5 * total) and pe.sparsity_ == pytest.approx(round(0.5 * total) / total)
    # magnitude pruning of these very weights: kept entries are unchanged, not refitted
    for c, c0, m in zip(coefs, fitted.coefs_, pe.masks_.values()):
        np.testing.assert_array_equal(c, c0 * m)
    cut = np.sort(np.abs(np.concatenate([c.ravel() for c in fitted.coefs_])))[round(0.5 * total) - 1]
    assert all(np.array_equal(~m, np.abs(c0) <= cut) for c0, m in zip(fitted.coefs_, pe.masks_.values()))
    assert pe.score(X_test, y_test) > 0.8
    # the user's fitted estimator is not modified
    assert pe.estimator_ is not fitted and fitted.n_iter_ == before.n_iter_
    for a, b in zip(fitted.coefs_ + fitted.intercepts_, before.coefs_ + before.intercepts_):
        np.testing.assert_array_equal(a, b)


def test_prefit_with_data_criterion_and_finetuning(fitted, split):
    X_train, X_test, y_train, y_test = split
    pe = PrunedEstimator(fitted, sparsity=0.6, criterion="taylor", finetune_iter=1, random_state=0, prefit=True)
    pe.fit(X_train, y_train)
    assert all(np.all(c[~m] == 0) for c, m in zip(pe.estimator_.coefs_, pe.masks_.values()))
    assert pe.score(X_test, y_test) > 0.8
    with pytest.raises(PruneError, match="criterion 'taylor' needs training data"):
        PrunedEstimator(fitted, criterion="taylor", prefit=True).fit()
    with pytest.raises(PruneError, match="fit_params"):
        PrunedEstimator(fitted, prefit=True).fit(X_train, y_train, sample_weight=np.ones(len(y_train)))


def test_prefit_calibration_data_that_does_not_fit_the_estimator_is_named(fitted, split):
    X_train, _, y_train, _ = split
    pe = PrunedEstimator(fitted, sparsity=0.6, criterion="taylor", prefit=True)
    with pytest.raises(PruneError, match=r"y holds labels the fitted estimator does not know: \[10\]; its classes_ are \[0, 1"):
        pe.fit(X_train, np.where(y_train == 9, 10, y_train))
    with pytest.raises(PruneError, match=r"X has 10 features, the fitted estimator takes 64"):
        pe.fit(X_train[:, :10], y_train)
    with pytest.raises(PruneError, match=r"y has 100 samples and X \d+"):
        pe.fit(X_train, y_train[:100])


def test_prefit_needs_a_fitted_estimator(split):
    with pytest.raises(PruneError, match="prefit=True needs a fitted estimator.*MLPClassifier is not fitted"):
        PrunedEstimator(MLPClassifier((8,)), prefit=True).fit()
    with pytest.raises(PruneError, match="prefit must be True or False; got 'yes'"):
        PrunedEstimator(MLPClassifier((8,)), prefit="yes").fit(*split[::2])


def test_frozen_estimator_survives_clone_and_cross_validation(split):
    X_train, X_test, y_train, y_test = split
    lr = LogisticRegression(max_iter=300).fit(X_train, y_train)
    coef = lr.coef_.copy()
    pe = PrunedEstimator(FrozenEstimator(lr), sparsity=0.7)
    twin = clone(pe).fit(X_train, y_train)
    assert _zeros([twin.estimator_.coef_]) == round(0.7 * coef.size)
    np.testing.assert_array_equal(lr.coef_, coef)  # still the user's dense model
    assert twin.score(X_test, y_test) > 0.8
    scores = cross_val_score(pe, X_test, y_test, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8


def test_coverage_states_scope_and_sparsity_matches_it(split):
    X_train, _, y_train, _ = split
    pe = PrunedEstimator(MLPClassifier((32, 16), max_iter=30, random_state=0), sparsity=0.8).fit(X_train, y_train)
    cov, coefs = pe.coverage_, pe.estimator_.coefs_
    assert cov.covered == sum(c.size for c in coefs) and cov.skipped == ()
    assert cov.total == cov.covered + sum(b.size for b in pe.estimator_.intercepts_)
    assert pe.sparsity_ == _zeros(coefs) / cov.covered
    # neurons: the output layer's units are the outputs, listed (by choice) and outside the scope
    nn = PrunedEstimator(MLPClassifier((32,), max_iter=30, random_state=0), sparsity=0.5, granularity="neuron")
    nn.fit(X_train, y_train)
    (out,) = nn.coverage_.skipped
    assert out.name == "coefs_[1]" and out.by_choice and nn.coverage_.covered == 64 * 32
    hidden = nn.estimator_.coefs_[0]
    assert nn.sparsity_ == pytest.approx(1 - np.count_nonzero(hidden) / (64 * 32))


def test_nm_pattern_that_does_not_fit_is_skipped_and_warned(split):
    X_train, _, y_train, _ = split
    inner = MLPClassifier((30,), max_iter=30, random_state=0)  # 30 inputs to the output layer: no 2:4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pe = PrunedEstimator(inner, sparsity=0.5, granularity="2:4").fit(X_train, y_train)
    texts = {w.category: str(w.message) for w in caught}
    assert re.search(r"coefs_\[1\].*not a multiple of 4", texts[CoverageWarning])
    assert "coefs_[1]" in texts[UserWarning] and "layer1" not in texts[UserWarning]  # in sklearn's names
    (skipped,) = pe.coverage_.skipped
    assert skipped.name == "coefs_[1]" and not skipped.by_choice
    assert pe.coverage_.covered == 64 * 30
    assert pe.sparsity_ == _zeros([pe.estimator_.coefs_[0]]) / (64 * 30) == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        PrunedEstimator(LogisticRegression(max_iter=200), sparsity=0.5).fit(X_train, y_train)


@pytest.mark.parametrize("prefit", [False, True])
def test_fine_tuning_an_mlp_fitted_with_early_stopping(split, prefit):
    X_train, X_test, y_train, y_test = split
    mlp = MLPClassifier((32,), early_stopping=True, max_iter=200, random_state=0)
    if prefit:
        mlp.fit(X_train, y_train)
    pe = PrunedEstimator(mlp, sparsity=0.6, finetune_iter=2, random_state=0, prefit=prefit).fit(X_train, y_train)
    est = pe.estimator_
    assert est.early_stopping is True and est.best_loss_ is None  # restored after fine-tuning
    assert pe.sparsity_ == pytest.approx(_zeros(est.coefs_) / sum(c.size for c in est.coefs_), abs=1e-9)
    assert pe.score(X_test, y_test) > 0.8


def test_a_missed_neuron_sparsity_is_warned_in_the_estimators_own_count(split):
    X_train, _, y_train, _ = split
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = MLPClassifier((16, 8), max_iter=30, random_state=0).fit(X_train, y_train)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pe = PrunedEstimator(small, sparsity=0.999, granularity="neuron", prefit=True).fit(X_train, y_train)
    said = [str(w.message) for w in caught if "asked for" in str(w.message)]
    assert said == [f"PrunedEstimator: asked for sparsity=0.999, reached {pe.sparsity_:.2%} of the pruned layers' "
                    "weights: every layer keeps at least one neuron"]
    assert not any("min_keep" in str(w.message) for w in caught)  # not an option of PrunedEstimator
