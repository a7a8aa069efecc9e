"""The masks of pruning targets as the pruner reads and hands them on: the mask already on a
target (:func:`current_mask`), the fraction of the targets' weights earlier masks zeroed
(:func:`prior_sparsity`), and one mask for every name of a tied weight (:func:`with_aliases`).
"""

from __future__ import annotations

import torch

from .masking import get_masks_of
from .targets import Target

__all__ = ["current_mask", "prior_sparsity", "with_aliases"]


def with_aliases(targets: list[Target], out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tied weights (one tensor, several names) get the one mask computed for the tensor."""
    for t in targets:
        for alias in t.aliases:
            out[alias] = out[t.name]
    return out


def prior_sparsity(targets: list[Target]) -> float:
    """Fraction of the targets' weights already zeroed by prunekit masks (0 without masks)."""
    zeros = total = 0
    for t in targets:
        mask = current_mask(t)
        total += t.numel
        if mask is not None:
            zeros += int(mask.numel() - torch.count_nonzero(mask))
    return zeros / total if total else 0.0


def current_mask(t: Target) -> torch.Tensor | None:
    """The prunekit mask already on ``t``'s weight, or None."""
    return get_masks_of(t.module, t.param)
