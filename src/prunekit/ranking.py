"""The k lowest entries of each row, ties at the cut to the earlier position.

One leaf helper shared by the criteria (SparseGPT's block masks) and the allocations
(per-row pruning): ``kthvalue`` finds the cut in about half the time of a stable sort or
``topk``, and the tie rule is what a stable sort gives.
"""

from __future__ import annotations

import torch


def lowest_in_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` smallest entries of every row of the 2-D ``scores``.

    Ties at the cut go to the earlier columns. ``k <= 0`` selects nothing, ``k`` at or above
    the row length selects everything.
    """
    if scores.dim() != 2:
        raise ValueError(f"lowest_in_rows takes a 2-D tensor, got shape {tuple(scores.shape)}")
    cols = scores.shape[1]
    if k <= 0 or cols == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= cols:
        return torch.ones_like(scores, dtype=torch.bool)
    cut = scores.kthvalue(k, dim=1, keepdim=True).values
    below = scores < cut
    tie = scores == cut
    return below | (tie & (tie.cumsum(1) <= k - below.sum(1, keepdim=True)))
