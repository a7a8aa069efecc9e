"""The greedy step of ``allocation="latency"`` (:mod:`prunekit.allocation.latency`): from
the widths it starts at, repeatedly narrow the group where accuracy suffers least per
millisecond the cost model says is saved, until the predicted latency meets the aim; then
widen back (:func:`grow_back`) while the prediction stays within it.

The accuracy cost of a width (:func:`width_cost`) is the square of the fraction of a group
removed down to its usual floor, then more for every halving below it; a group's cost is
weighted by the layers it narrows (:func:`group_weights`), plus, when given, a measured
loss (how far the outputs move), plus a small share of the scores removed that breaks ties.
A group removed whole (a residual block) costs more the fewer blocks are left
(:func:`depth_factor`): depth lost compounds, and a model with every block removed keeps
the receptive field of its stem alone.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .base import Layer

__all__ = ["depth_factor", "greedy", "grow_back", "group_weights", "step_cost", "width_cost"]


def group_weights(cost: Any, n_groups: int) -> list[float]:
    """Each group's weight in the accuracy cost: the layers it narrows (a residual stream
    shared by many layers costs more per unit than one layer's channels); 1 each when the
    cost model does not say (``cost.touching``)."""
    touching = getattr(cost, "touching", None)
    if not touching or len(touching) != n_groups:
        return [1.0] * n_groups
    return [float(max(1, len(t))) for t in touching]


def width_cost(k: int, n: int, floor: int) -> float:
    """The accuracy cost of keeping ``k`` of a group's ``n`` units, ``floor`` being its
    smallest usual width: the square of the fraction removed down to the floor, then one
    more such amount for every halving below it (a group at 1 unit, or removed, is a
    bottleneck the rest of the model cannot work around: a quadratic cost called going from
    8 units to 1 almost free, and a classifier kept one hidden unit for 10 classes)."""
    if k >= floor:
        return (1 - k / n) ** 2
    base = (1 - floor / n) ** 2
    halvings = math.log2(floor / k) if k > 0 else math.log2(floor) + 1
    return base + max(base, 0.25) * halvings


def depth_factor(removed: int, removable: int) -> float:
    """The factor on the cost of removing one more of ``removable`` blocks (groups that may
    be removed whole) when ``removed`` are gone already: ``removable / (removable -
    removed)``. The first costs its own width cost, the last of three three times it.

    Removing blocks compounds: with every residual block of the ResNet-style model of
    ``benchmarks/latency_budget.py`` removed (ONNX Runtime, 1/8 of dense), stem and
    classifier kept 11 % after the fine-tune epoch, chance; the FLOP-budgeted model kept one
    block, one channel wide, and 35 %. Each block's own width cost could not tell them apart."""
    return removable / max(1, removable - removed)


def step_cost(g: int, wide: int, narrow: int, n: int, suffix: list[torch.Tensor], weight: list[float],
              usual_floor: list[int], loss_fn: Callable | None, depth: float = 1.0) -> float:
    """The accuracy cost of narrowing group ``g`` (``n`` units) from ``wide`` to ``narrow``
    units: the rise of its weighted :func:`width_cost` (times ``depth`` when the step
    removes the group or brings it back: :func:`depth_factor`), the measured loss when given,
    and the share of the squared scores still kept that the step removes (``suffix[g][i]``:
    the sum over the units from the ``i``-th lowest up), which breaks ties."""
    lo, hi = n - wide, n - narrow  # the units removed before and after: orders[g][:lo], [:hi]
    share = float(suffix[g][lo] - suffix[g][hi]) / (float(suffix[g][lo]) or 1.0)
    cut = weight[g] * (width_cost(narrow, n, usual_floor[g]) - width_cost(wide, n, usual_floor[g]))
    if narrow == 0 or wide == 0:
        cut *= depth
    measured = 0.0 if loss_fn is None else loss_fn(g, wide, narrow)
    return measured + cut + 1e-3 * share


