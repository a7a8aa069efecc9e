"""Magnitude criteria: |w| (Lp over groups) and |w| / max|w| per layer."""

from __future__ import annotations

import torch

from ..registry import register
from .base import Context, Criterion


@register("criterion", "magnitude")
class Magnitude(Criterion):
    """Importance = |w|. Groups (channels, blocks) are scored by their Lp norm.

    Args:
        p: norm used to combine a group's weights (1 = sum of |w|, 2 = Euclidean).
    """

    statistics = "none"

    def __init__(self, p: float = 2.0) -> None:
        self.p = p

    def matrix_scores(self, weight2d, squares):
        return weight2d.abs().to(torch.float32)

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        return {t.name: t.weight.detach().abs() for t in ctx.targets}

    def reduce(self, scores: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        if self.p == float("inf"):
            return scores.amax(dim=dims)
        return scores.pow(self.p).sum(dim=dims).pow(1.0 / self.p)


@register("criterion", "normalized_magnitude")
class NormalizedMagnitude(Magnitude):
    """Importance = |w| / max|w| within each layer, so a global threshold compares layers
    on a common [0, 1] scale instead of favouring layers with large weights."""

    statistics = None

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        out = {}
        for t in ctx.targets:
            a = t.weight.detach().abs()
            m = a.max()
            out[t.name] = a / m if m > 0 else a
        return out


def magnitude(model, p: float = 2.0, **kwargs) -> dict[str, torch.Tensor]:
    """Functional twin of :class:`Magnitude`: ``{name: |w|}`` for every prunable weight."""
    return Magnitude(p=p)(model, **kwargs)


def normalized_magnitude(model, p: float = 2.0, **kwargs) -> dict[str, torch.Tensor]:
    """Functional twin of :class:`NormalizedMagnitude`."""
    return NormalizedMagnitude(p=p)(model, **kwargs)
