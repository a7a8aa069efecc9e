"""Figures for the pruning report, each rendered to PNG bytes with matplotlib's Agg canvas.

matplotlib is optional (extra ``plot``) and imported on first use. Figures are built with
``matplotlib.figure.Figure`` directly, never through ``pyplot``: no global figure state,
no interactive backend, safe to call from any thread.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import PruneError
from ..metrics import Metrics

__all__ = ["energy", "layer_sparsity", "pareto", "pareto_front", "sensitivity_curves", "tradeoff"]

INSTALL_HINT = "pip install prunekit[plot]"


def figure(width: float, height: float) -> Any:
    """A new Agg-backed figure; raises :class:`PruneError` when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PruneError(f"plots need matplotlib, which is not installed: {INSTALL_HINT}") from e
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png(fig: Any) -> bytes:
    """The figure as PNG bytes (without a "Software" text chunk)."""
    buf = io.BytesIO()
    # No "Software" text chunk: the file then holds no URL at all.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def percent_axis(axis: Any) -> None:
    """Label ``axis`` as percentages of 1."""
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0))


def is_fraction(values: Sequence[float]) -> bool:
    """True when every value is in [0, 1] (accuracies given as fractions)."""
    return all(0 <= v <= 1 for v in values)


def layer_sparsity(names: Sequence[str], sparsities: Sequence[float], title: str = "Sparsity per layer") -> bytes:
    """Horizontal bars: the fraction of each layer's weights that is zero."""
    fig = figure(8, max(2.2, 0.32 * len(names) + 1.2))
    ax = fig.add_subplot()
    y = list(range(len(names)))
    bars = ax.barh(y, sparsities, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{s:.1%}" for s in sparsities], padding=3, fontsize=8)
    ax.set_yticks(y, labels=list(names), fontsize=8)
    ax.invert_yaxis()  # model order, top to bottom
    ax.set_xlim(0, 1.12)
    percent_axis(ax.xaxis)
    ax.set_xlabel("weights removed")
    ax.set_title(title)
    return png(fig)


def sensitivity_curves(baseline: float, curves: Mapping[str, Sequence[tuple[float, float]]]) -> bytes:
    """Accuracy against the sparsity of one layer pruned alone, one line per layer."""
    fig = figure(8, 4.8)
    ax = fig.add_subplot()
    for name, pts in curves.items():
        xs = [0.0] + [s for s, _ in pts]
        ys = [baseline] + [a for _, a in pts]
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.4, label=name)
    ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label="unpruned")
    values = [baseline] + [a for pts in curves.values() for _, a in pts]
    percent_axis(ax.xaxis)
    if is_fraction(values):
        percent_axis(ax.yaxis)
    ax.set_xlabel("sparsity of the one layer pruned")
    ax.set_ylabel("accuracy")
    ax.set_title("Sensitivity: each layer pruned alone")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=1 if len(curves) <= 12 else 2, loc="lower left")
    return png(fig)


def _by_method(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r["method"]), []).append(r)
    return groups


def tradeoff(rows: Sequence[Mapping[str, Any]], baseline: float | None = None,
             marker: tuple[float, float] | None = None) -> bytes:
    """Accuracy against global sparsity, one line per method; the unpruned accuracy as a
    dashed line and, if given, this report's model as a star."""
    fig = figure(8, 4.8)
    ax = fig.add_subplot()
    for method, group in _by_method(rows).items():
        group = sorted(group, key=lambda r: r["sparsity"])
        ax.plot([r["sparsity"] for r in group], [r["accuracy"] for r in group], marker="o", markersize=4, label=method)
    if baseline is not None:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label="unpruned")
    if marker is not None:
        ax.plot([marker[0]], [marker[1]], marker="*", markersize=14, color="#c44e52", linestyle="none",
                label="this model")
    values = [r["accuracy"] for r in rows] + ([baseline] if baseline is not None else [])
    xs = [float(r["sparsity"]) for r in rows] + ([marker[0]] if marker is not None else [])
    if max(xs) - min(xs) < 0.1:  # one sparsity: a readable range around it, not 0.001 % ticks
        mid = (max(xs) + min(xs)) / 2
        ax.set_xlim(max(0.0, mid - 0.1), min(1.0, mid + 0.1))
    percent_axis(ax.xaxis)
    if is_fraction(values):
        percent_axis(ax.yaxis)
    ax.set_xlabel("sparsity (weights removed)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy–sparsity trade-off")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (size, accuracy) points no other point beats: none is at most as large and
    strictly more accurate, or strictly smaller and at least as accurate. Sorted by size."""
    front: list[tuple[float, float]] = []
    best = -math.inf
    for size, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((size, acc))
            best = acc
    return front


def pareto(rows: Sequence[Mapping[str, Any]], size_key: str, size_label: str, baseline: float | None = None) -> bytes:
    """Accuracy against model size, one colour per method, the Pareto front as a step line."""
    fig = figure(8, 4.8)
    ax = fig.add_subplot()
    for method, group in _by_method(rows).items():
        ax.scatter([r[size_key] for r in group], [r["accuracy"] for r in group], s=28, label=method, zorder=3)
    front = pareto_front([(float(r[size_key]), float(r["accuracy"])) for r in rows])
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linewidth=1.2,
            label="Pareto front", zorder=2)
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", linewidth=1, label="unpruned")
    sizes = [float(r[size_key]) for r in rows]
    if min(sizes) > 0 and max(sizes) / min(sizes) > 50:
        ax.set_xscale("log")
    values = [r["accuracy"] for r in rows]
    if is_fraction(values):
        percent_axis(ax.yaxis)
    ax.set_xlabel(size_label)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy against size (up and to the left is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def energy(before: Metrics, after: Metrics) -> bytes:
    """Small horizontal stacked bars of the estimated energy per inference: compute and
    memory, before and after pruning, and after with only nonzero weights stored. The
    report draws it only when before and after differ visibly (see ``report.sections``)."""
    labels = ["before", "after", "after, nonzeros only"]
    compute = [before.compute_uj, after.compute_uj, after.compute_uj]
    memory = [before.memory_uj, after.memory_uj, after.memory_uj_sparse_storage]
    fig = figure(8, 2.2)
    ax = fig.add_subplot()
    y = list(range(len(labels)))
    ax.barh(y, compute, color="#dd8452", label="compute (MACs)")
    ax.barh(y, memory, left=compute, color="#55a868", label="memory (weights, activations)")
    top = max(c + m for c, m in zip(compute, memory)) or 1.0
    for i, (c, m) in enumerate(zip(compute, memory)):
        ax.text(c + m + top * 0.01, i, f"{c + m:.3g} µJ", va="center", fontsize=8)
    ax.set_yticks(y, labels=labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.18)
    ax.set_xlabel("µJ per inference, batch 1 (estimate)")
    ax.legend(fontsize=7, loc="lower right")
    return png(fig)
