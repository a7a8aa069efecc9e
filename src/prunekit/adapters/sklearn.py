"""scikit-learn adapter: :class:`PrunedEstimator`, a meta-estimator that prunes MLPs and
linear models with the prunekit core.

``fit`` fits a clone of the wrapped estimator, copies its weights into a small torch model
(``nn.Sequential`` of ``nn.Linear`` and the MLP's activation, or one ``nn.Linear`` for a
linear model), runs :func:`prunekit.prune` on it and writes the masks back into the
scikit-learn estimator. With ``granularity="neuron"`` whole hidden neurons are removed and
the MLP becomes genuinely smaller. Needs ``pip install prunekit[sklearn]``.

Example:
    >>> from sklearn.neural_network import MLPClassifier
    >>> from prunekit.adapters.sklearn import PrunedEstimator
    >>> clf = PrunedEstimator(MLPClassifier((64,)), sparsity=0.9).fit(X, y)
    >>> clf.sparsity_, clf.score(X, y)
"""

from __future__ import annotations

import warnings

import numbers
from collections import OrderedDict
from typing import Any

try:
    import sklearn  # noqa: F401  (fails early with the install hint below)
except ImportError as e:
    raise ImportError(
        "prunekit.adapters.sklearn needs scikit-learn; install it with: pip install prunekit[sklearn]"
    ) from e

import numpy as np
import torch
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.svm import LinearSVC, LinearSVR
from sklearn.utils import _safe_indexing, check_array, check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import _num_samples, check_is_fitted
from torch import nn

from ..api import Pruner, prune
from ..errors import PruneError, PruneTypeError
from ..registry import create

__all__ = ["PrunedEstimator"]

#: MLP activation name -> (torch module, its value at 0). A removed neuron outputs
#: act(0), which the next layer's intercept absorbs so predictions do not change.
_ACTIVATIONS: dict[str, tuple[type[nn.Module], float]] = {
    "identity": (nn.Identity, 0.0),
    "logistic": (nn.Sigmoid, 0.5),
    "tanh": (nn.Tanh, 0.0),
    "relu": (nn.ReLU, 0.0),
}
_SUPPORTED = (
    "MLPClassifier, MLPRegressor, and linear models with coef_ (SGDClassifier, SGDRegressor, "
    "LogisticRegression, Lasso, Ridge, LinearSVC, ... from sklearn.linear_model / sklearn.svm)"
)
_NEURON = ("neuron", "channel")
_FINETUNE_BATCH = 200  # MLP's batch_size="auto" value; used for estimators without one
_CALIBRATION_BATCH = 256  # rows per torch batch for data-driven criteria


def _kind(estimator: object) -> str:
    """``"mlp"`` or ``"linear"``; raise naming the type and the supported ones otherwise."""
    if isinstance(estimator, (MLPClassifier, MLPRegressor)):
        return "mlp"
    module = type(estimator).__module__
    if module.startswith("sklearn.linear_model") or isinstance(estimator, (LinearSVC, LinearSVR)):
        return "linear"
    raise PruneTypeError(f"PrunedEstimator cannot prune {type(estimator).__name__}; supported: {_SUPPORTED}")


def _estimator_has(attr: str):
    """``available_if`` check: look at the fitted copy if there is one, else the template."""

    def check(self: PrunedEstimator) -> bool:
        inner = self.estimator_ if hasattr(self, "estimator_") else self.estimator
        return hasattr(inner, attr)

    return check


