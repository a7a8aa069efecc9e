"""Mask refinement without training: DSnoT (Zhang et al., ICLR 2024, "Dynamic Sparse No
Training").

A pruned linear layer's output on the calibration data differs from the dense layer's by
``Σ_j W_ij (1 - M_ij) X_j`` in output row ``i``. DSnoT looks at the *expected* difference,
``e_i = Σ_{j pruned} W_ij μ_j`` (``μ_j`` the mean of input feature ``j``), and swaps weights
row by row, without changing any weight's value or the row's count, while ``|e_i|`` is above a
threshold:

- **grow** the pruned weight that moves ``e_i`` most towards zero: for ``e_i > 0`` the one
  with the largest ``W_ij μ_j / var_j`` (its contribution scaled down where the input varies
  much, so the mean says little), for ``e_i < 0`` the smallest;
- **prune** in exchange the kept weight of least Wanda importance ``|W_ij|·‖X_j‖₂`` among
  those whose contribution has the sign that also moves ``e_i`` towards zero (for N:M
  patterns: the least important kept weight of the grown weight's block of M, so the pattern
  holds).

Every step is vectorized over the rows; a row stops at its first step that would not apply
(error below the threshold, no candidate left, or a swap that would flip the error's sign),
and after ``cycles`` steps. The weights are never changed; only which of them are kept.
SparseGPT's masks are not refined: its sweep has already changed the kept weights.

:func:`dsnot` works on one matrix; :func:`refine_targets` runs it on every Linear and Conv
weight of a model from its calibration data (``pk.prune(..., refine="dsnot")``); the LLM
driver runs :func:`dsnot` block by block (``prune_llm(refine="dsnot")``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .criteria.base import Context, call_model
from .criteria.inputs import InputStatistics, supports
from .errors import PruneError

__all__ = ["DSNOT_THRESHOLD", "REFINEMENTS", "dsnot", "refine_targets"]

#: The mask refinements a pruning can ask for (``refine=``).
REFINEMENTS = ("dsnot",)

#: The reference implementation stops a row when ``|e_i|`` falls to 0.1, with ``e_i`` summed
#: over the tokens of a 2,048-token window; per token (our unit) that is 0.1 / 2048.
DSNOT_THRESHOLD = 0.1 / 2048


def _pick(order: torch.Tensor, ptr: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column ``order[i, ptr[i]]`` per row and whether it is a usable candidate."""
    n = order.shape[1]
    inside = ptr < n
    col = order.gather(1, ptr.clamp(max=n - 1).unsqueeze(1)).squeeze(1)
    ok = inside & valid.gather(1, col.unsqueeze(1)).squeeze(1)
    return col, ok


@torch.no_grad()
def dsnot(
    weight: torch.Tensor,
    keep: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    norms: torch.Tensor,
    *,
    nm: tuple[int, int] | None = None,
    cycles: int = 50,
    threshold: float = DSNOT_THRESHOLD,
    var_power: float = 1.0,
    monotone: bool = True,
    keep_sign: bool | None = True,
) -> torch.Tensor:
    """Refine a keep-mask by DSnoT's grow-and-prune swaps; return the new boolean mask.

    Args:
        weight: ``[out, in]``, the layer's weights before pruning (values are not changed).
        keep: ``[out, in]`` boolean keep-mask chosen by a criterion (Wanda, magnitude, RIA).
        mean: ``[in]``, each input feature's mean over the calibration tokens.
        var: ``[in]``, each input feature's variance over the calibration tokens.
        norms: ``[in]``, each input feature's L2 norm over the calibration tokens (Wanda's ``‖X_j‖₂``).
        nm: the N:M pattern the mask follows, or ``None`` (unstructured).
        cycles: most swaps per row (50 in the paper).
        threshold: a row stops once its expected output error per token is this small.
        var_power: exponent of the variance that scales the growing score (1 in the paper; 0 = plain).
        monotone: make only swaps that shrink ``|e_i|``; a pair that would not is passed
            over and the row goes on with the next (with ``keep_sign`` such a pair flips
            the sign, so the row stops there). ``False``: swap while ``|e_i|`` is above the
            threshold whatever the swap does, as the reference implementation does.
        keep_sign: a row stops at its first swap that would flip the sign of ``e_i`` (the
            default: it did better than ``monotone`` alone on text unlike the calibration
            text); ``None``: with a pattern only, as the reference implementation does;
            ``False``: never.

    Returns:
        A boolean mask of ``keep``'s shape with the same number of kept weights in every
        row (and in every block of M with a pattern).
    """
    W = weight.float()
    keep = keep.to(torch.bool).clone()
    rows_n, cols = W.shape
    contrib = W * mean.float().reshape(1, -1)  # each weight's expected contribution to its output
    grow_score = contrib / var.float().clamp_min(1e-12).pow(var_power).reshape(1, -1)
    importance = W.abs() * norms.float().reshape(1, -1)
    err = (contrib * (~keep)).sum(1)  # expected dense output minus pruned output, per row
    sign0 = torch.sign(err)
    pruned0 = ~keep
    # Growing candidates (the initially pruned weights), best first for each error sign.
    up = torch.sort(grow_score.masked_fill(keep, float("-inf")), dim=1, descending=True, stable=True).indices
    down = torch.sort(grow_score.masked_fill(keep, float("inf")), dim=1, stable=True).indices
    ptr_up = torch.zeros(rows_n, dtype=torch.long, device=W.device)
    ptr_down = torch.zeros_like(ptr_up)
    if nm is None:
        # Pruning candidates (the initially kept weights), least important first, by the sign
        # of their contribution: removing a weight adds its contribution to the error.
        neg = torch.sort(importance.masked_fill(~(keep & (contrib < 0)), float("inf")), dim=1, stable=True).indices
        pos = torch.sort(importance.masked_fill(~(keep & (contrib > 0)), float("inf")), dim=1, stable=True).indices
        ptr_neg = torch.zeros_like(ptr_up)
        ptr_pos = torch.zeros_like(ptr_up)
        can_prune_neg, can_prune_pos = keep & (contrib < 0), keep & (contrib > 0)
    else:
        m = nm[1]
        rank = importance.clone()
        rank[pruned0] = float("inf")  # only weights kept at the start may be pruned in exchange
    active = torch.ones(rows_n, dtype=torch.bool, device=W.device)
    arange = torch.arange(rows_n, device=W.device)
    for _ in range(int(cycles)):
        active &= err.abs() > threshold
        if not bool(active.any()):
            break
        positive = err > 0
        g_up, ok_up = _pick(up, ptr_up, pruned0 & (grow_score > 0))
        g_down, ok_down = _pick(down, ptr_down, pruned0 & (grow_score < 0))
        grow = torch.where(positive, g_up, g_down)
        ok = torch.where(positive, ok_up, ok_down)
        if nm is None:
            p_neg, okn = _pick(neg, ptr_neg, can_prune_neg)
            p_pos, okp = _pick(pos, ptr_pos, can_prune_pos)
            prune = torch.where(positive, p_neg, p_pos)
            ok &= torch.where(positive, okn, okp)
        else:
            start = grow - grow % m
            block = start.unsqueeze(1) + torch.arange(m, device=W.device).unsqueeze(0)
            prune = block.gather(1, rank.gather(1, block).argmin(1, keepdim=True)).squeeze(1)
            ok &= torch.isfinite(rank[arange, prune])
        after = err + contrib[arange, prune] - contrib[arange, grow]
        if (nm is not None) if keep_sign is None else keep_sign:
            ok &= torch.sign(after) == sign0
        useful = after.abs() < err.abs() if monotone else torch.ones_like(ok)
        ptr_up += positive.long()
        ptr_down += (~positive).long()
        if nm is None:
            ptr_neg += positive.long()
            ptr_pos += (~positive).long()
        swap = active & ok & useful
        r = arange[swap]
        keep[r, grow[swap]] = True
        keep[r, prune[swap]] = False
        if nm is not None:
            rank[r, prune[swap]] = float("inf")
        err = torch.where(swap, after, err)
        active &= ok
    return keep