def greedy(layers: list[Layer], orders: list[list[int]], steps: list[list[int]], aim: float, cost: Any,
           usual_floor: list[int], weight: list[float], loss_fn: Callable | None,
           start: list[int] | None = None) -> list[int]:
    """Units kept per group once the predicted latency (``cost.predict(kept)``) meets
    ``aim``, or nothing is left to narrow. ``orders[g]``: group ``g``'s units, lowest score
    first; ``steps[g]``: its allowed widths, widest first; ``start``: the widths to start
    from (default: each group's widest); ``loss_fn(group, kept, new_kept)``: a measured
    accuracy cost of a step (``None``: none)."""
    kept = [s[0] for s in steps] if start is None else list(start)
    pos = [s.index(k) for s, k in zip(steps, kept)]  # index into steps[g]
    # squared scores, sorted ascending as orders[g]: a unit's share of what its group still
    # keeps (LAMP's view) breaks ties between groups
    sq = [l.scores.double().clamp_min(0).nan_to_num(posinf=0.0)[torch.tensor(o, dtype=torch.long)] ** 2
          for l, o in zip(layers, orders)]
    suffix = [torch.cat([s.flip(0).cumsum(0).flip(0), s.new_zeros(1)]) for s in sq]
    pred = cost.predict(kept)
    removable = sum(0 in s for s in steps)
    while pred > aim:
        best, best_ratio, best_save = None, math.inf, 0.0
        depth = depth_factor(sum(k == 0 for k in kept), removable)
        for g in range(len(layers)):
            before = cost.partial(kept, g)
            n = layers[g].n_units
            # the next width that saves time: measured latency is not monotone in the width
            for j in range(pos[g] + 1, len(steps[g])):
                trial = kept.copy()
                trial[g] = steps[g][j]
                save = before - cost.partial(trial, g)
                if save > 0:
                    ratio = step_cost(g, kept[g], steps[g][j], n, suffix, weight, usual_floor, loss_fn, depth) / save
                    if ratio < best_ratio or (ratio == best_ratio and save > best_save):
                        best, best_ratio, best_save = (g, j), ratio, save
                    break
        if best is None:
            break
        g, j = best
        pos[g], kept[g] = j, steps[g][j]
        pred = cost.predict(kept)
    if pred <= aim:
        grow_back(layers, steps, aim, cost, usual_floor, weight, loss_fn, kept, pos, suffix)
    return kept


def grow_back(layers: list[Layer], steps: list[list[int]], aim: float, cost: Any, usual_floor: list[int],
              weight: list[float], loss_fn: Callable | None, kept: list[int], pos: list[int],
              suffix: list[torch.Tensor]) -> None:
    """Widen groups back, in place, while the prediction stays within ``aim``: the last
    narrowing step can save far more than was left to save (a whole residual block removed
    takes a large share of the latency at once), and the time it leaves over is accuracy
    given away. Each step widens one group to its next wider allowed width, the group that
    wins back the most accuracy cost per millisecond first."""
    removable = sum(0 in s for s in steps)
    while True:
        best, best_ratio = None, -math.inf
        depth = depth_factor(sum(k == 0 for k in kept) - 1, removable)  # bringing one back
        for g in range(len(layers)):
            if pos[g] == 0:
                continue
            wider = steps[g][pos[g] - 1]
            trial = kept.copy()
            trial[g] = wider
            pred = cost.predict(trial)
            if pred > aim:
                continue
            gain = step_cost(g, wider, kept[g], layers[g].n_units, suffix, weight, usual_floor, loss_fn, depth)
            ratio = gain / max(cost.partial(trial, g) - cost.partial(kept, g), 1e-12)
            if ratio > best_ratio:
                best, best_ratio = g, ratio
        if best is None:
            return
        pos[best] -= 1
        kept[best] = steps[best][pos[best]]