class PrunedEstimator(MetaEstimatorMixin, BaseEstimator):
    """Fit a scikit-learn MLP or linear model, then prune its weights with prunekit.

    Construction stores the arguments and nothing else; ``fit`` validates them.

    Args:
        estimator: an unfitted ``MLPClassifier``, ``MLPRegressor`` or linear model with
            ``coef_`` (``SGDClassifier``, ``SGDRegressor``, ``LogisticRegression``,
            ``Lasso``, ...). It is cloned, never modified.
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

    Attributes:
        estimator_: the fitted, pruned (and for ``"neuron"`` smaller) estimator.
        masks_: ``{"coefs_[i]" or "coef_": bool array}``, True = kept, in the shapes the
            estimator had before any neuron removal.
        sparsity_: fraction of those weights that are zero or removed.
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
    ) -> None:
        self.estimator = estimator
        self.sparsity = sparsity
        self.criterion = criterion
        self.granularity = granularity
        self.allocation = allocation
        self.finetune_iter = finetune_iter
        self.random_state = random_state

    # -- validation ------------------------------------------------------------------------
    def _validate(self) -> tuple[str, bool]:
        kind = _kind(self.estimator)
        neuron = isinstance(self.granularity, str) and self.granularity in _NEURON
        if neuron and kind != "mlp":
            raise PruneError(
                f"granularity={self.granularity!r} removes hidden neurons and needs an MLP; "
                f"{type(self.estimator).__name__} has only its output layer (use 'unstructured')"
            )
        # The core checks sparsity/criterion/granularity/allocation; run it before the
        # (possibly long) inner fit so a typo fails at once.
        Pruner(
            self.sparsity,
            criterion=self.criterion,
            granularity="channel" if neuron else self.granularity,
            allocation=self.allocation,
        )._resolve()
        it = self.finetune_iter
        if isinstance(it, bool) or not isinstance(it, numbers.Integral) or it < 0:
            raise PruneError(f"finetune_iter must be an int >= 0 (epochs), got {it!r}")
        if it > 0:
            if kind == "mlp" and self.estimator.solver == "lbfgs":
                raise PruneError("finetune_iter > 0 needs partial_fit; MLP solver 'lbfgs' has none, use 'adam' or 'sgd'")
            if kind == "linear" and not hasattr(self.estimator, "partial_fit"):
                raise PruneError(
                    f"finetune_iter > 0 needs partial_fit, which {type(self.estimator).__name__} lacks "
                    "(SGDClassifier/SGDRegressor have it); use finetune_iter=0"
                )
        return kind, neuron

    # -- fit -------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, **fit_params: Any) -> PrunedEstimator:
        """Fit a clone of ``estimator``, prune it, optionally fine-tune it.

        Args:
            X: training inputs, anything the wrapped estimator accepts.
            y: training targets.
            **fit_params: passed to the wrapped estimator's ``fit``.

        Returns:
            ``self``, with ``estimator_``, ``masks_``, ``sparsity_``, ``n_removed_neurons_``.
        """
        kind, neuron = self._validate()
        est = clone(self.estimator).fit(X, y, **fit_params)
        if kind == "linear" and not isinstance(getattr(est, "coef_", None), np.ndarray):
            raise PruneTypeError(
                f"{type(est).__name__} has no dense coef_ array after fit; supported: {_SUPPORTED}"
            )
        rng = check_random_state(self.random_state)
        weights = _weights(est, kind)
        model = _torch_model(weights, est.activation if kind == "mlp" else "identity")
        data = loss_fn = None
        if create("criterion", self.criterion).needs_data:
            data, loss_fn = _calibration(est, model, X, y)
        with warnings.catch_warnings():
            # Neurons are removed here from the row masks; the coupled-channel advice does not apply.
            warnings.filterwarnings("ignore", message="granularity='channel' without example_inputs")
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
        names = _names(kind, len(weights))
        masks = [_mask_of(result.masks, f"layer{i}.weight", w.shape) for i, (w, _) in enumerate(weights)]
        biases = [_mask_of(result.masks, f"layer{i}.bias", b.shape) for i, (_, b) in enumerate(weights)]
        _apply(est, kind, masks, biases)
        removed, live = 0, masks
        if neuron:
            # A hidden neuron is kept iff its bias mask is (channel masks cover the bias).
            removed = _remove_neurons(est, biases[:-1], _ACTIVATIONS[est.activation][1])
            live = []  # what remains is dense: nothing to re-apply
        if self.finetune_iter:
            _finetune(est, kind, X, y, live, int(self.finetune_iter), rng)
        if kind == "mlp" and hasattr(est, "_best_coefs"):
            # sklearn keeps the best weights seen while fitting (dense, old shapes); a pickled
            # pruned model must not carry the dense one along.
            est._best_coefs = [c.copy() for c in est.coefs_]
            est._best_intercepts = [b.copy() for b in est.intercepts_]
        # In the estimator's own layout: coefs_[i] is (in, out), coef_ as fitted.
        masks_ = {n: (m.T if kind == "mlp" else m.reshape(est.coef_.shape)) for n, m in zip(names, masks)}
        total = sum(m.size for m in masks)
        # Counted on the final weights: removed neurons' weights (in and out) count as gone.
        nonzero = sum(int(np.count_nonzero(w)) for w, _ in _weights(est, kind))
        # Learned attributes last: a failure above leaves no half-fitted state behind.
        self.sparsity_ = (total - nonzero) / total if total else 0.0
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


# -- weights <-> torch ---------------------------------------------------------------------
def _names(kind: str, n: int) -> list[str]:
    return [f"coefs_[{i}]" for i in range(n)] if kind == "mlp" else ["coef_"]


def _weights(est: Any, kind: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(weight, bias)`` per layer in torch layout: weight is ``(out, in)``."""
    if kind == "mlp":
        return [(c.T, b) for c, b in zip(est.coefs_, est.intercepts_)]
    w = np.atleast_2d(est.coef_)  # regressors keep a 1-D coef_: one output
    b = np.broadcast_to(np.atleast_1d(np.asarray(est.intercept_, dtype=w.dtype)), (w.shape[0],))
    return [(w, b)]


def _torch_model(weights: list[tuple[np.ndarray, np.ndarray]], activation: str) -> nn.Sequential:
    act = _ACTIVATIONS[activation][0]
    layers: dict[str, nn.Module] = {}
    for i, (w, b) in enumerate(weights):
        lin = nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64 if w.dtype == np.float64 else torch.float32)
        with torch.no_grad():  # copies: masking zeros the torch weights in place
            lin.weight.copy_(torch.from_numpy(np.array(w)))
            lin.bias.copy_(torch.from_numpy(np.array(b)))
        layers[f"layer{i}"] = lin
        if i < len(weights) - 1:
            layers[f"act{i}"] = act()
    return nn.Sequential(OrderedDict(layers))  # logits out: the losses below apply the output function