@torch.no_grad()
def refine_targets(ctx: Context, masks: Mapping[str, torch.Tensor], nm: tuple[int, int] | None,
                   cycles: int = 50) -> dict[str, torch.Tensor]:
    """:func:`dsnot` on the mask of every target of ``ctx`` (Linear and Conv weights; a
    grouped convolution per group), from statistics of its input columns gathered on
    ``ctx``'s data with the weights as they are (dense or earlier-pruned). Returns new masks
    in the dtypes of ``masks``; other entries (biases) are passed through."""
    bad = [f"{t.name} ({type(t.module).__name__})" for t in ctx.targets if not supports(t.module) or t.param != "weight"]
    if bad:
        raise PruneError(f"refine='dsnot' reads the inputs of Linear and Conv1d/2d/3d weights; cannot refine "
                         f"{', '.join(bad)}: leave them out with ignore=[...] or use refine=None")
    stats = InputStatistics(ctx.targets)
    with stats:
        for inputs in ctx.forward_inputs():
            call_model(ctx.model, inputs)
    stats.check_seen("refine='dsnot'")
    out = dict(masks)
    for t in ctx.targets:
        mask = masks[t.name]
        W = t.weight.detach().reshape(t.weight.shape[0], -1)
        keep = mask.reshape(W.shape).to(torch.bool)
        mean, var = stats.moments(t.name)
        norms = stats.squares[t.name].sqrt().to(torch.float32)
        per = W.shape[0] // mean.shape[0]
        parts = [dsnot(W[g * per:(g + 1) * per], keep[g * per:(g + 1) * per], mean[g], var[g], norms[g], nm=nm,
                       cycles=cycles) for g in range(mean.shape[0])]
        out[t.name] = torch.cat(parts).reshape(mask.shape).to(mask.dtype)
    return out


def check_refine(refine: Any, criterion: Any, granularity: str) -> str | None:
    """``refine`` checked against what it applies to: ``None`` or a name of :data:`REFINEMENTS`,
    for unstructured and N:M masks of a criterion that does not update weights."""
    if refine is None:
        return None
    if not isinstance(refine, str) or refine not in REFINEMENTS:
        raise PruneError(f"refine must be None or one of {', '.join(map(repr, REFINEMENTS))}; got {refine!r}")
    if getattr(criterion, "updates_weights", False):
        raise PruneError(f"refine={refine!r} swaps weights of an unchanged matrix; criterion "
                         f"{criterion.name!r} updates the weights it keeps: use wanda, ria, rgs or magnitude, or refine=None")
    if granularity not in ("unstructured", "nm"):
        raise PruneError(f"refine={refine!r} swaps single weights and needs granularity 'unstructured' or an N:M "
                         f"pattern; not {granularity!r}")
    return refine
