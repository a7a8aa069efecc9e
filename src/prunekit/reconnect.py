"""Reconnection: re-spend kept weights that sit on no input-to-output path.

At extreme unstructured sparsity a layer-by-layer selection leaves weights that cannot
carry any signal: weights *into* a unit none of whose outgoing weights was kept, and
weights *out of* a unit none of whose incoming weights was kept (it outputs only its
bias, a constant). They count as kept but do nothing; Vysogorets & Kempe (2021, "effective
sparsity") show they are a large share of the budget at 99 % for calibrated criteria.
On LeNet-300-100 at 99 % with SparseGPT scores, 44 % of the first layer's kept weights are
such dead weights.

:func:`reconnect` removes them and spends the same number, layer by layer, on the
best-scoring weights between *live* units (units with a kept incoming and a kept outgoing
weight), then repeats until no dead weight is left (removing one may disconnect another).
Every layer keeps exactly the count the allocation gave it, so the reported sparsity
stays true. Which units connect comes from the traced dependency graph
(:func:`prunekit.graph.build`): a unit is one class of coupled channels, so residual
partners and BatchNorm/bias entries are handled as for channel pruning.

A weight tensor takes part when the graph names both its output dimension (``"out"``
member, dim 0) and its input dimension (``"in"`` member, dim 1) with one channel id per
index; other weights (grouped or depthwise convolutions, attention projections the graph
treats as opaque) are left as selected and their units count as live.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from .errors import PruneError
from .masking import get_masks_of

if TYPE_CHECKING:  # graph/ imports the criteria, which reach pruner -> reconnect: import graph on use
    from .criteria.base import Context
    from .graph import Member, Structure


def _per_index(t: torch.Tensor, dim: int) -> torch.Tensor:
    """True for every index along ``dim`` that holds at least one kept entry."""
    return t.movedim(dim, 0).reshape(t.shape[dim], -1).any(1)


def _layout(st: Structure, masks: Mapping[str, torch.Tensor]) -> dict[str, tuple[Member, Member]]:
    """``{param: (out member, in member)}`` for masked 2-D-or-more weights the graph indexes fully."""
    outs: dict[str, Member] = {}
    ins: dict[str, Member] = {}
    for m in st.graph.members:
        if m.param not in masks:
            continue
        shape = masks[m.param].shape
        if m.role == "out" and m.dim == 0 and m.ids.numel() == shape[0]:
            outs[m.param] = m
        elif m.role == "in" and m.dim == 1 and len(shape) > 1 and m.ids.numel() == shape[1]:
            ins[m.param] = m
    return {p: (outs[p], ins[p]) for p in outs if p in ins}


def _live_units(st: Structure, keep: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fed, used)`` over channel-class roots: a unit is *fed* when some producing row
    keeps an entry (or nothing in ``keep`` produces it) and *used* when some consuming
    column keeps an entry (or nothing in ``keep`` consumes it)."""
    from .graph.channels import FIXED

    n = st.roots.numel()
    has_out = torch.zeros(n, dtype=torch.bool)
    has_in = torch.zeros(n, dtype=torch.bool)
    fed = torch.zeros(n, dtype=torch.bool)
    used = torch.zeros(n, dtype=torch.bool)
    for m in st.graph.members:
        if m.role not in ("out", "in"):
            continue
        roots = st.roots[m.ids]
        ok = roots != FIXED
        roots = roots[ok]
        if m.param in keep:
            alive = _per_index(keep[m.param], m.dim)[ok]
        else:
            alive = torch.ones(roots.numel(), dtype=torch.bool)
        if m.role == "out":
            has_out[roots] = True
            fed[roots[alive]] = True
        else:
            has_in[roots] = True
            used[roots[alive]] = True
    return fed | ~has_out, used | ~has_in


def _connections(st: Structure, k: torch.Tensor, out_m: Member, in_m: Member, fed: torch.Tensor,
                 used: torch.Tensor) -> torch.Tensor:
    """Entries of a weight whose output unit is used and whose input unit is fed."""
    from .graph.channels import FIXED

    r, c = st.roots[out_m.ids], st.roots[in_m.ids]
    rows = used[r] | (r == FIXED)
    cols = fed[c] | (c == FIXED)
    return rows.view([-1] + [1] * (k.dim() - 1)) & cols.view([1, -1] + [1] * (k.dim() - 2))


def _settle(st: Structure, keep: dict[str, torch.Tensor], layout: dict[str, tuple[Member, Member]],
            max_rounds: int) -> tuple[dict[str, int], torch.Tensor, torch.Tensor]:
    """Drop dead kept weights from ``keep`` (in place) until none is left; return
    ``({param: dropped}, fed, used)`` for the settled masks."""
    dropped: dict[str, int] = {}
    for _ in range(max_rounds):
        fed, used = _live_units(st, keep)
        changed = False
        for p, (out_m, in_m) in layout.items():
            ok = _connections(st, keep[p], out_m, in_m, fed, used)
            d = int((keep[p] & ~ok).sum())
            if d:
                keep[p] &= ok
                dropped[p] = dropped.get(p, 0) + d
                changed = True
        if not changed:
            return dropped, fed, used
    fed, used = _live_units(st, keep)
    return dropped, fed, used


