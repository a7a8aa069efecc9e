"""Allocations that set each layer's sparsity first, then compare within a layer or a row.

- ``row``: every output row of every layer loses the same fraction (Wanda's comparison
  group: a row's weights all add up into one output).
- ``owl``: outlier-weighted layer-wise sparsity (Yin et al., 2024): layers whose scores
  hold more outliers (above ``m`` times the layer's mean score) are pruned less, within
  ``sparsity ± lam``; the model as a whole still loses ``sparsity``.
- ``depth``: a linear ramp from ``sparsity - lam`` at the first layer to ``sparsity + lam``
  at the last (early layers feed every later one, so their errors compound).

``owl`` and ``depth`` compare within each layer (``per="layer"``) or within each output
row (``per="row"``, for Wanda-style scores). The LLM driver applies the same functions to
whole transformer blocks (:func:`owl_sparsities`, :func:`depth_sparsities`).
"""

from __future__ import annotations

import torch

from .. import validate as V
from ..errors import PruneError
from ..ranking import lowest_in_rows
from ..registry import register
from .base import Allocation, Layer, prune_lowest, protected_scores

PER = ("layer", "row")


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Percentage of scores above ``m`` times their mean (OWL's layer-wise outlier distribution)."""
    flat = torch.cat([t.reshape(-1).to(torch.float32) for t in scores])
    flat = flat[torch.isfinite(flat)]
    if flat.numel() == 0:
        return 0.0
    return float((flat > flat.mean() * m).sum()) / flat.numel() * 100.0


def _within_band(dev: list[float], sizes: list[int], sparsity: float, lam: float) -> list[float]:
    """``sparsity + dev[i] - c``, each clipped to ``[sparsity - lam, sparsity + lam]``, with the
    one shift ``c`` that makes the size-weighted mean exactly ``sparsity`` (found by
    bisection: the clipped total only falls as ``c`` grows). ``dev`` lies in ``[-lam, lam]``;
    the order of the layers' sparsities is kept."""
    lo, hi = sparsity - lam, sparsity + lam
    total = float(sum(sizes))
    if lam <= 0 or total <= 0:
        return [sparsity] * len(dev)

    def values(c: float) -> list[float]:
        return [min(max(sparsity + d - c, lo), hi) for d in dev]

    a, b = -2 * lam, 2 * lam  # all at sparsity + lam, all at sparsity - lam
    for _ in range(100):
        mid = (a + b) / 2
        if sum(v * w for v, w in zip(values(mid), sizes)) > sparsity * total:
            a = mid
        else:
            b = mid
    return values((a + b) / 2)


def owl_sparsities(ratios: list[float], sizes: list[int], sparsity: float, lam: float) -> list[float]:
    """OWL's per-layer (or per-block) sparsities from outlier ratios.

    Outlier ratios are scaled linearly onto ``sparsity + lam`` (fewest outliers) down to
    ``sparsity - lam`` (most): layers with more outliers keep more weights. The values are
    then shifted together, and clipped to ``sparsity ± lam``, so that their size-weighted
    mean is exactly ``sparsity``: the model as a whole loses exactly ``sparsity``, and every
    layer's sparsity lies within ``sparsity ± lam``. ``lam`` is narrowed to
    ``min(lam, sparsity, 1 - sparsity)`` so that no sparsity leaves ``[0, 1]``.
    """
    lam = min(lam, sparsity, 1.0 - sparsity)
    lo, span = min(ratios, default=0.0), max(ratios, default=0.0) - min(ratios, default=0.0)
    dev = [lam - (r - lo) / span * 2 * lam if span > 0 else 0.0 for r in ratios]
    return _within_band(dev, sizes, sparsity, lam)


def depth_sparsities(sizes: list[int], sparsity: float, lam: float) -> list[float]:
    """A linear ramp of sparsities from ``sparsity - lam`` (first) to ``sparsity + lam`` (last),
    shifted together, and clipped to ``sparsity ± lam``, so that the size-weighted mean is
    exactly ``sparsity`` (the ramp is kept where the layer sizes allow it). ``lam`` is
    narrowed to ``min(lam, sparsity, 1 - sparsity)`` so that no sparsity leaves ``[0, 1]``."""
    lam = min(lam, sparsity, 1.0 - sparsity)
    n = len(sizes)
    return _within_band([(-lam + 2 * lam * i / (n - 1)) if n > 1 else 0.0 for i in range(n)], sizes, sparsity, lam)


def prune_rows(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask ``[rows, cols]`` removing ``round(cols * sparsity)`` lowest scores of every row.

    Ties go to the earlier column; ``-inf`` (already pruned) is removed first and ``+inf``
    never, so a row may lose more (or fewer) when earlier masks or protection demand it.
    """
    rows, cols = scores.shape
    n = round(cols * sparsity)
    forced = (scores == float("-inf")).sum(1)
    protected = (scores == float("inf")).sum(1)
    count = torch.maximum(torch.full_like(forced, n), forced).clamp(max=cols).minimum(cols - protected)
    k = int(count[0]) if rows else 0
    if 0 < k < cols and bool((count == k).all()):
        # every row loses k: the k-th smallest score cuts each row, ties at the cut going to
        # the earlier columns (what a stable sort gives, in half its time)
        return ~lowest_in_rows(scores, k)
    order = torch.sort(scores, dim=1, stable=True).indices
    rank = torch.arange(cols, device=scores.device).expand(rows, cols)
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, order, rank >= count.unsqueeze(1))
    return keep


class PerLayer(Allocation):
    """Base for allocations that give each layer a sparsity (:meth:`sparsities`), then
    remove the lowest scores within the layer or within each of its rows."""

    supports_threshold = False
    per = "layer"

    def sparsities(self, layers: list[Layer], sparsity: float) -> list[float]:
        raise NotImplementedError

    def select(self, layers, sparsity, min_keep=1):
        out = {}
        for layer, s in zip(layers, self.sparsities(layers, sparsity)):
            scores = protected_scores(layer, layer.scores, min_keep)
            if self.per == "row":
                if layer.n_units != layer.numel:
                    raise PruneError(f"allocation {self.name!r} with per='row' needs one score per weight (granularity='unstructured')")
                out[layer.name] = prune_rows(scores.reshape(layer.shape[0], -1), s).reshape(-1)
            else:
                out[layer.name] = prune_lowest(scores, layer.sizes(), s * layer.numel)
        return out


@register("allocation", "row")
class Row(PerLayer):
    """The same sparsity in every output row of every layer (Wanda's comparison group)."""

    per = "row"

    def sparsities(self, layers, sparsity):
        return [sparsity] * len(layers)


@register("allocation", "owl")
class OWL(PerLayer):
    """Outlier-weighted layer-wise sparsity (Yin et al., 2024).

    Args:
        lam: the largest deviation of a layer's sparsity from the target (0.08 in the paper).
        m: the outlier threshold, in multiples of the layer's mean score (5 in the paper).
        per: compare within each ``"layer"`` or each output ``"row"``.
    """

    def __init__(self, lam: float = 0.08, m: float = 5.0, per: str = "layer") -> None:
        self.lam = V.fraction("owl lam", lam, hint="the largest deviation from the sparsity")
        self.m = V.number("owl m", m, lo=0.0, lo_open=True, hint="typically 5")
        self.per = V.choice("owl per", per, PER)

    def sparsities(self, layers, sparsity):
        ratios = [outlier_ratio([l.scores], self.m) for l in layers]
        return owl_sparsities(ratios, [l.numel for l in layers], sparsity, self.lam)


@register("allocation", "depth")
class Depth(PerLayer):
    """Sparsity ramped with depth (the order of the layers): ``sparsity ± lam``.

    Args:
        lam: the ramp's half-span.
        per: compare within each ``"layer"`` or each output ``"row"``.
    """

    def __init__(self, lam: float = 0.05, per: str = "layer") -> None:
        self.lam = V.fraction("depth lam", lam, hint="the ramp's half-span")
        self.per = V.choice("depth per", per, PER)

    def sparsities(self, layers, sparsity):
        return depth_sparsities([l.numel for l in layers], sparsity, self.lam)

