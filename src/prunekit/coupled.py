"""Coupled channel pruning: the path :meth:`prunekit.Pruner.fit` takes with ``granularity="channel"``
(or ``"head"``) and inputs to trace.

:func:`fit_coupled` traces the model's dependency groups (:mod:`prunekit.graph`), scores
each coupled unit over every parameter it spans, allocates over the groups and masks whole
groups, so that :func:`prunekit.compact` can remove them physically. The per-layer path
(every other granularity) stays in :mod:`prunekit.pruner`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import masking as _masks
from .allocation import Layer, cap_layers
from .allocation.widths import round_keeps
from .coverage import Skipped
from .criteria.base import Context, check_requirements, preserved
from .errors import PruneError
from .granularity import Head
from .results import GroupReport, PruneResult, config_of, layer_report
from .scope import ROWS_REASON, coverage_of
from .targets import find_targets, foreign_weights

if TYPE_CHECKING:
    from .pruner import Pruner

__all__ = ["DEFAULT_CHANNEL_CAP", "fit_coupled"]

#: With coupled channel pruning and a non-uniform allocation, no layer loses more than this
#: fraction of its channels unless ``max_sparsity`` says otherwise (or a latency target
#: cannot be met without it: ``LatencyAllocation.relaxes_cap``).
DEFAULT_CHANNEL_CAP = 0.9


def fit_coupled(pruner: Pruner, model: nn.Module, targets, crit, gran, alloc, sp, th, data, loss_fn, example_inputs: Any,
                probe: Any, skipped: list[Skipped]) -> Pruner:
    """Channel pruning over traced dependency groups (see :mod:`prunekit.graph`).

    Called by :meth:`Pruner.fit <prunekit.Pruner.fit>` once its checks passed, with the
    resolved settings; sets the pruner's fitted attributes (``structure_`` too) and returns it.
    """
    from .graph.groups import build, unit_scores

    st = build(model, probe)
    all_names = {t.name for t in find_targets(model)}
    ignored = all_names - {t.name for t in targets}
    # A group touching a weight under weight_norm/spectral_norm cannot be masked exactly.
    foreign = set(foreign_weights(model))
    groups = [
        (i, g) for i, g in enumerate(st.groups)
        if not any(m.param in ignored for m in g.members if m.role in ("out", "chan"))
        and not any(m.param in foreign for m in g.members)
    ]
    if isinstance(gran, Head):
        head_roots = {
            int(st.roots[i]) for (kind, _), ids in st.graph.extra.items() if kind == "heads" for i in ids.reshape(-1).tolist()
        }
        groups = [(i, g) for i, g in groups if set(g.units) & head_roots]
        if not groups:
            raise PruneError(
                f"granularity='head' found no attention heads in {type(model).__name__}: heads are traced through "
                "q @ k.transpose(-2, -1) ... @ v, F.scaled_dot_product_attention and nn.MultiheadAttention "
                "called with need_weights=False"
                + "".join(f"; {n.where}: {n.reason}" for n in st.notes if "head" in n.reason)[:600]
                + "; use granularity='channel' for other layers"
            )
    if not groups:
        reasons = "; ".join(f"{n.where}: {n.op}: {n.reason}" for n in st.notes[:5]) or "no coupled channels found"
        if foreign:
            reasons += f"; the groups of {sorted(foreign)} are left out: their weights carry another parametrization"
        raise PruneError(f"{type(model).__name__} has no channel group that can be pruned ({reasons})")
    roles = {"out", "chan"} if crit.level == "channel" else {"out", "chan", "in"}
    used = {m.param for _, g in groups for m in g.members if m.role in roles}
    in_groups = {m.param for _, g in groups for m in g.members}
    skipped = skipped + [
        Skipped(t.name, t.numel, f"{type(t.module).__name__} weight: {ROWS_REASON}"
                if not t.units and t.name not in in_groups and not isinstance(t.module, (nn.RNNBase, nn.Embedding)) else
                "in no prunable channel group (see pk.inspect for why its channels stay)",
                t.name in in_groups)  # only scored by channel criteria, its units still go with the group
        for t in targets if t.name not in used
    ]
    # Raw parameters the tracer coupled (``x @ self.w``) lose their slices with the group.
    skipped = [
        Skipped(k.name, k.numel, "a parameter outside any layer type: its rows/columns follow the coupled "
                "channels, it is not scored", True) if k.name in in_groups and not k.by_choice else k
        for k in skipped
    ]
    targets = [t for t in targets if t.name in used]
    for t in targets:
        gran.check(t, crit)
    ctx = Context(model, targets, data, loss_fn, example_inputs, pruner.max_batches, pruner.seed)
    check_requirements(crit, ctx)
    with preserved(model):
        scores = crit.scores(ctx)
    for name, s in scores.items():
        if torch.isnan(s).any():
            raise PruneError(f"criterion {crit.name!r} produced NaN scores for {name}")
    sub = type(st)(st.graph, st.roots, [g for _, g in groups], {})
    for gi, (_, g) in enumerate(groups):
        for ui, r in enumerate(g.units):
            sub.unit_of[r] = (gi, ui)
    per_group = unit_scores(sub, crit, scores, pruner.group_reduce)
    current = _masks.effective_weights(model)
    dead = sub.removed_units(current)
    layers = []
    for g, u in zip(sub.groups, per_group):
        if dead:
            u = u.masked_fill(torch.tensor([r in dead for r in g.units]), float("-inf"))
        layers.append(Layer(g.name, u, 1, (len(g.units), 1)))
    cap = pruner.max_sparsity
    soft_cap = None
    if cap is None and alloc.name != "uniform":
        cap = max(DEFAULT_CHANNEL_CAP, (1.0 + (sp or 0.0)) / 2)  # never collapse a layer to a sliver
        if getattr(alloc, "relaxes_cap", False):  # a latency target may need more: the allocation decides
            soft_cap, cap = cap, None
    layers = cap_layers(layers, cap)
    from .latency import prepare_allocation  # latency tables and round_to="auto" (measured here, on demand)

    multiple = prepare_allocation(alloc, model, sub, probe, getattr(pruner, "round_to", None), layers,
                                  soft_cap=soft_cap)
    keeps = alloc.select(layers, sp, pruner.min_keep) if th is None else alloc.select_threshold(layers, th, pruner.min_keep)
    if multiple and multiple > 1:
        keeps = round_keeps(layers, keeps, multiple, pruner.min_keep)
    removed = {r for g in sub.groups for r, k in zip(g.units, keeps[g.name].tolist()) if not k}
    kept_scores = scores if pruner.keep_scores else None
    del scores
    shapes = {n: tuple(v.shape) for n, v in current.items()}
    new_masks = sub.masks_for(removed, shapes)
    if new_masks:
        _masks.apply_masks(model, new_masks)
    pruner.targets_ = [t.name for t in targets]
    pruner.masks_ = _masks.get_masks(model)
    pruner.scores_ = kept_scores
    pruner.structure_ = sub
    layers_r = [layer_report(t, gran) for t in targets]
    total = sum(len(g.units) for g in sub.groups)
    gone = sum(1 for g in sub.groups for r in g.units if r in removed)
    if th is None and sp and alloc.whole_model and gone / max(1, total) + 0.05 < sp:
        warnings.warn(
            f"asked for {sp:.0%} of the channels, removed {gone} of {total} coupled units "
            f"({gone / max(1, total):.0%}) in {len(sub.groups)} group(s): min_keep={pruner.min_keep}, the per-group "
            "cap and the coupling (grouped convs, shuffles, residuals) keep the rest; pk.inspect(model, x) shows them",
            stacklevel=2,
        )
    pruner.report_ = PruneResult(
        model=model,
        masks=pruner.masks_,
        sparsity=gone / max(1, total),
        layers=layers_r,
        skipped=[k.name for k in skipped],
        scores=pruner.scores_,
        config=config_of(pruner.get_params()),
        coverage=coverage_of(model, targets, skipped),
        groups=[
            GroupReport(g.name, len(g.units), sum(1 for r in g.units if r in removed), g.params,
                        *sub.channel_counts(g, removed))
            for g in sub.groups
        ],
    )
    return pruner
