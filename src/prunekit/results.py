"""What a pruning call reports: :class:`PruneResult` and its parts, and the helpers that fill them.

:class:`LayerReport`, :class:`GroupReport`, :class:`PruneResult` (what :func:`prunekit.prune`
and ``Pruner.report_`` give) and :class:`HybridResult` (what :func:`prunekit.prune_hybrid`
gives), with what both pruning paths (:mod:`prunekit.pruner`, per layer, and
:mod:`prunekit.coupled`, coupled channel groups) fill them with: the per-weight report and
the recorded settings. What a call covers and leaves out is :mod:`prunekit.scope`'s.

The classes are importable from :mod:`prunekit.api` too, where they were defined before:
results pickled then load as they did.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .coverage import Coverage
from .granularity import NM, Granularity
from .targets import Target, rows_per_output

__all__ = ["GroupReport", "HybridResult", "LayerReport", "PruneResult", "config_of", "layer_report"]


@dataclass(frozen=True)
class LayerReport:
    """What pruning did to one weight."""

    name: str
    shape: tuple[int, ...]
    units: int
    pruned_units: int
    sparsity: float


@dataclass(frozen=True)
class GroupReport:
    """What coupled channel pruning did to one group of coupled channels."""

    name: str
    units: int
    pruned_units: int
    params: list[str]
    #: output channels of the group's producing layers (residual partners each count; a
    #: unit of a grouped conv is several channels) and how many of them were removed
    channels: int = 0
    pruned_channels: int = 0


@dataclass
class PruneResult:
    """What :func:`prune` returns: the (masked, same-object) model and what was done."""

    model: nn.Module
    masks: dict[str, torch.Tensor]
    #: zero fraction over the weights this call pruned (its targets); for coupled channel
    #: pruning, the fraction of coupled units removed (``weight_sparsity`` counts the zeros)
    sparsity: float
    layers: list[LayerReport]
    skipped: list[str] = field(default_factory=list)  # weights left dense; why: coverage.skipped
    scores: dict[str, torch.Tensor] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    groups: list[GroupReport] | None = None  # coupled channel pruning only
    coverage: Coverage | None = None  # what this call covered and what it left dense, with why

    def __repr__(self) -> str:
        cov = f", scope={self.coverage.share:.1%} of parameters" if self.coverage else ""
        return (
            f"PruneResult(sparsity={self.sparsity:.4f}, layers={len(self.layers)}, masks={len(self.masks)}, "
            f"skipped={len(self.skipped)}{cov})"
        )

    @property
    def weight_sparsity(self) -> float:
        """Zero fraction over the weights in ``layers``, whatever the granularity."""
        sizes = [math.prod(l.shape) for l in self.layers]
        return sum(l.sparsity * n for l, n in zip(self.layers, sizes)) / max(1, sum(sizes))

    def summary(self) -> str:
        """A plain-text per-layer table."""
        width = max([len(l.name) for l in self.layers] + [5])
        lines = [f"{'layer':<{width}}  {'shape':<20} {'units':>8} {'pruned':>8} {'sparsity':>9}"]
        for l in self.layers:
            lines.append(
                f"{l.name:<{width}}  {str(list(l.shape)):<20} {l.units:>8} {l.pruned_units:>8} {l.sparsity:>8.2%}"
            )
        if self.groups is not None:
            gw = max([len(g.name) for g in self.groups] + [5])
            lines.append("")
            lines.append(f"{'group':<{gw}}  {'units':>8} {'pruned':>8} {'channels':>8} {'pruned':>8}")
            for g in self.groups:
                lines.append(f"{g.name:<{gw}}  {g.units:>8} {g.pruned_units:>8} {g.channels:>8} {g.pruned_channels:>8}")
            ch = sum(g.channels for g in self.groups)
            gone = sum(g.pruned_channels for g in self.groups)
            lines.append(
                f"channels removed: {gone} of {ch} output channels ({gone / max(1, ch):.2%}); "
                f"coupled units removed: {self.sparsity:.2%}; zeros over the pruned layers' weights: "
                f"{self.weight_sparsity:.2%}"
            )
        else:
            lines.append(f"sparsity over pruned layers: {self.sparsity:.2%}")
        if self.coverage is not None:
            lines.append(self.coverage.describe())
        elif self.skipped:
            lines.append(f"left dense: {', '.join(self.skipped)}")
        return "\n".join(lines)


@dataclass
class HybridResult:
    """What :func:`prune_hybrid` returns: the compacted, masked model and both steps' reports."""

    model: nn.Module
    channels: PruneResult
    weights: PruneResult


def config_of(params: dict[str, Any]) -> dict[str, Any]:
    """A pruner's arguments as :attr:`PruneResult.config` records them (objects as their repr)."""
    return {k: repr(v) if not isinstance(v, (int, float, str, type(None))) else v for k, v in params.items()}


def layer_report(t: Target, gran: Granularity) -> LayerReport:
    """What the masks just applied did to ``t``."""
    # apply_masks zeroed `original` where masked, so it equals the effective weight here
    # and counting on it avoids materializing original * mask once more.
    w = t.original.detach()
    zeros = w.numel() - int(torch.count_nonzero(w))
    if isinstance(gran, NM) or not gran.structured:
        units, pruned = w.numel(), zeros
    else:
        per = rows_per_output(t.module, w)
        units, pruned = per.shape[0], int((per == 0).all(1).sum())
    return LayerReport(t.name, tuple(w.shape), units, pruned, zeros / max(1, w.numel()))
