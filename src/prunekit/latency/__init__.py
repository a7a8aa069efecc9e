"""Latency as the objective: lookup tables per layer configuration, a cost model of a
model's channel groups, and the measured check of a pruned configuration.

* :mod:`~prunekit.latency.tables`: :class:`LatencyTable` (layers timed alone at a grid of
  widths in one runtime and batch size, interpolated in between) and :class:`LayerSpec`;
* :mod:`~prunekit.latency.cache`: where the tables live on disk and their key (machine,
  runtime, threads, batch size, torch version);
* :mod:`~prunekit.latency.costs`: :class:`CostModel` (predicted ms from kept units);
* :mod:`~prunekit.latency.distortion`: how much each group's pruning moves the outputs;
* :mod:`~prunekit.latency.verify`: :class:`Verifier` (compact a copy, time it next to
  dense) and :func:`auto_round_to`;
* :func:`calibrate`: the cost model fitted to whole-model timings;
* :func:`prepare_allocation`: what the coupled channel path calls before allocating.

The allocation itself is :class:`prunekit.allocation.latency.LatencyAllocation`
(``allocation="latency"``).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, TYPE_CHECKING

import torch
from torch import nn

from .cache import cache_dir, machine_id, table_key
from .costs import CostModel
from .distortion import distortion_curves, interpolate
from .tables import LatencyTable, LayerSpec, spec_of
from .verify import Verifier, auto_round_to, removable_groups

if TYPE_CHECKING:
    from ..graph.groups import Structure

__all__ = ["CostModel", "LatencyTable", "LayerSpec", "Verifier", "auto_round_to", "cache_dir", "calibrate",
           "machine_id", "prepare_allocation", "spec_of", "table_key"]


def calibrate(cost: CostModel, verify: Verifier, passes: int = 2) -> None:
    """Fit the cost model to the whole model as it runs now: the tables read from disk
    rescaled to the machine's speed (:meth:`CostModel.rescale`), then each group alone at
    half its width, timed next to the dense model (the ratio to dense times one dense
    reference: steadier than two separate figures on a busy machine).

    Every group is timed ``passes`` times, one sweep over the groups after the other (a
    burst of other work then falls on one reading of a group, not on all of them), and the
    mean ratio counts. How far a group's readings lie apart, pooled over the groups (the
    median, so that one burst does not set it), gives the timing noise, and the fit
    shrinks the corrections that lie within it (:meth:`CostModel.calibrate`)."""
    if passes < 1:
        raise ValueError(f"calibrate: passes must be at least 1; got {passes}")
    cost.rescale()
    groups = verify.structure.groups
    todo = [g for g, n in enumerate(cost.sizes) if n >= 2]
    readings: dict[int, list[float]] = {g: [] for g in todo}
    dense: list[float] = []
    for _ in range(passes):
        for g in todo:
            keeps = {grp.name: torch.ones(len(grp.units), dtype=torch.bool) for grp in groups}
            keeps[groups[g].name][cost.sizes[g] // 2:] = False
            ms, dms = verify(keeps)
            readings[g].append(ms / dms)
            dense.append(dms)
    if not dense:
        return
    ref = statistics.median(dense)
    noise = 0.0
    spread = [statistics.variance(r) for r in readings.values() if len(r) > 1]
    if spread:
        # the median of a sample variance of k readings is that of a chi-square with k - 1
        # degrees of freedom, over k - 1, times the variance: 0.455 for two readings (exact),
        # Wilson and Hilferty's (1 - 2 / (9 dof))^3 beyond; a mean of k readings has 1/k of it
        dof = passes - 1
        median_share = 0.455 if dof == 1 else (1 - 2 / (9 * dof)) ** 3
        noise = ref * math.sqrt(statistics.median(spread) / median_share / passes)
    ratios = [statistics.fmean(readings[g]) if g in readings else None for g in range(len(cost.sizes))]
    cost.calibrate(ref, [None if r is None else r * ref for r in ratios], noise)


def _loss_from(curves: list[list[tuple[int, float]]]):
    def loss(group: int, kept: int, new: int) -> float:
        c = curves[group]
        return max(0.0, interpolate(c, new) - interpolate(c, kept))

    return loss


def prepare_allocation(alloc: Any, model: nn.Module, structure: Structure, probe: Any,
                       round_to: int | str | None, layers: list | None = None,
                       soft_cap: float | None = None) -> int | None:
    """Bind what ``alloc`` needs from the model before it allocates over ``structure``'s groups.

    A :class:`~prunekit.allocation.latency.LatencyAllocation` with a target gets a
    :class:`CostModel` over measured :class:`LatencyTable` s (or MACs with
    ``objective="flops"``) and a :class:`Verifier`; every other allocation is left as it is.

    Args:
        alloc: the allocation about to select.
        model: the model being pruned (not changed).
        structure: its coupled groups, in the order allocation sees them.
        probe: inputs the model accepts.
        round_to: the pruner's ``round_to`` (``None``: the allocation's own, or none).
        layers: the groups as allocation sees them (their unit scores); with them and
            ``distortion=True``, how much each group's pruning moves the outputs is measured.
        soft_cap: the per-group cap the caller did not apply because the allocation
            ``relaxes_cap`` (it keeps it unless the target needs more).

    Returns:
        The multiple the other allocations' kept units are rounded to (``None``: none).
    """
    if getattr(alloc, "needs_latency", False):  # SensitivityAllocation(budget="latency")
        threads = torch.get_num_threads()
        table = LatencyTable(alloc.runtime, alloc.batch_size, threads, dtype=_dtype(model))
        cost = CostModel(model, structure, probe, table)
        cost.prefetch()
        table.save()
        calibrate(cost, Verifier(model, structure, probe, alloc.runtime, alloc.batch_size, threads))
        full = list(cost.sizes)
        total = cost.predict(full)
        saved = {}
        for gi, grp in enumerate(structure.groups):
            kept = full.copy()
            kept[gi] = 1
            saved[grp.name] = max(0.0, total - cost.predict(kept))
        alloc.bind_latency(saved, total)
    latency = getattr(alloc, "needs_tables", False)
    if not latency:
        if round_to != "auto":
            return round_to
        table = LatencyTable("eager", 64, torch.get_num_threads(), dtype=_dtype(model))
        multiple = auto_round_to(table, CostModel(model, structure, probe, table))
        table.save()
        return multiple
    threads = alloc.threads or torch.get_num_threads()
    wanted = round_to if round_to is not None else alloc.round_to
    loss = None
    if layers is not None and getattr(alloc, "distortion", False):
        loss = _loss_from(distortion_curves(model, structure, probe, [l.scores for l in layers]))
    removable = removable_groups(model, structure, probe) if alloc.blocks else None
    if alloc.objective == "flops":
        cost = CostModel(model, structure, probe, None)
        alloc.bind(cost, None, 1 if wanted == "auto" else wanted, loss, soft_cap, removable, wanted != "auto")
        return None
    table = LatencyTable(alloc.runtime, alloc.batch_size, threads, dtype=_dtype(model))
    cost = CostModel(model, structure, probe, table)
    cost.prefetch()
    multiple = auto_round_to(table, cost) if wanted == "auto" else wanted
    table.save()
    verify = Verifier(model, structure, probe, alloc.runtime, alloc.batch_size, threads, alloc.repeats)
    calibrate(cost, verify)
    alloc.bind(cost, verify, multiple, loss, soft_cap, removable, wanted != "auto")
    return None


def _dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype the model computes in: its layers are timed in it."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
