"""scikit-learn adapter internals: an estimator's weights as a torch stand-in model, masks
and neuron removal written back on the scikit-learn side, and fine-tuning with ``partial_fit``.
Used by :class:`prunekit.adapters.sklearn.PrunedEstimator`."""

from __future__ import annotations

import numbers
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from sklearn.base import is_classifier
from sklearn.utils import _safe_indexing, check_array
from sklearn.utils.validation import _num_samples
from torch import nn

from ..coverage import Coverage, Skipped
from ..errors import PruneError

__all__ = [
    "ACTIVATIONS", "apply_masks", "calibration", "finetune", "layer_names", "mask_of", "remove_neurons",
    "rename_coverage", "torch_model", "weights_of",
]

#: MLP activation name -> (torch module, its value at 0). A removed neuron outputs
#: act(0), which the next layer's intercept absorbs so predictions do not change.
ACTIVATIONS: dict[str, tuple[type[nn.Module], float]] = {
    "identity": (nn.Identity, 0.0),
    "logistic": (nn.Sigmoid, 0.5),
    "tanh": (nn.Tanh, 0.0),
    "relu": (nn.ReLU, 0.0),
}
FINETUNE_BATCH = 200  # MLP's batch_size="auto" value; used for estimators without one
CALIBRATION_BATCH = 256  # rows per torch batch for data-driven criteria


# -- weights <-> torch ---------------------------------------------------------------------
def rename_coverage(core: Coverage | None, names: list[str]) -> Coverage:
    """The core's coverage of the torch stand-in, in the estimator's names (``coefs_[i]``)."""
    if core is None:  # pragma: no cover - every core result carries one
        raise PruneError("the core pruning result has no coverage")
    rename = {f"layer{i}.weight": n for i, n in enumerate(names)}
    skipped = tuple(Skipped(rename.get(s.name, s.name), s.numel, s.reason, s.by_choice) for s in core.skipped)
    return Coverage(core.covered, core.total, skipped)


def layer_names(kind: str, n: int) -> list[str]:
    """The estimator's own names of its ``n`` weight matrices (``coefs_[i]`` or ``coef_``)."""
    return [f"coefs_[{i}]" for i in range(n)] if kind == "mlp" else ["coef_"]


def weights_of(est: Any, kind: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(weight, bias)`` per layer in torch layout: weight is ``(out, in)``."""
    if kind == "mlp":
        return [(c.T, b) for c, b in zip(est.coefs_, est.intercepts_)]
    w = np.atleast_2d(est.coef_)  # regressors keep a 1-D coef_: one output
    b = np.broadcast_to(np.atleast_1d(np.asarray(est.intercept_, dtype=w.dtype)), (w.shape[0],))
    return [(w, b)]


def torch_model(weights: list[tuple[np.ndarray, np.ndarray]], activation: str) -> nn.Sequential:
    act = ACTIVATIONS[activation][0]
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


def calibration(est: Any, model: nn.Module, X: Any, y: Any) -> tuple[list, Any]:
    """Batches of (inputs, targets) and a loss matching the estimator's output."""
    dtype = next(model.parameters()).dtype
    Xa = check_array(X, accept_sparse=True, dtype=np.float64)
    Xa = Xa.toarray() if hasattr(Xa, "toarray") else Xa
    xt = torch.as_tensor(Xa, dtype=dtype)
    y = np.asarray(y)
    n_out = model[-1].out_features
    n_in = model[0].in_features
    if Xa.ndim != 2 or Xa.shape[1] != n_in:
        raise PruneError(f"X has {Xa.shape[1] if Xa.ndim == 2 else Xa.ndim} features, the fitted estimator takes "
                         f"{n_in} (as in fit)")
    if len(y) != len(Xa):
        raise PruneError(f"y has {len(y)} samples and X {len(Xa)}; give one label per row of X")
    if is_classifier(est) and y.ndim == 1:
        unknown = sorted(set(np.unique(y).tolist()) - set(np.asarray(est.classes_).tolist()), key=str)
        if unknown:
            raise PruneError(f"y holds labels the fitted estimator does not know: {unknown[:5]}"
                             f"{' ...' if len(unknown) > 5 else ''}; its classes_ are {np.asarray(est.classes_).tolist()[:10]}")
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
    step = CALIBRATION_BATCH
    return [(xt[i : i + step], yt[i : i + step]) for i in range(0, len(xt), step)], loss


def mask_of(masks: dict[str, torch.Tensor], name: str, shape: tuple[int, ...]) -> np.ndarray:
    m = masks.get(name)
    return np.ones(shape, dtype=bool) if m is None else m.detach().cpu().numpy().astype(bool)


# -- masks and surgery on the sklearn side ------------------------------------------------
def apply_masks(est: Any, kind: str, masks: list[np.ndarray], biases: list[np.ndarray] | None = None) -> None:
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


def remove_neurons(est: Any, keeps: list[np.ndarray], act_zero: float) -> int:
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


def finetune(est: Any, kind: str, X: Any, y: Any, masks: list[np.ndarray], epochs: int, rng: np.random.RandomState) -> None:
    """``epochs`` passes of ``partial_fit`` in shuffled mini-batches, masks re-applied after each."""
    batch = getattr(est, "batch_size", "auto")
    n = _num_samples(X)
    batch = min(FINETUNE_BATCH, n) if not isinstance(batch, numbers.Integral) else int(batch)
    early = getattr(est, "early_stopping", False)
    best_loss = getattr(est, "best_loss_", None)
    if early:
        est.early_stopping = False  # partial_fit refuses it; restored below
        # Without early stopping partial_fit compares each loss with best_loss_, which a fit
        # with early stopping leaves at None (it tracks validation scores instead).
        if best_loss is None:
            est.best_loss_ = np.inf
    if kind == "mlp" and hasattr(est, "_optimizer"):
        del est._optimizer  # a fresh optimizer: old momentum would push pruned weights
    try:
        for _ in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch):
                idx = order[start : start + batch]
                est.partial_fit(_safe_indexing(X, idx), _safe_indexing(y, idx))
                if masks:
                    apply_masks(est, kind, masks)
    finally:
        if early:
            est.early_stopping = early
            if best_loss is None:
                est.best_loss_ = None
