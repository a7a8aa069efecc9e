"""Keras 3 scores for every criterion, on every backend.

Weight-only criteria (``magnitude``, ``normalized_magnitude``, ``random``, ``fpgm``) run the
core's code on the weights. The gradient family (``gradient``, ``normalized_gradient``,
``taylor``, ``hessian``) differentiates the Keras loss with the backend's own autodiff
(:mod:`prunekit.adapters.keras_autodiff`) and applies the core's formulas. The activation
criteria (``apoz``, ``activation_entropy``) run a Keras feature-extraction model that
returns each pruned layer's output after the element-wise layers that follow it
(activations, BatchNormalization, dropout), as the core's forward hooks do. ``bn_scale``
reads |γ| of the BatchNormalization that follows each layer in the layer graph. The
calibrated criteria (``wanda``, ``ria``, ``sparsegpt``) read each layer's input columns
(:mod:`prunekit.adapters.keras_calibrated`).

Scores are torch tensors in the core's (torch) layout, keyed ``"layer/kernel"``;
:func:`scores` returns them in Keras layout as numpy arrays.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from .. import validate as V
from ..criteria.activation import entropy_per_channel
from ..criteria.base import Context, Criterion
from ..errors import PruneError
from ..registry import available, create
from .keras_autodiff import batch_gradients, loss_function, squared_sample_gradients
from .keras_calibrated import calibration_context, is_calibrated
from .keras_base import L, KerasTarget, batches, find_targets, functional_graph, graph_view, keras, to_numpy

__all__ = ["GRADIENT", "ACTIVATION", "check_criterion", "compute_scores", "scores"]

#: criteria that differentiate the loss
GRADIENT = ("gradient", "normalized_gradient", "taylor", "hessian")
#: criteria that look at each unit's output on data
ACTIVATION = ("apoz", "activation_entropy", "bn_scale")

#: layers a unit's activation passes through unchanged in identity (followed, as the core does)
_ELEMENTWISE = tuple(getattr(L, n) for n in (
    "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Dropout", "SpatialDropout1D",
    "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "BatchNormalization", "Identity",
) if hasattr(L, n))


def compute_scores(model: Any, targets: list[KerasTarget], crit: Criterion, data: Any, loss: Any,
                   max_batches: int | None, seed: int) -> dict[str, torch.Tensor]:
    """Scores of ``targets`` (torch layout) by ``crit``; raise when the criterion cannot run."""
    check_criterion(crit, data)
    name = getattr(crit, "name", "")
    if name in GRADIENT:
        return _gradient_scores(model, targets, crit, data, loss, max_batches)
    if name in ACTIVATION:
        return _activation_scores(model, targets, crit, data, max_batches)
    if is_calibrated(crit):
        return crit.scores(calibration_context(model, targets, crit, data, max_batches, seed))
    return crit.scores(Context(model=None, targets=targets, seed=seed))  # type: ignore[arg-type]


def check_criterion(crit: Criterion, data: Any) -> None:
    """Raise :class:`PruneError` when ``crit`` cannot run on Keras, or needs the ``data``
    that is None; before any model is needed (a callback checks it when constructed)."""
    name = getattr(crit, "name", "")
    if name in GRADIENT:
        if data is None:
            raise PruneError(f"criterion {name!r} needs data=(x, y) arrays or an iterable of (x, y) batches")
    elif name in ACTIVATION or is_calibrated(crit):
        if data is None:
            raise PruneError(f"criterion {name!r} needs data: pass data=x (inputs), (x, y) or an iterable of batches")
    elif crit.needs_data or crit.needs_loss:
        supported = [n for n in available("criterion")
                     if not _needs_data(n) or n in GRADIENT + ACTIVATION or is_calibrated(create("criterion", n))]
        raise PruneError(f"criterion {name!r} is not available for Keras; use one of {supported}")


def _needs_data(name: str) -> bool:
    crit = create("criterion", name)
    return bool(crit.needs_data or crit.needs_loss)


def _gradient_scores(model, targets, crit, data, loss, max_batches) -> dict[str, torch.Tensor]:
    """The core's formulas on the backend's gradients: mean |g| (gradient), mean |w·g|
    (taylor), |g| over its layer norm (normalized_gradient), ½·F·w² with F the empirical
    Fisher (hessian)."""
    name = crit.name
    if data is None:
        raise PruneError(f"criterion {name!r} needs data=(x, y) arrays or an iterable of (x, y) batches")
    loss_fn = loss_function(model, loss, name)
    variables = [t.variable for t in targets]
    weights = [to_numpy(v).astype(np.float32) for v in variables]
    sums = [np.zeros(w.shape, np.float32) for w in weights]
    n = 0
    for x, y in batches(data, max_batches):
        if name == "hessian":
            grads = squared_sample_gradients(model, variables, loss_fn, x, y)
            n += len(x)
        else:
            grads = batch_gradients(model, variables, loss_fn, x, y)
            n += 1
        for s, g, w in zip(sums, grads, weights):
            s += np.abs(w * g) if name == "taylor" else g if name == "hessian" else np.abs(g)
    out = {}
    for t, s, w in zip(targets, sums, weights):
        s = s / n
        if name == "hessian":
            s = 0.5 * s * np.square(w)
        out[t.name] = torch.from_numpy(np.ascontiguousarray(t.to_torch(s)))
    if name == "normalized_gradient":
        out = {k: s / torch.linalg.vector_norm(s) if torch.linalg.vector_norm(s) > 0 else s for k, s in out.items()}
    return out


def _chain_end(view: Any, layer: Any) -> tuple[Any, list[Any]]:
    """The last operation of the element-wise chain after ``layer`` and the chain itself."""
    cur, chain = layer, []
    while True:
        nxt = view.consumers.get(id(cur), [])
        if len(nxt) != 1 or not isinstance(nxt[0], _ELEMENTWISE) or view.uses.get(id(nxt[0]), 0) != 1:
            return cur, chain
        cur = nxt[0]
        chain.append(cur)


def _activation_scores(model, targets, crit, data, max_batches) -> dict[str, torch.Tensor]:
    name = crit.name
    if data is None:
        raise PruneError(f"criterion {name!r} needs data: pass data=x (inputs), (x, y) or an iterable of batches")
    view = graph_view(model)
    ops_by_name = {op.name: op for op in view.operations}
    ends, missing = {}, []
    for t in targets:
        op = ops_by_name.get(t.layer.name)
        if op is None or view.uses.get(id(op), 0) != 1 or isinstance(t.layer, L.Embedding):
            missing.append(t.name)
            continue
        ends[t.name] = _chain_end(view, op)
    if missing:
        raise PruneError(
            f"criterion {name!r} needs each pruned layer called once in the model's own graph (Dense/Conv); "
            f"cannot score {missing}. Exclude them with ignore=[...] or pick another criterion"
        )
    if name == "bn_scale":
        return _bn_scales(targets, ends)
    graph = functional_graph(model)
    inputs = graph.inputs[0] if len(graph.inputs) == 1 else graph.inputs
    extractor = keras.Model(inputs, [ends[t.name][0].output for t in targets])
    zeros: dict[str, np.ndarray] = {t.name: 0.0 for t in targets}
    counts: dict[str, int] = {t.name: 0 for t in targets}
    pooled: dict[str, list[np.ndarray]] = {t.name: [] for t in targets}
    for x, _ in batches(data, max_batches, labels=False):
        outs = extractor(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for t, a in zip(targets, outs):
            a = to_numpy(a).astype(np.float32)
            if a.ndim > 2 and getattr(t.layer, "data_format", "channels_last") == "channels_first":
                a = np.moveaxis(a, 1, -1)  # units on the last axis, as channels_last has them
            a = a.reshape(a.shape[0], -1, a.shape[-1]).transpose(0, 2, 1)  # (N, units, positions)
            if name == "apoz":
                zeros[t.name] = zeros[t.name] + (a == 0).sum(axis=(0, 2)).astype(np.float64)
                counts[t.name] += a.shape[0] * a.shape[2]
            else:
                pooled[t.name].append(a.mean(axis=2))
    if name == "apoz":
        return {k: torch.from_numpy(1.0 - zeros[k] / counts[k]).float() for k in zeros}
    return {k: entropy_per_channel(torch.from_numpy(np.concatenate(v)), crit.bins) for k, v in pooled.items()}


def _bn_scales(targets, ends) -> dict[str, torch.Tensor]:
    out, missing = {}, []
    for t in targets:
        units = t.original.shape[t.out_dim]
        bn = next((op for op in ends[t.name][1] if isinstance(op, L.BatchNormalization)), None)
        if bn is None or bn.gamma is None or tuple(bn.gamma.shape) != (units,):
            missing.append(t.name)
            continue
        out[t.name] = torch.from_numpy(np.abs(to_numpy(bn.gamma)).astype(np.float32))
    if missing:
        raise PruneError(
            f"criterion 'bn_scale' needs an affine BatchNormalization right after each pruned layer; "
            f"none follows {missing}. Exclude them with ignore={missing!r} or pick another criterion"
        )
    return out


def scores(
    model: Any,
    criterion: str | Criterion = "magnitude",
    *,
    data: Any = None,
    loss: Any = None,
    ignore: Iterable[str] = (),
    max_batches: int | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Score every prunable weight of a Keras model without changing it.

    Args:
        model: a built Sequential or functional Keras model.
        criterion: any name of ``prunekit.available("criterion")`` that Keras supports
            (weight-only ones, the gradient family, ``apoz``, ``activation_entropy``,
            ``bn_scale``, ``wanda``, ``ria``, ``sparsegpt``) or a ``Criterion``.
        data: ``(x, y)`` arrays or ``(x, y)`` batches (gradient family); inputs alone work
            for the activation and calibrated criteria.
        loss: a Keras loss; default: the model's compiled loss.
        ignore: layer names to leave out.
        max_batches: limit calibration batches (a positive integer, or None for all).
        seed: seed for random criteria.

    Returns:
        ``{"layer/kernel": float32 array}``: element scores in the weight's Keras shape, or
        one score per unit (the weight's last axis) for channel-level criteria.
    """
    if max_batches is not None:
        V.integer("max_batches", max_batches, minimum=1, hint="or None for every batch")
    crit = create("criterion", criterion)
    targets, _ = find_targets(model, ignore)
    raw = compute_scores(model, targets, crit, data, loss, max_batches, seed)
    out = {}
    for t in targets:
        s = raw[t.name].detach().float().numpy()
        out[t.name] = t.to_keras(s) if s.shape == tuple(t.original.shape) else s
    return out
