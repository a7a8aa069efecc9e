"""The measured search of :class:`~prunekit.allocation.latency.LatencyAllocation`: from the
configurations measured so far (``history``: dicts with ``kept``, ``predicted``,
``measured_ms``, ``target_ms``, ``ok``), what to allocate for next."""

from __future__ import annotations

from typing import Any, Callable

from .base import Layer
from .latency_greedy import depth_factor, width_cost

__all__ = ["blend", "confirm", "disagree", "done", "next_aim", "spread", "total_cost", "widen_measured",
           "without_removal"]


def spread(kept: list[int], layers: list[Layer], weights: list[float] | None = None) -> float:
    """How pruned a configuration is, by the greedy's own measure: Σ weight · removed
    fraction², a group's weight being the number of layers it narrows (1 when not given)."""
    weights = weights or [1.0] * len(layers)
    return sum(w * (1 - k / max(1, l.n_units)) ** 2 for k, l, w in zip(kept, layers, weights))


def done(rec: dict[str, Any], tolerance: float) -> bool:
    """Whether a measured configuration ends the search: it met its target and measured at
    least ``target × (1 − 2·min(tolerance, 0.05))`` (close enough that little is left unspent)."""
    return bool(rec["ok"]) and rec["measured_ms"] >= rec["target_ms"] * (1 - 2 * min(tolerance, 0.05))


def total_cost(kept: list[int], sizes: list[int], floors: list[int], weights: list[float],
               removable: int = 0) -> float:
    """The greedy's accuracy cost of a whole configuration: Σ weight · :func:`width_cost`
    (a group removed whole costs one halving more than one unit kept), the groups removed
    whole times the mean :func:`depth_factor` of removing them one after the other, of
    ``removable`` (at least as many as are removed)."""
    gone = sum(k == 0 for k in kept)
    depth = sum(depth_factor(r, max(removable, gone)) for r in range(gone)) / gone if gone else 1.0
    return sum(w * width_cost(k, n, f) * (depth if k == 0 else 1.0) for k, n, f, w in zip(kept, sizes, floors, weights))


def without_removal(history: list[dict[str, Any]], aim: float, allocate: Callable[[float], list[int]],
                    measure: Callable[[list[int]], dict[str, Any]], rank: Callable[[list[int]], float],
                    limit: int, tolerance: float, kept: set[int] | None = None) -> dict[str, Any] | None:
    """The search again, widths only, no group removed (or none of the groups ``kept``):
    ``allocate(aim)`` gives the widths for a predicted latency, ``measure(kept)`` their
    record; the aim is corrected from the measurements (:func:`next_aim`, the measured
    configurations of ``history`` that removed none of those groups as its first points)
    until one meets its target within the search's stop band, at most ``limit``
    measurements. Returns the one of those that met it that ``rank`` puts first (the least
    accuracy cost), or ``None``.

    The cost model prices a removed block far from what it measures (the ResNet-style model
    of ``benchmarks/latency_budget.py`` with all three residual branches removed, in ONNX
    Runtime: 0.52 ms predicted, 2.4 ms measured), so the search can remove blocks where
    narrower widths, everywhere, were as fast: there, uniform widths of 2 and 4 channels
    measured 0.24 of dense and kept 44 % after the fine-tune epoch, the blocks removed 17 %."""
    own = [r for r in history if "measured_ms" in r
           and all(k > 0 for g, k in enumerate(r["kept"]) if kept is None or g in kept)]
    if own:  # from the one measured nearest the target (or between a hit and a miss, once known)
        last = min(own, key=lambda r: abs(r["measured_ms"] / r["target_ms"] - 1))
        aim = next_aim([r for r in own if r is not last] + [last], aim, last["target_ms"], last["measured_ms"])
    tried: list[dict[str, Any]] = []
    for _ in range(limit):
        rec = measure(allocate(aim))
        if any(r is rec for r in own + tried):
            break  # the greedy asked for a configuration measured already
        tried.append(rec)
        if done(rec, tolerance):
            break
        aim = next_aim(own + tried, aim, rec["target_ms"], rec["measured_ms"])
    oks = [r for r in own + tried if r["ok"]]
    return min(oks, key=lambda r: rank(r["kept"])) if oks else None


