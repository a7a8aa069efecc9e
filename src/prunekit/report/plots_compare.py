"""The figures of a ``compare`` report, rendered like :mod:`prunekit.report.plots` (Agg,
never pyplot):

* :func:`method_accuracy`: every method's accuracy as a dot (mean over seeds) with a
  whisker of ± one standard deviation, the dense reference as a dashed line, and each dot
  labelled with its value and its difference to dense. Dots, not bars: the accuracies
  differ by tenths of a point, and bars cut off far from zero would exaggerate that.
* :func:`cost_tradeoff`: accuracy against each cost (nonzero parameters, MACs), one panel
  each, every method labelled by name beside its point (labels spread apart so that
  methods at the same cost stay readable), the dense model in grey.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .plots import figure, png

__all__ = ["cost_tradeoff", "method_accuracy"]

DENSE_COLOUR = "#4d4d4d"
COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#ccb974", "#64b5cd"]


def _colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def method_accuracy(methods: Sequence[str], means: Sequence[float], stds: Sequence[float],
                    dense: float | None) -> bytes:
    """One row per method, top to bottom in the order given.

    Args:
        methods: the methods' names ("dense" is drawn grey).
        means: mean test accuracy of each, a fraction in [0, 1].
        stds: standard deviation over seeds (0 with one seed: no whisker).
        dense: the dense row's mean, drawn dashed; None without a dense row.
    """
    fig = figure(8, 0.7 + 0.38 * len(methods))
    ax = fig.add_subplot()
    y = list(range(len(methods)))[::-1]
    lo = min(100 * (m - s) for m, s in zip(means, stds))
    hi = max(100 * (m + s) for m, s in zip(means, stds))
    span = max(hi - lo, 0.2)
    k = 0
    for yi, name, m, s in zip(y, methods, means, stds):
        colour = DENSE_COLOUR if name == "dense" else _colour(k)
        k += name != "dense"
        ax.errorbar([100 * m], [yi], xerr=[100 * s] if s else None, fmt="D" if name == "dense" else "o",
                    color=colour, markersize=7, capsize=4, linewidth=1.2)
        text = f"{100 * m:.2f} %"
        if dense is not None and name != "dense":
            text += f"  ({100 * (m - dense):+.2f} pt)"
        ax.annotate(text, (100 * (m + s), yi), textcoords="offset points", xytext=(8, 0), va="center", fontsize=8)
    if dense is not None:
        ax.axvline(100 * dense, color="black", linestyle="--", linewidth=1, label=f"dense ({100 * dense:.2f} %)")
        ax.legend(fontsize=7, loc="lower left")
    ax.set_xlim(lo - span * 0.15, hi + span * 0.45)  # room for the labels on the right
    ax.set_ylim(-0.7, len(methods) - 0.3)
    ax.set_yticks(y, labels=list(methods), fontsize=9)
    ax.set_xlabel("test accuracy (%)")
    ax.grid(axis="x", alpha=0.3)
    return png(fig)


def _spread(values: Sequence[float], gap: float) -> list[float]:
    """``values`` moved apart as little as needed for neighbours to be ``gap`` apart,
    keeping their order (for labels beside points at nearly the same height)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    placed = [float(values[i]) for i in order]
    for _ in range(50):
        moved = False
        for j in range(1, len(placed)):
            if placed[j] - placed[j - 1] < gap - 1e-12:
                mid, half = (placed[j] + placed[j - 1]) / 2, gap / 2
                placed[j - 1], placed[j] = mid - half, mid + half
                moved = True
        if not moved:
            break
    out = [0.0] * len(values)
    for i, v in zip(order, placed):
        out[i] = v
    return out


def cost_tradeoff(points: Sequence[Mapping[str, Any]], panels: Sequence[tuple[str, str]]) -> bytes:
    """Accuracy against each cost, one panel per ``(key, axis label)`` in ``panels``.

    Args:
        points: dicts with ``label`` (the method), ``accuracy`` (fraction), ``dense``
            (True for the dense model) and a value for every panel's key.
        panels: e.g. ``[("nonzero_params", "nonzero parameters"), ("macs", "effective MACs")]``.
    """
    from matplotlib.ticker import EngFormatter, PercentFormatter

    fig = figure(8, 3.8)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    accs = [float(p["accuracy"]) for p in points]
    pad = max((max(accs) - min(accs)) * 0.35, 0.004)
    ylo, yhi = min(accs) - pad, max(accs) + pad
    labels_y = _spread(accs, (yhi - ylo) / 11)
    ylo, yhi = min(ylo, min(labels_y) - pad / 3), max(yhi, max(labels_y) + pad / 3)
    for ax, (key, axis_label) in zip(axes, panels):
        xs = [float(p[key]) for p in points]
        logx = min(xs) > 0 and max(xs) / min(xs) > 3
        if logx:
            ax.set_xscale("log")
            ax.set_xlim(min(xs) / 3, max(xs) * 3)
        else:
            ax.set_xlim(0, max(xs) * 1.6)
        k = 0
        for p, x, ly in zip(points, xs, labels_y):
            dense = bool(p.get("dense"))
            colour = DENSE_COLOUR if dense else _colour(k)
            k += not dense
            y = float(p["accuracy"])
            ax.plot([x], [y], marker="D" if dense else "o", markersize=8 if dense else 6, color=colour,
                    linestyle="none", zorder=3)
            # dense (the largest) labelled to its left, the pruned methods to their right
            tx = x / 2.2 if dense and logx else x * 2.0 if logx else x + (max(xs) * (-0.25 if dense else 0.12))
            ax.annotate(str(p["label"]), (x, y), xytext=(tx, ly), fontsize=8, color=colour, va="center",
                        ha="right" if dense else "left",
                        arrowprops={"arrowstyle": "-", "color": colour, "linewidth": 0.6, "alpha": 0.7})
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_xlabel(axis_label + (" (log scale)" if logx else ""))
        ax.grid(alpha=0.3)
    axes[0].set_ylim(ylo, yhi)
    axes[0].set_ylabel("test accuracy")
    if all(0 <= a <= 1 for a in accs):
        axes[0].yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1 if (yhi - ylo) > 0.02 else 2))
    return png(fig)
