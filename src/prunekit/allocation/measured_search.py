"""The measured search of :class:`~prunekit.allocation.latency.LatencyAllocation`: from the
configurations measured so far (``history``: dicts with ``kept``, ``predicted``,
``measured_ms``, ``target_ms``, ``ok``), what to allocate for next."""

from __future__ import annotations

from typing import Any

from .base import Layer

__all__ = ["blend", "disagree", "next_aim", "spread"]


def spread(kept: list[int], layers: list[Layer], weights: list[float] | None = None) -> float:
    """How pruned a configuration is, by the greedy's own measure: Σ weight · removed
    fraction², a group's weight being the number of layers it narrows (1 when not given)."""
    weights = weights or [1.0] * len(layers)
    return sum(w * (1 - k / max(1, l.n_units)) ** 2 for k, l, w in zip(kept, layers, weights))


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