def _fill(keep: torch.Tensor, want: int, allowed: torch.Tensor, score: torch.Tensor) -> None:
    """Add up to ``want`` entries of ``allowed`` (not yet kept) to ``keep``, best score first."""
    if want <= 0:
        return
    s = score.detach().to(torch.float32).reshape(-1).clone()
    s[(keep | ~allowed.expand_as(keep)).reshape(-1)] = float("-inf")
    take = min(want, int(torch.isfinite(s).sum()))
    if take:
        # Stable descending order: ties go to the lower flat index, as in selection.
        keep.view(-1)[torch.sort(s, descending=True, stable=True).indices[:take]] = True


def reconnect(
    st: Structure,
    masks: Mapping[str, torch.Tensor],
    scores: Mapping[str, torch.Tensor],
    *,
    max_rounds: int = 100,
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Masks with dead kept weights moved onto live connections, layer by layer.

    Drops every dead weight (repeatedly: dropping one can disconnect another), then spends
    each layer's loss on its best-scoring connections between a used unit and a fed unit
    (adding those disconnects nothing). A layer with fewer live connections than it lost
    takes back its best-scoring dropped weights for the rest, so every layer ends with
    exactly the count it started with; :func:`dead_weights` then still finds those.

    Args:
        st: the model's dependency structure (:func:`prunekit.graph.build`).
        masks: ``{param: keep-mask}`` (bool or 0/1), weight-shaped.
        scores: ``{param: element scores}``, weight-shaped; higher is kept first.
        max_rounds: bound on the drop passes (removing the weights of one dead unit can
            only empty the units next to it: a chain of L layers settles in about L).

    Returns:
        ``(masks, moved)``: new boolean masks (the same keys; weights the graph does not
        index come back unchanged) and ``{param: kept weights that changed place}``.
    """
    keep = {k: v.detach().to(torch.bool).clone() for k, v in masks.items()}
    layout = _layout(st, keep)
    first = {p: keep[p].clone() for p in layout}
    _, fed, used = _settle(st, keep, layout, max_rounds)
    for p, (out_m, in_m) in layout.items():
        k = keep[p]
        _fill(k, int(first[p].sum()) - int(k.sum()), _connections(st, k, out_m, in_m, fed, used), scores[p])
        _fill(k, int(first[p].sum()) - int(k.sum()), first[p], scores[p])
    moved = {p: int((keep[p] & ~first[p]).sum()) for p in layout}
    return {k: keep[k] for k in masks}, {p: n for p, n in moved.items() if n}


def dead_weights(st: Structure, masks: Mapping[str, torch.Tensor], *, max_rounds: int = 100) -> dict[str, int]:
    """``{param: kept weights on no input-to-output path}`` (params with some only)."""
    keep = {k: v.detach().to(torch.bool).clone() for k, v in masks.items()}
    dropped, _, _ = _settle(st, keep, _layout(st, keep), max_rounds)
    return dropped


def reconnect_targets(ctx: Context, masks: dict[str, torch.Tensor], scores: Mapping[str, torch.Tensor],
                      example_inputs: Any, before: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """:func:`reconnect` for a pruning call: trace ``ctx.model`` on ``example_inputs`` (or
    the first calibration batch), move dead weights of ``ctx.targets``, and give every
    re-added weight its value from ``before`` (the weights before a weight-updating
    criterion rewrote them; ``None``: the weights were not rewritten).

    Raises:
        PruneError: nothing to trace the model with, or the trace fails.
    """
    probe = example_inputs
    if probe is None and ctx.data is not None:
        probe = next(iter(ctx.forward_inputs()), None)
    if probe is None:
        raise PruneError(
            "reconnect=True traces the model to see which units connect: pass example_inputs= or data="
        )
    from .graph import build

    st = build(ctx.model, probe)
    names = [t.name for t in ctx.targets if t.name in masks]
    # weights earlier masks removed are not free to take back: a tighter mask would drop them again
    prior = {t.name: get_masks_of(t.module, t.param) for t in ctx.targets if t.name in masks}
    usable = {n: scores[n] if prior[n] is None else scores[n].masked_fill(prior[n].to(scores[n].device) == 0,
                                                                          float("-inf")) for n in names}
    new, moved = reconnect(st, {n: masks[n] for n in names}, usable)
    out = dict(masks)
    for t in ctx.targets:
        if t.name not in moved:
            continue
        out[t.name] = new[t.name].to(masks[t.name].dtype)
        if before is not None:
            added = new[t.name] & ~masks[t.name].to(torch.bool)
            with torch.no_grad():
                t.original[added] = before[t.name][added].to(t.original.dtype)
    return out