def _bracket(history: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The slowest-predicted configuration that met the target and the fastest-predicted
    that missed it, or ``None`` before both are known."""
    oks = [r for r in history if r["ok"]]
    misses = [r for r in history if not r["ok"]]
    if not (oks and misses):
        return None
    return max(oks, key=lambda r: r["predicted"]), min(misses, key=lambda r: r["predicted"])


def disagree(history: list[dict[str, Any]]) -> bool:
    """Whether the measurements contradict the predictions' order: a configuration that
    met the target was predicted no faster than one that missed it (or measured slower
    relative to its target). Aiming between their predictions then asks for nothing in
    particular, so the search should go on in the measured widths instead (:func:`blend`)."""
    pair = _bracket(history)
    if pair is None:
        return False
    a, b = pair
    return b["predicted"] <= a["predicted"] or b["measured_ms"] / b["target_ms"] <= a["measured_ms"] / a["target_ms"]


def next_aim(history: list[dict[str, Any]], aim: float, goal: float, measured: float) -> float:
    """The predicted latency to allocate for next.

    Before the measured target is bracketed, the last configuration's prediction is
    scaled by its measured error (its prediction, not the aim: where the greedy could not
    reach the aim it stopped far from it, and scaling the aim asked for the same
    configuration again). Once a configuration that meets the target and one that misses
    it are known, the aim is interpolated between their predictions where the measured
    ratio to the target crosses 1 (regula falsi: the predictions are off by an offset and
    a slope, which a proportional step never corrects), kept inside the bracket."""
    pair = _bracket(history)
    if pair is None:
        anchor = history[-1]["predicted"] if history else aim
        return anchor * goal / max(measured, 1e-9)
    a, b = pair
    pa, pb = a["predicted"], b["predicted"]
    ra, rb = a["measured_ms"] / a["target_ms"], b["measured_ms"] / b["target_ms"]
    if pb <= pa or rb <= ra:
        return (pa + pb) / 2  # the measurements disagree with the predictions' order: bisect
    t = min(0.9, max(0.1, (1 - ra) / (rb - ra)))
    return pa + t * (pb - pa)


def blend(history: list[dict[str, Any]], layers: list[Layer], steps: list[list[int]],
          tolerance: float, weights: list[float] | None = None) -> list[int] | None:
    """Widths between the least pruned measured configuration that met the target and
    the most pruned miss less pruned than it (a bisection's bracket: each new miss
    narrows it, even one that measured slower than a wider miss, as noise and the
    runtime's width-dependent kernels make happen), interpolated where their measured
    ratios to the target say the target lies (kept inside), each snapped to the nearest
    allowed width; ``None`` when that gives nothing new (the bracket is one step wide)."""
    a = min((r for r in history if r["ok"]), key=lambda r: spread(r["kept"], layers, weights))
    sa = spread(a["kept"], layers, weights)
    misses = [r for r in history if not r["ok"]]
    wider = [r for r in misses if spread(r["kept"], layers, weights) < sa]
    b = (max(wider, key=lambda r: spread(r["kept"], layers, weights)) if wider
         else min(misses, key=lambda r: r["measured_ms"] / r["target_ms"]))
    ra, rb = a["measured_ms"] / a["target_ms"], b["measured_ms"] / b["target_ms"]
    # where the measured ratio to the target would reach the middle of what is accepted
    t = 0.5 if rb <= ra else min(0.85, max(0.15, (1 - tolerance / 2 - ra) / (rb - ra)))
    kept = []
    for s, ka, kb in zip(steps, a["kept"], b["kept"]):
        want = ka + t * (kb - ka)
        kept.append(min(s, key=lambda w: (abs(w - want), w)))
    return None if any(r["kept"] == kept for r in history) else kept


def widen_measured(pick: dict[str, Any], steps: list[list[int]], floors: list[int], sizes: list[int],
                   weights: list[float], measure: Callable[[list[int]], dict[str, Any]],
                   limit: int, retime: Callable[[dict[str, Any]], float] | None = None,
                   margin: float = 0.0) -> dict[str, Any]:
    """From ``pick``, a measured configuration that met the target with groups cut below
    their usual floor (``0 < kept < floor``), removed whole, or with time to spare, widen
    the groups still in the model, each widening measured (``measure(kept)`` returns its
    record, with ``measured_ms`` and ``target_ms``), and keep each that measures no slower,
    relative to its target, than the target itself or ``pick`` (whichever is looser): a
    widening spends no more of the tolerance than ``pick`` did, the rest is left for timing
    noise (a pick widened to the tolerance's edge measured 0.4 % over it when timed again).

    A widening whose ratio to its target lands within ``margin`` of that bound is timed
    once more (``retime(record)`` returns the second ratio) and kept only when that one is
    within the bound too. The widening kept last is the one chosen among many timings for
    measuring under the bound, so the noisiest: the MobileNetV2-style model at 1/8 in ONNX
    Runtime ended on a widening measured at 0.99 of its target that the benchmark, timing it
    again, read at 1.11. Widening is optional, so here the slower reading decides (a
    configuration's own record keeps the faster, as everywhere in the search).

    First every group below its usual floor jumps straight to it (one measurement). Then,
    one group at a time (the group whose next width wins back the most accuracy cost
    first), a jump to the allowed width nearest twice its own; when that misses, one
    allowed width; when that misses too, the same step paid for by one narrowing step of
    the group that loses the least accuracy cost by it (a trade, kept only when it gains
    more than it loses); when that misses as well, the group stays where it was. At most
    ``limit`` measurements, besides the second timings. Returns the last record kept.

    Below the usual widths and with blocks removed, the cost model is fitted far from its
    measurements, and the greedy may cut a group for time it does not save: MNISTNet at
    1/8 of its latency in ONNX Runtime picked (1, 24, 1) units, 20.9 % accurate after one
    epoch, where (2, 8, 8), as fast, keeps 63.9 %; the ResNet-style model of
    ``benchmarks/latency_budget.py``, written without its three residual branches, measures
    0.082 of dense in eager PyTorch with one channel per group and 0.120 with (8, 32):
    each convolution left costs about 0.5 ms at any width up to 8 there."""
    bound = max(1.0, pick["measured_ms"] / pick["target_ms"])

    second: dict[tuple[int, ...], float] = {}  # kept -> its second ratio: each configuration timed again once

    def within(rec: dict[str, Any]) -> bool:
        ratio = rec["measured_ms"] / rec["target_ms"]
        if ratio > bound:
            return False
        if retime is None or ratio <= bound * (1 - margin):
            return True
        key = tuple(rec["kept"])
        if key not in second:
            second[key] = retime(rec)
        return second[key] <= bound

    kept, best = list(pick["kept"]), pick
    tries = 0
    done: set[int] = set()
    raised: set[int] = set()
    jump = [f if 0 < k < f and f in s else k for k, f, s in zip(kept, floors, steps)]
    if jump != kept and limit > 0:
        rec, tries = measure(jump), tries + 1
        if within(rec):
            raised.update(g for g, (a, b) in enumerate(zip(kept, jump)) if a != b)
            kept, best = jump, rec
    while tries < limit:
        gains = {}
        for g, (k, f, n, s) in enumerate(zip(kept, floors, sizes, steps)):
            wider = [w for w in s if w > k]
            if g in done or k == 0 or not wider:
                continue
            w = min(wider)
            gains[g] = (weights[g] * (width_cost(k, n, f) - width_cost(w, n, f)), w,
                        min(wider, key=lambda v: (abs(v - 2 * k), v)))
        if not gains:
            break
        g = max(gains, key=lambda i: gains[i][0])
        trial = kept.copy()
        trial[g] = gains[g][2]
        rec, tries = measure(list(trial)), tries + 1
        if not within(rec) and gains[g][2] != gains[g][1] and tries < limit:
            trial[g] = gains[g][1]
            rec, tries = measure(list(trial)), tries + 1
        if not within(rec) and tries < limit:
            # a trade: the same step, paid for by one step of the group that loses the least
            # accuracy cost by it (never one widened here, never a whole group removed)
            costs = {}
            for h, (k, f, n, s) in enumerate(zip(kept, floors, sizes, steps)):
                narrower = [w for w in s if 0 < w < k]
                if h != g and h not in raised and narrower:
                    w = max(narrower)
                    costs[h] = (weights[h] * (width_cost(w, n, f) - width_cost(k, n, f)), w)
            h = min(costs, key=lambda i: costs[i][0]) if costs else None
            if h is not None and costs[h][0] < gains[g][0]:
                trial[h] = costs[h][1]
                rec, tries = measure(list(trial)), tries + 1
        if within(rec):
            kept, best = trial, rec
            raised.add(g)
        else:
            done.add(g)
    return best


def confirm(pick: dict[str, Any], retime: Callable[[dict[str, Any]], float],
            allocate: Callable[[float], dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """``pick``, or, where it met its target only within the tolerance (measured over the
    target) and the mean of that reading and a second timing (``retime(pick)``, a ratio to
    the target) is beyond it, one more configuration, allocated for the aim
    ``pick["predicted"]`` scaled down by that mean (``allocate(aim)`` returns its measured
    record), if it measures under its target; else ``pick`` still.

    The MobileNetV2-style model of ``benchmarks/latency_budget.py`` at 1/2 in eager PyTorch
    was picked at 0.517 of dense (within the 5 % tolerance), and the benchmark, timing it
    again, read 0.557. The replacement is allocated next to the pick, not taken from what
    the search measured under the target: MNISTNet at 1/4 in ONNX Runtime, picked at 0.259
    and timed again at 0.267, was traded that way for the search's floor (one unit per
    group, 0.14 of dense), 46 % accurate after the fine-tune epoch against 96 %."""
    first = pick["measured_ms"] / pick["target_ms"]
    if first <= 1:
        return pick
    mean = (first + (pick["retimed_ratio"] if "retimed_ratio" in pick else retime(pick))) / 2
    if mean <= 1 + tolerance:
        return pick
    rec = allocate(pick["predicted"] / mean)
    return rec if rec["measured_ms"] <= rec["target_ms"] else pick
