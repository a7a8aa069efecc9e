"""Widths a channel group may keep: the steps a latency allocation walks, the last-resort
widths below them, and rounding any allocation's kept units to a multiple."""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..validate import integer
from .base import Layer

__all__ = ["group_steps", "keeps_of", "last_resort", "round_keeps", "width_steps"]


def width_steps(n: int, alive: int, floor: int, multiple: int) -> list[int]:
    """Kept counts a group may take, largest first: everything alive, then the multiples of
    ``multiple`` from below it down to ``floor`` (rounded up to a multiple)."""
    lo = max(multiple, math.ceil(max(floor, 1) / multiple) * multiple) if floor > 0 else multiple
    out = [alive] + [k for k in range((alive - 1) // multiple * multiple, lo - 1, -multiple) if 0 < k < alive]
    return out


def last_resort(steps: list[int], hard: int, multiple: int, strict: bool) -> list[int]:
    """``steps`` continued below its smallest width, for a target the usual widths cannot
    reach: the multiples of ``multiple`` down to ``hard`` (the units that must stay), then,
    unless ``strict`` (a ``round_to`` the user chose), halves of the multiple down to it."""
    out = list(steps)
    hard = max(1, hard)
    k = (out[-1] - 1) // multiple * multiple
    while k >= max(multiple, hard):
        out.append(k)
        k -= multiple
    if not strict:
        k = multiple // 2
        while k >= hard:
            if k < out[-1]:
                out.append(k)
            k //= 2
        if hard < out[-1]:
            out.append(hard)
    return out


def group_steps(layers: list[Layer], min_keep: int, multiple: Callable[[int], int], strict: bool,
                soft_cap: float | None, removable: list[bool] | None,
                rank: list[int] | None) -> tuple[list[list[int]], list[list[int]]]:
    """The widths each group may take: ``(steps, wide)``, the usual ones (down to the
    per-group cap ``soft_cap`` and the group's ``multiple(n)``) and the last-resort ones
    below them (down to ``min_keep``; a removable group, a residual branch, down to 0).

    ``rank[g]``: the units group ``g`` must keep in either case, because it feeds a head of
    the model with that many outputs (a classifier): below it, the head's outputs lose rank,
    a bottleneck no other width makes up for (a 10-class head fed by 4 channels). Dead
    units (score ``-inf``) never count; protected ones (``+inf``) always stay.

    Example:
        >>> l = Layer("a", torch.arange(32.0), 1, (32, 1))
        >>> steps, wide = group_steps([l], 1, lambda n: 8, False, 0.9, None, [10])
        >>> steps[0], wide[0]
        ([32, 24, 16], [32, 24, 16, 10])
    """
    removable = removable or [False] * len(layers)
    rank = rank or [0] * len(layers)
    steps, wide = [], []
    for l, r, rem in zip(layers, rank, removable):
        dead = int(torch.count_nonzero(l.scores == float("-inf")))
        prot = int(torch.count_nonzero(l.scores == float("inf")))
        alive = l.n_units - dead
        hard = max(prot, min(min_keep, alive), min(r, alive))
        soft = hard if soft_cap is None else max(hard, min(alive, math.ceil((1 - soft_cap) * l.n_units - 1e-9)))
        m = multiple(l.n_units)
        s = width_steps(l.n_units, alive, soft, m)
        w = last_resort(s, hard, m, strict)
        if rem and not prot and min_keep <= 1 and not r:
            w = w + [0]  # a whole residual branch can go, as a last resort
        steps.append(s)
        wide.append(w)
    return steps, wide


def keeps_of(layers: list[Layer], orders: list[list[int]], kept: list[int]) -> dict[str, torch.Tensor]:
    """``{layer: kept mask}`` keeping the last ``kept[i]`` units of ``orders[i]`` (scores
    ascending) alive in each layer."""
    out = {}
    for l, order, k in zip(layers, orders, kept):
        keep = torch.zeros(l.n_units, dtype=torch.bool)
        keep[order[l.n_units - k:]] = True
        keep &= l.scores > float("-inf")
        out[l.name] = keep
    return out


def round_keeps(layers: list[Layer], keeps: dict[str, torch.Tensor], multiple: int,
                min_keep: int = 1) -> dict[str, torch.Tensor]:
    """Round each layer's kept units to the nearest multiple of ``multiple`` (ties up; a
    layer kept whole stays whole; at least ``multiple`` units, or all that are alive), keeping
    the best-scoring units.

    Example:
        >>> l = Layer("a", torch.arange(10.0), 1, (10, 1))
        >>> int(round_keeps([l], {"a": torch.arange(10) >= 3}, 4)["a"].sum())
        8
    """
    integer("round_to", multiple, minimum=1)
    if multiple == 1:
        return keeps
    out = {}
    for l in layers:
        keep = keeps[l.name]
        alive = int(torch.count_nonzero(l.scores > float("-inf")))
        k = int(torch.count_nonzero(keep))
        if k >= alive:
            out[l.name] = keep
            continue
        r = max(multiple, int(math.floor(k / multiple + 0.5)) * multiple, math.ceil(min(min_keep, alive) / multiple) * multiple)
        r = min(r, alive)
        protected = int(torch.count_nonzero(l.scores == float("inf")))
        r = max(r, min(alive, math.ceil(protected / multiple) * multiple))
        order = torch.sort(l.scores, stable=True, descending=True).indices[:r]
        new = torch.zeros_like(keep)
        new[order] = True
        out[l.name] = new & (l.scores > float("-inf"))
    return out
