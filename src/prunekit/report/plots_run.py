"""Figures of a run: accuracy after every stage, and accuracy against cost (parameters,
MACs, latency) with the dense point. Rendered like :mod:`prunekit.report.plots`: a
matplotlib ``Figure`` on an Agg canvas, never ``pyplot``, returned as PNG bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .plots import figure, is_fraction, percent_axis, png

__all__ = ["cost_tradeoff", "stage_accuracy"]

#: Colours of the run figures (the browser test looks for the first two).
STAGE_LINE = "#8172b3"
MODEL_STAR = "#c44e52"
DENSE_DOT = "#4d4d4d"


def stage_accuracy(labels: Sequence[str], accuracies: Sequence[float], *, pruned: Sequence[int] = (),
                   baseline: float | None = None, baseline_label: str = "before pruning") -> bytes:
    """Accuracy after each stage, one point per stage in order, each labelled with its value.

    Args:
        labels: one tick label per point (``"start"``, ``"1 finetune"``, ...).
        accuracies: the accuracy after each point's stage.
        pruned: indices of the points whose stage pruned: shaded, so a drop reads as the
            pruning's and the recovery as the fine-tuning's.
        baseline: drawn as a dashed line (the accuracy of the model that was pruned).
        baseline_label: the dashed line's legend entry.
    """
    fig = figure(8, 3.3)
    ax = fig.add_subplot()
    x = list(range(len(labels)))
    for i in pruned:
        ax.axvspan(i - 0.4, i + 0.4, color="#f2c4c4", alpha=0.6, linewidth=0,
                   label="pruning stage" if i == pruned[0] else None)
    ax.plot(x, accuracies, marker="o", markersize=6, linewidth=2, color=STAGE_LINE, label="accuracy after the stage")
    fraction = is_fraction(list(accuracies) + ([baseline] if baseline is not None else []))
    for xi, a in zip(x, accuracies):
        ax.annotate(f"{a:.1%}" if fraction else f"{a:.4g}", (xi, a), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=8)
    if baseline is not None:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1,
                   label=f"{baseline_label} ({baseline:.2%})" if fraction else baseline_label)
    lo, hi = min(accuracies), max(accuracies)
    if baseline is not None:
        lo, hi = min(lo, baseline), max(hi, baseline)
    pad = max((hi - lo) * 0.15, 0.01)
    top = hi + pad * 1.6
    if fraction and top > 1:  # no ticks above 100 %: the value labels may reach past the axes
        top = max(1.0, hi + pad * 0.8)
    ax.set_ylim(lo - pad, top)
    ax.set_xticks(x, labels=list(labels), fontsize=8)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    if fraction:
        percent_axis(ax.yaxis)
    ax.set_ylabel("test accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return png(fig)


def cost_tradeoff(points: Sequence[Mapping[str, Any]], panels: Sequence[tuple[str, str]]) -> bytes:
    """Accuracy against each cost in ``panels`` (one subplot each, side by side).

    Args:
        points: dicts with ``label``, ``accuracy``, ``kind`` (``"dense"``: the model before
            pruning, grey dot; ``"model"``: this report's model, red star; anything else: a
            run to compare with, one colour per label) and a value for each panel's key
            (points without it are left out of that panel).
        panels: ``(key, axis label)`` pairs, e.g. ``("nonzero_params", "nonzero parameters")``.
    """
    fig = figure(8, 3.2)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    fraction = is_fraction([float(p["accuracy"]) for p in points])
    colours = ["#4c72b0", "#dd8452", "#55a868", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]
    others = sorted({str(p["label"]) for p in points if p["kind"] not in ("dense", "model")})
    for ax, (key, label) in zip(axes, panels):
        shown = [p for p in points if p.get(key) is not None]
        for name in others:
            group = sorted((p for p in shown if p["kind"] not in ("dense", "model") and p["label"] == name),
                           key=lambda p: float(p[key]))
            if group:
                ax.plot([float(p[key]) for p in group], [float(p["accuracy"]) for p in group], marker="o",
                        markersize=6, linewidth=1, color=colours[others.index(name) % len(colours)], label=name)
        dense = next((p for p in shown if p["kind"] == "dense"), None)
        model = next((p for p in shown if p["kind"] == "model"), None)
        if dense is not None and model is not None:
            ax.annotate("", xy=(float(model[key]), float(model["accuracy"])),
                        xytext=(float(dense[key]), float(dense["accuracy"])),
                        arrowprops={"arrowstyle": "->", "color": "#999999", "linewidth": 1})
            ratio = float(dense[key]) / float(model[key]) if float(model[key]) else float("inf")
            better, worse = ("faster", "slower") if key.startswith("latency") else ("fewer", "more")
            ax.set_title(f"{ratio:.1f}× {better}" if ratio >= 1 else f"{1 / ratio:.1f}× {worse}", fontsize=9)
        if dense is not None:
            ax.plot([float(dense[key])], [float(dense["accuracy"])], marker="o", markersize=8, color=DENSE_DOT,
                    linestyle="none", label=str(dense["label"]), zorder=3)
        if model is not None:
            ax.plot([float(model[key])], [float(model["accuracy"])], marker="*", markersize=15, color=MODEL_STAR,
                    linestyle="none", label=str(model["label"]), zorder=4)
        values = [float(p[key]) for p in shown]
        if values and min(values) > 0 and max(values) / min(values) > 50:
            ax.set_xscale("log")
        else:
            ax.set_xlim(0, max(values or [1.0]) * 1.08)
        if not key.startswith("latency"):
            from matplotlib.ticker import EngFormatter

            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 200k, 4M: counts, not 1e6 offsets
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    if fraction:
        from matplotlib.ticker import PercentFormatter

        axes[0].yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    accs = [float(p["accuracy"]) for p in points]
    pad = max((max(accs) - min(accs)) * 0.25, 0.01)
    axes[0].set_ylim(min(accs) - pad, max(accs) + pad)
    legend: dict[str, Any] = {}  # every entry once, runs included when only one panel shows them
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(text, handle)
    axes[-1].legend(list(legend.values()), list(legend), fontsize=7, loc="lower right")
    return png(fig)
