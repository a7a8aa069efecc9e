"""scikit-learn adapter: :class:`PrunedEstimator`, a meta-estimator that prunes MLPs and
linear models with the prunekit core.

``fit`` fits a clone of the wrapped estimator (or, with ``prefit=True`` or a
``sklearn.frozen.FrozenEstimator``, copies an already fitted one), copies its weights into
a small torch model (``nn.Sequential`` of ``nn.Linear`` and the MLP's activation, or one
``nn.Linear`` for a linear model), runs :func:`prunekit.prune` on it and writes the masks
back into the scikit-learn estimator. With ``granularity="neuron"`` whole hidden neurons
are removed and the MLP becomes genuinely smaller. Needs ``pip install prunekit[sklearn]``.

Example:
    >>> from sklearn.neural_network import MLPClassifier
    >>> from prunekit.adapters.sklearn import PrunedEstimator
    >>> clf = PrunedEstimator(MLPClassifier((64,)), sparsity=0.9).fit(X, y)
    >>> clf.sparsity_, clf.score(X, y)
    >>> fitted = MLPClassifier((64,)).fit(X, y)
    >>> pruned = PrunedEstimator(fitted, sparsity=0.5, prefit=True).fit()  # no refit; `fitted` unchanged
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

try:
    import sklearn  # noqa: F401  (fails early with the install hint below)
except ImportError as e:
    raise ImportError(
        "prunekit.adapters.sklearn needs scikit-learn; install it with: pip install prunekit[sklearn]"
    ) from e

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.svm import LinearSVC, LinearSVR
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from .. import validate as V
from ..api import prune
from ..coverage import CoverageWarning
from ..errors import PruneError, PruneTypeError
from ..registry import create
from .common import resolve
from .sklearn_ops import (
    ACTIVATIONS, apply_masks, calibration, finetune, layer_names, mask_of, remove_neurons, rename_coverage,
    torch_model, weights_of,
)

__all__ = ["PrunedEstimator"]

_SUPPORTED = (
    "MLPClassifier, MLPRegressor, and linear models with coef_ (SGDClassifier, SGDRegressor, "
    "LogisticRegression, Lasso, Ridge, LinearSVC, ... from sklearn.linear_model / sklearn.svm)"
)
_NEURON = ("neuron", "channel")


def _kind(estimator: object) -> str:
    """``"mlp"`` or ``"linear"``; raise naming the type and the supported ones otherwise."""
    if isinstance(estimator, (MLPClassifier, MLPRegressor)):
        return "mlp"
    module = type(estimator).__module__
    if module.startswith("sklearn.linear_model") or isinstance(estimator, (LinearSVC, LinearSVR)):
        return "linear"
    raise PruneTypeError(f"PrunedEstimator cannot prune {type(estimator).__name__}; supported: {_SUPPORTED}")


def _unfrozen(estimator: Any) -> tuple[Any, bool]:
    """``(the estimator, True)`` for a ``FrozenEstimator``'s inner one, else ``(estimator, False)``."""
    if isinstance(estimator, FrozenEstimator):
        return estimator.estimator, True
    return estimator, False


def _estimator_has(attr: str):
    """``available_if`` check: look at the fitted copy if there is one, else the template."""

    def check(self: PrunedEstimator) -> bool:
        inner = self.estimator_ if hasattr(self, "estimator_") else _unfrozen(self.estimator)[0]
        return hasattr(inner, attr)

    return check


def _is_fitted(est: Any, kind: str) -> bool:
    attr = "coefs_" if kind == "mlp" else "coef_"
    return isinstance(getattr(est, attr, None), (list, np.ndarray))


