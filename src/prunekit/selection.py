"""The one path from scores to masks: granularity units, allocation, keep-masks.

:func:`masks_from_scores` is what :class:`prunekit.Pruner` runs for unstructured, block and
N:M pruning (and for channels without a traced graph), and what the Keras adapter runs on
its weights after converting their layout. A *target* here is anything with ``name`` and
``original`` (a tensor of the weight's shape, out units first): :class:`prunekit.targets.Target`
or an adapter's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .allocation import Allocation, Layer, cap_layers
from .criteria.base import Criterion
from .errors import PruneError
from .granularity import NM, Granularity


class _AnyAlive(Criterion):
    """Reducer used to find units whose weights are all masked already."""

    def reduce(self, scores: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        return scores.amax(dim=dims)


def check_scores(targets: Sequence[Any], scores: Mapping[str, torch.Tensor], criterion: Criterion) -> None:
    """Every target has a score tensor and no score is NaN."""
    for t in targets:
        s = scores.get(t.name)
        if s is None:
            raise PruneError(f"criterion {criterion.name!r} returned no score for {t.name}")
        if torch.isnan(s).any():
            raise PruneError(f"criterion {criterion.name!r} produced NaN scores for {t.name}")


def masks_from_scores(
    targets: Sequence[Any],
    scores: Mapping[str, torch.Tensor],
    criterion: Criterion,
    granularity: Granularity,
    allocation: Allocation | None,
    sparsity: float | None,
    threshold: float | None = None,
    *,
    min_keep: int = 1,
    max_sparsity: float | None = None,
    current: Mapping[str, torch.Tensor | None] | None = None,
    unit_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Keep-masks for ``targets`` from their ``scores``.

    Args:
        targets: the weights (``name``, ``original``), in layer order.
        scores: ``{name: scores}`` shaped like each weight (element criteria) or like its
            units (channel criteria).
        criterion: reduces element scores to units (:meth:`Criterion.reduce`).
        granularity: the units; an N:M pattern uses no allocation.
        allocation: spreads ``sparsity`` (or applies ``threshold``) over the layers.
        sparsity, threshold: one of the two (ignored for N:M).
        min_keep: units every layer keeps at least.
        max_sparsity: the most any layer may lose (``None``: no cap).
        current: ``{name: mask}`` already applied (0 = pruned): those weights stay pruned.
        unit_transform: applied to each layer's unit scores before the allocation (the
            Keras adapter divides channel scores by their layer mean).

    Returns:
        ``(weights, units)``: boolean weight-shaped keep-masks by target name, and the unit
        keep-masks (empty for N:M), from which callers mask biases of removed channels.
    """
    check_scores(targets, scores, criterion)
    current = current or {}
    weights: dict[str, torch.Tensor] = {}
    if isinstance(granularity, NM):
        for t in targets:
            s = scores[t.name].float()
            cur = current.get(t.name)
            if cur is not None:
                s = s.masked_fill(cur == 0, float("-inf"))
            weights[t.name] = granularity.mask(t, s)
        return weights, {}
    layers = []
    for t in targets:
        u = granularity.unit_scores(t, scores[t.name], criterion)
        cur = current.get(t.name)
        if cur is not None:
            dead = granularity.unit_scores(t, cur.float(), _AnyAlive()) == 0
            u = u.masked_fill(dead, float("-inf"))
        if unit_transform is not None:
            u = unit_transform(u)
        layers.append(Layer(t.name, u, granularity.unit_size(t), tuple(t.original.shape)))
    layers = cap_layers(layers, max_sparsity)
    assert allocation is not None
    if threshold is None:
        units = allocation.select(layers, float(sparsity), min_keep)  # type: ignore[arg-type]
    else:
        units = allocation.select_threshold(layers, threshold, min_keep)
    for t in targets:
        m = granularity.to_mask(t, units[t.name])
        cur = current.get(t.name)
        weights[t.name] = m & (cur != 0) if cur is not None else m
    return weights, units