def _calibration(est: Any, model: nn.Module, X: Any, y: Any) -> tuple[list, Any]:
    """Batches of (inputs, targets) and a loss matching the estimator's output."""
    dtype = next(model.parameters()).dtype
    Xa = check_array(X, accept_sparse=True, dtype=np.float64)
    Xa = Xa.toarray() if hasattr(Xa, "toarray") else Xa
    xt = torch.as_tensor(Xa, dtype=dtype)
    y = np.asarray(y)
    n_out = model[-1].out_features
    if is_classifier(est):
        if y.ndim == 2 or n_out == 1:  # multilabel indicator, or one logit for two classes
            t = y if y.ndim == 2 else np.searchsorted(est.classes_, y).reshape(-1, 1)
            yt, loss = torch.as_tensor(t, dtype=dtype), nn.functional.binary_cross_entropy_with_logits
        else:
            yt, loss = torch.as_tensor(np.searchsorted(est.classes_, y)), nn.functional.cross_entropy
    else:
        yt = torch.as_tensor(y.reshape(len(y), n_out), dtype=dtype)
        if getattr(est, "out_activation_", None) == "exp":  # MLPRegressor(loss="poisson"): log-rates out
            loss = nn.functional.poisson_nll_loss
        else:
            loss = nn.functional.mse_loss
    step = _CALIBRATION_BATCH
    return [(xt[i : i + step], yt[i : i + step]) for i in range(0, len(xt), step)], loss


def _mask_of(masks: dict[str, torch.Tensor], name: str, shape: tuple[int, ...]) -> np.ndarray:
    m = masks.get(name)
    return np.ones(shape, dtype=bool) if m is None else m.detach().cpu().numpy().astype(bool)


# -- masks and surgery on the sklearn side ------------------------------------------------
def _apply(est: Any, kind: str, masks: list[np.ndarray], biases: list[np.ndarray] | None = None) -> None:
    """Zero masked weights (torch layout masks) in place, so every alias sees the zeros."""
    if kind == "mlp":
        for i, m in enumerate(masks):
            est.coefs_[i] *= m.T
            if biases is not None:
                est.intercepts_[i] *= biases[i]
        return
    m = masks[0]
    # SGD models keep coef_ and its internal copies (_standard_coef, _average_coef) which
    # partial_fit resumes from; all of them must carry the zeros.
    for attr in ("coef_", "_standard_coef", "_average_coef"):
        arr = getattr(est, attr, None)
        if isinstance(arr, np.ndarray) and arr.size == m.size:
            arr *= m.reshape(arr.shape)


def _remove_neurons(est: Any, keeps: list[np.ndarray], act_zero: float) -> int:
    """Slice masked hidden neurons out of an MLP; return how many went."""
    coefs, intercepts = list(est.coefs_), list(est.intercepts_)
    removed = 0
    for i, keep in enumerate(keeps):
        dead = ~keep
        removed += int(dead.sum())
        if act_zero:  # a masked neuron still outputs act(0); fold it into the next bias
            intercepts[i + 1] = intercepts[i + 1] + act_zero * coefs[i + 1][dead].sum(axis=0)
        coefs[i] = np.ascontiguousarray(coefs[i][:, keep])
        intercepts[i] = intercepts[i][keep]
        coefs[i + 1] = np.ascontiguousarray(coefs[i + 1][keep, :])
    est.coefs_, est.intercepts_ = coefs, intercepts
    est.hidden_layer_sizes = tuple(int(k.sum()) for k in keeps)  # partial_fit sizes buffers from it
    est.n_outputs_ = coefs[-1].shape[1]
    if hasattr(est, "_optimizer"):
        del est._optimizer  # its moment estimates have the old shapes
    return removed


def _finetune(est: Any, kind: str, X: Any, y: Any, masks: list[np.ndarray], epochs: int, rng: np.random.RandomState) -> None:
    """``epochs`` passes of ``partial_fit`` in shuffled mini-batches, masks re-applied after each."""
    batch = getattr(est, "batch_size", "auto")
    n = _num_samples(X)
    batch = min(_FINETUNE_BATCH, n) if not isinstance(batch, numbers.Integral) else int(batch)
    early = getattr(est, "early_stopping", False)
    if early:
        est.early_stopping = False  # partial_fit refuses it; restored below
    if kind == "mlp" and hasattr(est, "_optimizer"):
        del est._optimizer  # a fresh optimizer: old momentum would push pruned weights
    try:
        for _ in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch):
                idx = order[start : start + batch]
                est.partial_fit(_safe_indexing(X, idx), _safe_indexing(y, idx))
                if masks:
                    _apply(est, kind, masks)
    finally:
        if early:
            est.early_stopping = early
