"""Keras 3 one-shot pruning: :func:`prune` scores kernels with the core criteria, turns them
into masks with the core granularities and allocations, and records the masks in the model
(see :mod:`prunekit.adapters.keras_masks`)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..api import LayerReport
from ..coupled import DEFAULT_CHANNEL_CAP
from ..coverage import Coverage, Skipped
from ..criteria.base import Criterion
from ..errors import PruneError
from .. import validate as V
from ..granularity import NM, Granularity
from ..registry import available, create
from ..selection import masks_from_scores
from .common import resolve
from .keras_base import (
    PRUNABLE, KerasTarget, find_targets, output_layers, to_numpy, total_params, variable,
)
from .keras_masks import apply_masks, check_masks, checked_mask, masks as recorded_masks
from .keras_calibrated import calibration_context, write_back
from .keras_scores import compute_scores

__all__ = ["KerasPruneResult", "prune"]



@dataclass
class KerasPruneResult:
    """What :func:`prune` returns: the (same, masked) model and what was done.

    Attributes:
        model: the pruned model (the object that was passed in).
        masks: ``{"layer/kernel": 0/1 array}`` in Keras layout; channel pruning adds
            ``"layer/bias"`` so removed units output exactly act(0).
        sparsity: zero fraction over exactly the weights this call covered
            (``coverage.covered`` elements), measured on the weights after masking.
        layers: one :class:`~prunekit.api.LayerReport` per covered weight.
        skipped: names of the weights this call left dense (why: ``coverage.skipped``).
        coverage: what the call covered and every weight tensor it left dense, with why.
    """

    model: Any
    masks: dict[str, np.ndarray]
    sparsity: float
    layers: list[LayerReport]
    skipped: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    coverage: Coverage | None = None

    def __repr__(self) -> str:
        cov = f", scope={self.coverage.share:.1%} of parameters" if self.coverage else ""
        return (f"KerasPruneResult(model={getattr(self.model, 'name', type(self.model).__name__)!r}, "
                f"sparsity={self.sparsity:.4f}, layers={len(self.layers)}, masks={len(self.masks)}, "
                f"skipped={len(self.skipped)}{cov})")

    @property
    def layer_sparsity(self) -> dict[str, float]:
        """``{"layer/kernel": zero fraction}``."""
        return {l.name: l.sparsity for l in self.layers}

    def summary(self) -> str:
        """A plain-text per-layer table, then what was covered and left dense."""
        width = max([len(l.name) for l in self.layers] + [5])
        lines = [f"{'layer':<{width}}  {'shape':<20} {'units':>8} {'pruned':>8} {'sparsity':>9}"]
        lines += [
            f"{l.name:<{width}}  {str(list(l.shape)):<20} {l.units:>8} {l.pruned_units:>8} {l.sparsity:>8.2%}"
            for l in self.layers
        ]
        lines.append(f"sparsity over covered weights: {self.sparsity:.2%}")
        if self.coverage is not None:
            lines.append(self.coverage.describe())
        return "\n".join(lines)


def prune(
    model: Any,
    sparsity: float | None = None,
    *,
    criterion: str | Criterion = "magnitude",
    granularity: str | Granularity = "unstructured",
    allocation: str = "global",
    ignore: Iterable[str] = (),
    data: Any = None,
    loss: Any = None,
    masks: Mapping[str, np.ndarray] | None = None,
    min_keep: int = 1,
    max_batches: int | None = None,
    seed: int = 0,
    keep_output_layer: bool = True,
    max_sparsity: float | None = None,
    threshold: float | None = None,
) -> KerasPruneResult:
    """Prune a built Keras model in place by zeroing kernel entries; return what was done.

    Everything is checked and scored before any weight changes: on error the model is as it
    was. The masks are recorded on the weights (:class:`MaskConstraint`), so a plain
    ``model.fit`` keeps the zeros; earlier recorded masks and ``masks`` stay in force.
    Layers of other types (LSTM, Conv2DTranspose...) are left dense and listed in
    ``result.coverage``; a warning says so when they hold over 5 % of the parameters.

    Args:
        model: a built ``keras.Sequential`` or functional ``keras.Model``.
        sparsity: fraction of covered weights to remove, in [0, 1) (leave out for "N:M").
        criterion: a weight-only criterion (``magnitude``, ``normalized_magnitude``,
            ``random``, ``fpgm`` with channels, or a custom weight-only ``Criterion``);
            ``gradient``, ``normalized_gradient``, ``taylor`` or ``hessian`` (need ``data``
            and a loss; each backend's own autodiff); ``apoz``, ``activation_entropy`` or
            ``bn_scale`` with channels (need ``data``); ``wanda``, ``ria`` or ``sparsegpt``
            (need ``data``: the inputs each layer sees; SparseGPT also updates the weights
            it keeps, as in the core). Same scores on every backend.
        granularity: ``"unstructured"``, ``"channel"`` (``"neuron"``: whole units, bias
            included), ``"block"`` or an ``"N:M"`` string such as ``"2:4"``.
        allocation: ``"global"``, ``"uniform"``, ``"lamp"`` or ``"erk"``. With channels,
            unit scores are divided by their layer's mean first (layers of different
            fan-in compare fairly) and, unless ``"uniform"``, no layer loses more than
            ``max(0.9, (1 + sparsity) / 2)`` of its units, as in the torch core.
        ignore: names of layers to leave alone.
        data: ``(x, y)`` arrays or an iterable of ``(x, y)`` batches, for data criteria
            (inputs alone are enough for the activation criteria).
        loss: a Keras loss (name, function or ``keras.losses.Loss``); default: the model's
            compiled loss.
        masks: earlier masks whose zeros must stay zero (added to those recorded in the model).
        min_keep: units every layer keeps at least.
        max_batches: limit calibration batches (a positive integer, or None for all).
        seed: seed for random criteria.
        keep_output_layer: with channels, never prune the units of layers producing outputs.
        max_sparsity: the largest fraction of any one layer that may be removed, in (0, 1].
        threshold: instead of a sparsity, remove the weights (units) whose score divided by
            their layer's largest score is <= threshold, in [0, 1] (as ``pk.prune``; with
            ``"global"``, ``"uniform"`` or ``"lamp"``).

    Returns:
        A :class:`KerasPruneResult` with the masks, per-layer and overall sparsity and coverage.
    """
    if isinstance(granularity, str) and granularity == "neuron":
        granularity = "channel"
    ignore = [ignore] if isinstance(ignore, str) else list(ignore)  # may be a one-shot iterator
    if max_batches is not None:
        V.integer("max_batches", max_batches, minimum=1, hint="or None for every batch")
    if threshold is not None:
        if sparsity is not None:
            raise PruneError(f"give sparsity= or threshold=, not both (got {sparsity!r} and {threshold!r})")
        threshold = V.fraction("threshold", threshold, one=True)
    cfg = resolve(0.0 if threshold is not None else sparsity, criterion, granularity, allocation, min_keep,
                  max_sparsity=max_sparsity, where="prunekit.keras")
    crit, gran, alloc, sp = cfg.criterion, cfg.granularity, cfg.allocation, cfg.sparsity
    if threshold is not None and (alloc is None or not alloc.supports_threshold):
        ok = [n for n in available("allocation") if create("allocation", n).supports_threshold]
        raise PruneError(f"threshold= works with allocation in {ok} (not N:M); got {getattr(alloc, 'name', granularity)!r}")
    targets, skipped = find_targets(model, ignore)
    if not targets:
        left = Coverage(0, total_params(model), tuple(skipped)).describe()
        raise PruneError(
            f"model {model.name!r} has no prunable weights (layer types {sorted(c.__name__ for c in PRUNABLE)}):\n{left}"
        )
    for t in targets:
        if not bool(torch.isfinite(t.original).all()):
            raise PruneError(f"weight {t.name} has NaN/Inf values; fix the model before pruning")
    if gran.structured and keep_output_layer:
        outs = output_layers(model)
        why = "produces the model's output: channel pruning keeps its units (keep_output_layer=True)"
        skipped += [Skipped(t.name, t.numel, why, True) for t in targets if t.layer.name in outs]
        targets = [t for t in targets if t.layer.name not in outs]
        if not targets:
            raise PruneError("the only prunable layer produces the model's output; its units cannot be removed")
    if isinstance(gran, NM):
        for t in targets:
            if not gran.fits(t):
                why = f"input size {t.numel // t.original.shape[0]} is not a multiple of {gran.m} (N:M {gran.n}:{gran.m})"
                skipped.append(Skipped(t.name, t.numel, why))
        misfit = [t.name for t in targets if not gran.fits(t)]
        if misfit:
            warnings.warn(f"N:M {gran.n}:{gran.m} does not fit {misfit}; left dense", stacklevel=2)
        targets = [t for t in targets if gran.fits(t)]
        if not targets:
            raise PruneError(f"no layer has an input size that is a multiple of {gran.m} for N:M pruning")
    for t in targets:
        gran.check(t, crit)
    check_masks(model)
    current = _current(model, recorded_masks(model), masks or {}, targets)
    ctx = None
    if crit.updates_weights:  # SparseGPT: the sweep needs the statistics the scores came from
        ctx = calibration_context(model, targets, crit, data, max_batches, seed)
        scores = crit.scores(ctx)
    else:
        scores = compute_scores(model, targets, crit, data, loss, max_batches, seed)
    new = _new_masks(targets, scores, current, crit, gran, alloc, sp, min_keep, max_sparsity, threshold, ctx)
    if ctx is not None:
        write_back(targets)  # every layer was swept before the first write
    apply_masks(model, new)
    measured = [_report(t, gran) for t in targets]
    reports = [r for r, _ in measured]
    covered = sum(t.numel for t in targets)
    zeros = sum(z for _, z in measured)
    coverage = Coverage(covered, total_params(model), tuple(skipped))
    coverage.warn("prunekit.keras.prune")
    return KerasPruneResult(
        model=model,
        masks=new,
        sparsity=zeros / max(1, covered),
        layers=reports,
        skipped=[s.name for s in skipped],
        config={
            "sparsity": None if threshold is not None else sp,
            "threshold": threshold,
            "criterion": getattr(crit, "name", repr(crit)),
            "granularity": repr(gran),
            "allocation": alloc.name if alloc is not None else None,
            "ignore": ignore,
        },
        coverage=coverage,
    )


def _new_masks(targets, scores, current, crit, gran, alloc, sp, min_keep, max_sparsity, threshold=None,
               ctx=None) -> dict[str, np.ndarray]:
    """Keras-layout float32 masks for every target (and biases with channels), chosen by
    the core's one selection path on the torch layout of each weight. With ``ctx`` (a
    weight-updating criterion: SparseGPT), the criterion's sweep then picks each layer's
    weights within the counts chosen and updates the torch-layout weights of ``targets``."""
    cap = max_sparsity
    if cap is None and gran.structured and alloc is not None and alloc.name != "uniform":
        cap = max(DEFAULT_CHANNEL_CAP, (1.0 + sp) / 2)  # never collapse a layer to a sliver
    weights, units = masks_from_scores(
        targets, scores, crit, gran, alloc, None if threshold is not None else sp, min_keep=min_keep,
        max_sparsity=cap, current=current, threshold=threshold,
        unit_transform=_per_layer_mean if gran.structured else None,
    )
    if ctx is not None:
        for t in targets:
            t.original = t.original.clone()  # the sweep writes here, never into the model
        swept = crit.finalize(ctx, weights, (gran.n, gran.m) if isinstance(gran, NM) else None)
        weights = {k: v * current[k] if k in current else v for k, v in swept.items()}  # earlier zeros stay
    new: dict[str, np.ndarray] = {t.name: t.to_keras(weights[t.name].numpy()) for t in targets}
    if gran.structured:
        for t in targets:
            if getattr(t.layer, "bias", None) is not None:
                new[f"{t.layer.name}/bias"] = units[t.name].numpy()
    return {k: np.ascontiguousarray(v).astype(np.float32) for k, v in new.items()}


def _per_layer_mean(u: torch.Tensor) -> torch.Tensor:
    """Unit scores divided by their layer's mean finite score, so a global ranking compares
    layers of different fan-in (raw norms grow with the number of inputs)."""
    finite = u[torch.isfinite(u)]
    mean = float(finite.mean()) if finite.numel() else 0.0
    return u / mean if mean > 0 else u


def _report(t: KerasTarget, gran: Granularity) -> tuple[LayerReport, int]:
    """Measured on the masked weight: its report (zeros, all-zero units for structured
    pruning) and its number of zeros."""
    w = torch.from_numpy(np.ascontiguousarray(t.to_torch(to_numpy(t.variable))))
    zeros = int((w == 0).sum())
    if gran.structured:
        per = w.movedim(t.out_dim, 0).reshape(w.shape[t.out_dim], -1)
        units, pruned = per.shape[0], int((per == 0).all(1).sum())
    else:
        units, pruned = w.numel(), zeros
    return LayerReport(t.name, tuple(t.variable.shape), units, pruned, zeros / max(1, w.numel())), zeros


def _current(model, recorded, given, targets) -> dict[str, torch.Tensor]:
    """Masks in force (recorded in the model and given), torch layout, keyed like the targets."""
    by_name = {t.name: t for t in targets}
    merged: dict[str, np.ndarray] = {}
    for key, m in [*recorded.items(), *given.items()]:
        m = checked_mask(key, m, variable(model, key))
        merged[key] = merged[key] * m if key in merged else m
    return {
        k: torch.from_numpy(np.ascontiguousarray(by_name[k].to_torch(m))) for k, m in merged.items() if k in by_name
    }