class PrunedEstimator(MetaEstimatorMixin, BaseEstimator):
    """Fit a scikit-learn MLP or linear model, then prune its weights with prunekit.

    Construction stores the arguments and nothing else; ``fit`` validates them.

    To prune an estimator that is already fitted, without refitting it, pass
    ``prefit=True`` (as ``SelectFromModel`` does) or wrap it in
    ``sklearn.frozen.FrozenEstimator``; ``fit()`` then prunes a deep copy, and ``X``, ``y``
    are needed only by data-driven criteria and fine-tuning. The fitted estimator you pass
    is never modified. ``clone`` (and so ``GridSearchCV``/``cross_val_score``) refits a
    ``prefit=True`` estimator's unfitted clone and fails; a ``FrozenEstimator`` survives
    cloning, so use it there.

    Args:
        estimator: an unfitted ``MLPClassifier``, ``MLPRegressor`` or linear model with
            ``coef_`` (``SGDClassifier``, ``SGDRegressor``, ``LogisticRegression``,
            ``Lasso``, ...); a fitted one with ``prefit=True``; or a ``FrozenEstimator``
            of a fitted one. It is cloned or copied, never modified.
        sparsity: fraction of weights to remove, in [0, 1). With ``"neuron"`` it counts the
            incoming weights of removed hidden neurons (their outgoing weights go too).
        criterion: a name from ``prunekit.available("criterion")``. Data-driven criteria
            see the training data, with cross-entropy (classifiers) or MSE (regressors).
        granularity: ``"unstructured"`` (single weights; also ``"2:4"``-style N:M or
            ``"block"``) or ``"neuron"`` (whole hidden neurons, physically removed; MLPs
            only, never the output layer).
        allocation: how the target is split over layers (``"global"``, ``"uniform"``,
            ``"lamp"``, ``"erk"``).
        finetune_iter: epochs of fine-tuning with ``partial_fit`` after pruning (MLP with
            ``solver="sgd"``/``"adam"``, SGD models); masks are re-applied after every
            mini-batch, so pruned weights stay exactly zero.
        random_state: seeds random criteria and the fine-tuning shuffle. The wrapped
            estimator keeps its own ``random_state``.
        prefit: ``estimator`` is already fitted: prune a copy of it instead of fitting.

    Attributes:
        estimator_: the fitted, pruned (and for ``"neuron"`` smaller) estimator.
        masks_: ``{"coefs_[i]" or "coef_": bool array}``, True = kept, in the shapes the
            estimator had before any neuron removal.
        sparsity_: fraction of the covered weights that are zero or removed, counted in
            the shapes before any neuron removal.
        coverage_: a :class:`prunekit.coverage.Coverage`: the weights in scope (every
            ``coefs_``/``coef_`` entry; with ``"neuron"`` the hidden layers' weights, the
            output layer being listed as skipped), all parameters (intercepts included),
            and each weight matrix left dense with why.
        n_removed_neurons_: hidden neurons removed (0 unless ``granularity="neuron"``).

    Example:
        >>> from sklearn.linear_model import LogisticRegression
        >>> clf = PrunedEstimator(LogisticRegression(max_iter=500), sparsity=0.8).fit(X, y)
        >>> round(clf.sparsity_, 2)
        0.8
    """

    def __init__(
        self,
        estimator: Any,
        sparsity: float = 0.5,
        criterion: str = "magnitude",
        granularity: str = "unstructured",
        allocation: str = "global",
        finetune_iter: int = 0,
        random_state: int | np.random.RandomState | None = None,
        prefit: bool = False,
    ) -> None:
        self.estimator = estimator
        self.sparsity = sparsity
        self.criterion = criterion
        self.granularity = granularity
        self.allocation = allocation
        self.finetune_iter = finetune_iter
        self.random_state = random_state
        self.prefit = prefit

    # -- validation ------------------------------------------------------------------------
    def _validate(self) -> tuple[Any, str, bool, bool]:
        """``(inner estimator, kind, neuron granularity, prefit)``; raise on a bad setting."""
        inner, frozen = _unfrozen(self.estimator)
        prefit = self.prefit.item() if isinstance(self.prefit, np.bool_) else self.prefit  # numpy's bool counts too
        prefit = V.boolean("prefit", prefit) or frozen
        kind = _kind(inner)
        neuron = isinstance(self.granularity, str) and self.granularity in _NEURON
        if neuron and kind != "mlp":
            raise PruneError(
                f"granularity={self.granularity!r} removes hidden neurons and needs an MLP; "
                f"{type(inner).__name__} has only its output layer (use 'unstructured')"
            )
        # The core checks sparsity/criterion/granularity/allocation; check them before the
        # (possibly long) inner fit so a typo fails at once.
        resolve(
            self.sparsity, self.criterion, "channel" if neuron else self.granularity, self.allocation,
            where="PrunedEstimator",
        )
        it = V.integer("finetune_iter", self.finetune_iter, minimum=0, hint="epochs")
        if it > 0:
            if kind == "mlp" and inner.solver == "lbfgs":
                raise PruneError("finetune_iter > 0 needs partial_fit; MLP solver 'lbfgs' has none, use 'adam' or 'sgd'")
            if kind == "linear" and not hasattr(inner, "partial_fit"):
                raise PruneError(
                    f"finetune_iter > 0 needs partial_fit, which {type(inner).__name__} lacks "
                    "(SGDClassifier/SGDRegressor have it); use finetune_iter=0"
                )
        if prefit and not _is_fitted(inner, kind):
            how = "FrozenEstimator" if frozen else "prefit=True"
            raise PruneError(
                f"{how} needs a fitted estimator, and this {type(inner).__name__} is not fitted; fit it first, or "
                "use prefit=False to let PrunedEstimator fit it (clone() drops fitted state: with GridSearchCV or "
                "cross_val_score wrap the fitted estimator in sklearn.frozen.FrozenEstimator instead)"
            )
        return inner, kind, neuron, prefit

    # -- fit -------------------------------------------------------------------------------
    def fit(self, X: Any = None, y: Any = None, **fit_params: Any) -> PrunedEstimator:
        """Fit a clone of ``estimator`` (or copy it, when prefit), prune it, optionally fine-tune it.

        Args:
            X: training inputs, anything the wrapped estimator accepts. With ``prefit=True``
                or a ``FrozenEstimator``, needed only by data-driven criteria and fine-tuning.
            y: training targets (same rule as ``X``).
            **fit_params: passed to the wrapped estimator's ``fit`` (not with prefit).

        Returns:
            ``self``, with ``estimator_``, ``masks_``, ``sparsity_``, ``coverage_``,
            ``n_removed_neurons_``.
        """
        inner, kind, neuron, prefit = self._validate()
        data_driven = create("criterion", self.criterion).needs_data
        if prefit:
            if fit_params:
                raise PruneError(f"fit_params {sorted(fit_params)} go to the estimator's fit, which prefit skips")
            if (X is None or y is None) and (data_driven or self.finetune_iter):
                why = f"criterion {self.criterion!r}" if data_driven else f"finetune_iter={self.finetune_iter}"
                raise PruneError(f"{why} needs training data: call fit(X, y)")
            est = copy.deepcopy(inner)  # the user's fitted estimator stays as it was
        else:  # the estimator's own fit checks X and y
            est = clone(inner).fit(X, y, **fit_params)
        if kind == "linear" and not isinstance(getattr(est, "coef_", None), np.ndarray):
            raise PruneTypeError(
                f"{type(est).__name__} has no dense coef_ array after fit; supported: {_SUPPORTED}"
            )
        rng = check_random_state(self.random_state)
        weights = weights_of(est, kind)
        model = torch_model(weights, est.activation if kind == "mlp" else "identity")
        data = loss_fn = None
        if data_driven:
            data, loss_fn = calibration(est, model, X, y)
        names = layer_names(kind, len(weights))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = prune(
                model,
                self.sparsity,
                criterion=self.criterion,
                granularity="channel" if neuron else self.granularity,
                allocation=self.allocation,
                data=data,
                loss_fn=loss_fn,
                seed=int(rng.randint(np.iinfo(np.int32).max)),
            )
        for w in caught:
            # Neurons are removed here from the row masks: the coupled-channel advice does not
            # apply; coverage is reported below in the estimator's names.
            text = str(w.message)
            if issubclass(w.category, CoverageWarning) or "without example_inputs" in text or text.startswith("asked for"):
                continue  # a missed sparsity is said below, in the estimator's own count
            for i, n in enumerate(names):
                text = text.replace(f"layer{i}.weight", n)
            warnings.warn(text, w.category, stacklevel=2)
        coverage = rename_coverage(result.coverage, names)
        masks = [mask_of(result.masks, f"layer{i}.weight", w.shape) for i, (w, _) in enumerate(weights)]
        biases = [mask_of(result.masks, f"layer{i}.bias", b.shape) for i, (_, b) in enumerate(weights)]
        apply_masks(est, kind, masks, biases)
        removed, live = 0, masks
        if neuron:
            # A hidden neuron is kept iff its bias mask is (channel masks cover the bias).
            removed = remove_neurons(est, biases[:-1], ACTIVATIONS[est.activation][1])
            live = []  # what remains is dense: nothing to re-apply
        if self.finetune_iter:
            finetune(est, kind, X, y, live, int(self.finetune_iter), rng)
        if kind == "mlp" and hasattr(est, "_best_coefs"):
            # sklearn keeps the best weights seen while fitting (dense, old shapes); a pickled
            # pruned model must not carry the dense one along.
            est._best_coefs = [c.copy() for c in est.coefs_]
            est._best_intercepts = [b.copy() for b in est.intercepts_]
        # In the estimator's own layout: coefs_[i] is (in, out), coef_ as fitted.
        masks_ = {n: (m.T if kind == "mlp" else m.reshape(est.coef_.shape)) for n, m in zip(names, masks)}
        left_out = {s.name for s in coverage.skipped}
        scope = [i for i, n in enumerate(names) if n not in left_out]
        total = sum(masks[i].size for i in scope)
        # Counted on the final weights: removed neurons' weights (in and out) count as gone.
        final = weights_of(est, kind)
        nonzero = sum(int(np.count_nonzero(final[i][0])) for i in scope)
        coverage.warn("PrunedEstimator")
        reached = (total - nonzero) / total if total else 0.0
        if reached + 0.05 < self.sparsity:
            warnings.warn(f"PrunedEstimator: asked for sparsity={self.sparsity:g}, reached {reached:.2%} of the pruned "
                          "layers' weights: every layer keeps at least one "
                          f"{'neuron' if neuron else 'weight'}", UserWarning, stacklevel=2)
        # Learned attributes last: a failure above leaves no half-fitted state behind.
        self.sparsity_ = reached
        self.coverage_ = coverage
        self.n_removed_neurons_ = removed
        self.masks_ = masks_
        self.estimator_ = est
        return self

    # -- delegation ------------------------------------------------------------------------
    def _fitted(self) -> Any:
        check_is_fitted(self)
        return self.estimator_

    @available_if(_estimator_has("predict"))
    def predict(self, X: Any) -> np.ndarray:
        """Predictions of the pruned estimator."""
        return self._fitted().predict(X)

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities of the pruned estimator."""
        return self._fitted().predict_proba(X)

    @available_if(_estimator_has("predict_log_proba"))
    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log class probabilities of the pruned estimator."""
        return self._fitted().predict_log_proba(X)

    @available_if(_estimator_has("decision_function"))
    def decision_function(self, X: Any) -> np.ndarray:
        """Decision function of the pruned estimator."""
        return self._fitted().decision_function(X)

    @available_if(_estimator_has("score"))
    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """The pruned estimator's ``score`` (accuracy or R²)."""
        return self._fitted().score(X, y, sample_weight=sample_weight)

    def _delegated(self, name: str) -> Any:
        # AttributeError (not NotFittedError) so hasattr() is False before fit.
        try:
            return getattr(self._fitted(), name)
        except NotFittedError as e:
            raise AttributeError(f"{type(self).__name__} is not fitted, so it has no {name}") from e

    @property
    def classes_(self) -> np.ndarray:
        """Class labels of the fitted classifier."""
        return self._delegated("classes_")

    @property
    def n_features_in_(self) -> int:
        """Number of features seen during fit."""
        return self._delegated("n_features_in_")

    @property
    def feature_names_in_(self) -> np.ndarray:
        """Feature names seen during fit (when X had string column names)."""
        return self._delegated("feature_names_in_")

    def __sklearn_tags__(self):
        from sklearn.utils import get_tags  # sklearn >= 1.6

        tags = super().__sklearn_tags__()
        inner = get_tags(self.estimator)
        tags.estimator_type = inner.estimator_type
        tags.classifier_tags = inner.classifier_tags
        tags.regressor_tags = inner.regressor_tags
        tags.target_tags = inner.target_tags
        tags.input_tags.sparse = inner.input_tags.sparse
        return tags
