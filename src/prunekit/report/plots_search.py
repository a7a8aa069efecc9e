"""The figure of a ``search`` report, rendered like :mod:`prunekit.report.plots` (Agg, never
pyplot): :func:`search_tradeoff`, every searched setting's cross-validated accuracy against
its cost, one panel per cost (nonzero parameters, sparsity), with

* one colour per criterion (the ``random`` and ``magnitude`` baselines drawn hollow),
  criteria at the same cost set slightly apart so that none hides another,
* a whisker of ± one standard deviation over folds and seeds,
* the Pareto front as a step line through larger, outlined points,
* the dense model as a grey diamond and a dashed line,
* the chance floor (settings at or below it are never on the front) as a dotted line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .plots import figure, png
from .plots_compare import COLOURS, DENSE_COLOUR

__all__ = ["search_tradeoff"]


def search_tradeoff(rows: Sequence[Mapping[str, Any]], dense: Mapping[str, Any] | None, front: set[str],
                     panels: Sequence[tuple[str, str]], floor: float | None) -> bytes:
    """Accuracy against each cost in ``panels``.

    Args:
        rows: the settings: ``key``, ``label`` (the criterion, for the colour), ``baseline``,
            ``accuracy_mean``, ``accuracy_std`` and a value for every panel's key.
        dense: the dense row (same keys; None without one).
        front: the keys of the rows on the Pareto front.
        panels: ``(key, axis label)``, e.g. ``[("nonzero_params", "nonzero parameters")]``;
            the key ``"sparsity"`` gets a percent axis.
        floor: accuracy at or below which a setting is never on the front (None: not drawn).
    """
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter, PercentFormatter

    fig = figure(9, 4.2)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    labels = list(dict.fromkeys(str(r["label"]) for r in rows))
    colour = {lab: COLOURS[i % len(COLOURS)] for i, lab in enumerate(labels)}
    for ax, (key, axis_label) in zip(axes, panels):
        xs = [float(r[key]) for r in rows] + ([float(dense[key])] if dense is not None and key in dense else [])
        logx = key != "sparsity" and min(xs) > 0 and max(xs) / min(xs) > 3

        def dodge(x: float, i: int) -> float:
            """Criteria at the same cost side by side instead of on top of each other."""
            step = (i - (len(labels) - 1) / 2) * min(0.04, 0.3 / len(labels))
            return x * (1 + step) if logx else x + step * (0.5 if key == "sparsity" else max(xs))

        shift = {str(r["key"]): dodge(float(r[key]), labels.index(str(r["label"]))) for r in rows}
        for lab in labels:
            mine = [r for r in rows if str(r["label"]) == lab]
            hollow = all(bool(r.get("baseline")) for r in mine)
            ax.errorbar([shift[str(r["key"])] for r in mine], [float(r["accuracy_mean"]) for r in mine],
                        yerr=[float(r["accuracy_std"]) for r in mine], fmt="o", markersize=6, capsize=3,
                        linewidth=1, color=colour[lab], markerfacecolor="white" if hollow else colour[lab],
                        label=lab + (" (baseline)" if hollow else ""), zorder=3)
        on = sorted((r for r in rows if r["key"] in front), key=lambda r: float(r[key]))
        if on:
            fx, ys = [shift[str(r["key"])] for r in on], [float(r["accuracy_mean"]) for r in on]
            ax.step(fx, ys, where="post", color="black", linewidth=1.2, alpha=0.8, zorder=2,
                    label="Pareto front" if ax is axes[0] else None)
            ax.plot(fx, ys, "o", markersize=11, markerfacecolor="none", markeredgecolor="black",
                    markeredgewidth=1.5, zorder=4)
        if dense is not None and key in dense:
            ax.plot([float(dense[key])], [float(dense["accuracy_mean"])], "D", markersize=8, color=DENSE_COLOUR,
                    zorder=4)
            ax.axhline(float(dense["accuracy_mean"]), color=DENSE_COLOUR, linestyle="--", linewidth=1,
                       label=f"dense ({100 * float(dense['accuracy_mean']):.2f} %)" if ax is axes[0] else None)
        if floor is not None:
            ax.axhline(floor, color="#c44e52", linestyle=":", linewidth=1,
                       label=f"chance floor ({100 * floor:.1f} %)" if ax is axes[0] else None)
        if key == "sparsity":
            ax.xaxis.set_major_formatter(PercentFormatter(1.0))
            ax.set_xlim(min(xs) - 0.08, min(1.0, max(xs) + 0.08))
        elif logx:
            ax.set_xscale("log")
            ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            axis_label += " (log scale)"
        else:
            ax.set_xlim(0, max(xs) * 1.15)
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_xlabel(axis_label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-validated accuracy")
    axes[0].yaxis.set_major_formatter(PercentFormatter(1.0))
    handles, names = [], []
    for ax in axes:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="outside lower center", ncols=min(4, len(names)), fontsize=8)
    return png(fig)
