"""The SparseGPT sweep (Frantar & Alistarh, 2023): one weight matrix pruned column block by
column block with the optimal-brain-surgeon update, each removed weight's contribution moved
onto the weights kept (:func:`sparsegpt_sweep`); the criterion around it is
:class:`prunekit.criteria.SparseGPT`."""

from __future__ import annotations

import math

import torch

from ..errors import PruneError
from ..ranking import lowest_in_rows

__all__ = ["damped_inverse_factor", "sparsegpt_sweep"]


def damped_inverse_factor(hessian: torch.Tensor, percdamp: float, shrink: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's upper Cholesky factor of the damped inverse Hessian, and the dead columns."""
    H = hessian.detach().to(torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    if shrink:
        diag = torch.diag(H).clone()
        H.mul_(1.0 - shrink)
        H.diagonal().copy_(diag)
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    try:
        # The upper factor U of H^-1 (U^T U = H^-1) without forming H^-1: with J the reversal,
        # J H J = K K^T gives H = R R^T for R = J K J upper, so U = R^-1 = J K^-1 J. Half the
        # work of the reference's cholesky(cholesky_inverse(cholesky(H)), upper=True); the same U.
        K = torch.linalg.cholesky(H.flip(0, 1))
        eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        return torch.linalg.solve_triangular(K, eye, upper=False).flip(0, 1), dead
    except RuntimeError as e:  # torch.linalg.LinAlgError derives from RuntimeError
        raise PruneError(
            f"the input Hessian is not positive definite with percdamp={percdamp!r}; "
            "use more calibration data or a larger percdamp (e.g. 0.1)"
        ) from e


def _lowest(x: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` smallest entries of ``x`` (ties at the cut: the first in
    memory order)."""
    return lowest_in_rows(x.reshape(1, -1), k).reshape(x.shape)


def _floor(n: float) -> int:
    return int(math.floor(n + 1e-9))


def sparsegpt_sweep(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    shrink: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one weight matrix with the SparseGPT sweep.

    Args:
        weight: ``[rows, cols]`` weights (not modified).
        hessian: ``[cols, cols]`` ``2 X^T X / n`` of the layer inputs (not modified).
        sparsity: fraction removed (unstructured; ignored when ``nm`` is given). The layer
            loses ``floor(rows * cols * sparsity)`` weights; each block of columns takes its
            share.
        nm: ``(N, M)`` to keep N of every M consecutive input weights.
        blocksize: columns per lazy-update block; the unstructured mask is chosen per block.
        percdamp: dampening added to the diagonal, as a fraction of its mean.
        shrink: Hessian shrinkage towards its diagonal, in ``[0, 1]``: the sweep uses
            ``(1 - shrink) H + shrink diag(H)``. 0 is SparseGPT; 1 drops the correlations
            between inputs, so no weight is updated and the mask is Wanda's score squared,
            chosen per column block.

    Returns:
        ``(new_weight, keep)``: float32 weights with pruned entries exactly zero and
        compensated remaining entries, and the boolean keep-mask.
    """
    W = weight.detach().to(torch.float32).clone()
    rows, cols = W.shape
    # Columns whose input was always zero (dead) cost nothing to prune on this data: their
    # saliency is 0, so they go first, and (decoupled in H) they move no other weight. The
    # reference implementation zeroes them all outside the mask; here only the mask zeroes.
    Hinv, dead = damped_inverse_factor(hessian, percdamp, shrink)
    free = torch.where(dead, 0.0, 1.0).to(W.dtype).reshape(-1, 1)
    pruned = torch.zeros_like(W, dtype=torch.bool)
    # The reference's column loop, with its lazy updates nested once more: a column's error
    # moves the next columns of its run of `inner` at once, and each run's errors move the
    # rest of the block in one product. The same arithmetic, reordered; the per-column
    # updates stay small (fast on a CPU, where each large small op wakes the thread pool).
    inner = 16 if nm is None else nm[1] * max(1, -(-16 // nm[1]))
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        Wt = W[:, i1:i2].t().contiguous()  # column i of the block is row i: contiguous updates
        Errt = torch.empty_like(Wt)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = torch.diag(Hinv1).reshape(-1, 1)
        maskt = torch.zeros_like(Wt, dtype=torch.bool)  # True = pruned
        if nm is None:
            k = _floor(rows * i2 * sparsity) - _floor(rows * i1 * sparsity)
            if k > 0:
                maskt = _lowest(Wt**2 / d1**2 * free[i1:i2], k)
        for j1 in range(0, i2 - i1, inner):
            j2 = min(j1 + inner, i2 - i1)
            for i in range(j1, j2):
                if nm is not None and i % nm[1] == 0:
                    n, m = nm
                    tmp = Wt[i : i + m] ** 2 / d1[i : i + m] ** 2 * free[i1 + i : i1 + i + m]
                    maskt.scatter_(0, i + torch.topk(tmp, m - n, dim=0, largest=False).indices, True)
                err = Wt[i] * maskt[i] / Hinv1[i, i]  # the pruned weights' error; the kept ones' is 0
                Wt[i:j2].addr_(Hinv1[i, i:j2], err, alpha=-1.0)
                Errt[i] = err
            if j2 < i2 - i1:
                Wt[j2:].sub_(Hinv1[j1:j2, j2:].t() @ Errt[j1:j2])
        W[:, i1:i2] = Wt.t()  # a column is final once its own update ran: kept weights moved, pruned ~0
        pruned[:, i1:i2] = maskt.t()
        W[:, i2:] -= Errt.t() @ Hinv[i1:i2, i2:]
    W[pruned] = 0.0
    return W, ~pruned
