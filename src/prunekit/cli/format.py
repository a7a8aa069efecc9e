"""How ``prunekit`` commands print numbers: one style for every command.

* counts with thousands separators: ``235,200``;
* percentages with two decimals and a space before the sign: ``92.34 %`` (the style of
  ``prunekit measure``, ``Metrics.rows()`` and the HTML report);
* tables as ``rich`` tables: a title, a left-aligned name column, right-aligned numbers.

This module imports neither torch nor the rest of prunekit at import time.
"""

from __future__ import annotations

from typing import Any

__all__ = ["count", "inspect_text", "pct", "points", "prune_tables", "prune_totals"]


def count(n: int) -> str:
    """How commands print a count: ``235200`` -> ``'235,200'``."""
    return f"{int(n):,}"


def pct(fraction: float) -> str:
    """How commands print a percentage (the style of ``prunekit measure`` and the report):
    ``0.9234`` -> ``'92.34 %'``."""
    return f"{fraction * 100:.2f} %"


def points(before: float, after: float) -> str:
    """The change of an accuracy in percentage points: ``'-1.33 pt'``."""
    return f"{(after - before) * 100:+.2f} pt"


def prune_tables(res: Any, title: str) -> list[Any]:
    """A ``PruneResult`` as rich tables: one row per pruned weight (and, for coupled
    channel pruning, one per group), then the totals; the same facts as
    ``PruneResult.summary()`` in the CLI's number style. Channel counts and the weight
    sparsity they cause are separate columns."""
    from rich.table import Table

    structured = res.groups is not None
    t = Table(title=title, title_justify="left")
    t.add_column("layer")
    t.add_column("shape")
    t.add_column("units" if not structured else "channels", justify="right")
    t.add_column("pruned", justify="right")
    t.add_column("sparsity (weights)", justify="right")
    for layer in res.layers:
        t.add_row(layer.name, "×".join(str(s) for s in layer.shape), count(layer.units), count(layer.pruned_units),
                  pct(layer.sparsity))
    tables = [t]
    if structured:
        g = Table(title="coupled channel groups", title_justify="left")
        g.add_column("group")
        g.add_column("units", justify="right")
        g.add_column("pruned", justify="right")
        g.add_column("pruned share", justify="right")
        g.add_column("output channels", justify="right")
        g.add_column("pruned channels", justify="right")
        for grp in res.groups:
            g.add_row(grp.name, count(grp.units), count(grp.pruned_units), pct(grp.pruned_units / max(1, grp.units)),
                      count(grp.channels), count(grp.pruned_channels))
        tables.append(g)
    return tables


def prune_totals(res: Any) -> list[str]:
    """The lines under the tables: what was removed in all, and what was left dense."""
    lines = []
    if res.groups is not None:
        ch = sum(g.channels for g in res.groups)
        gone = sum(g.pruned_channels for g in res.groups)
        lines.append(f"channels removed: {count(gone)} of {count(ch)} output channels ({pct(gone / max(1, ch))}); "
                     f"coupled units removed: {pct(res.sparsity)}")
    else:
        lines.append(f"sparsity over pruned layers: {pct(res.sparsity)}")
    cov = res.coverage
    if cov is not None:
        lines.append(f"scope: {count(cov.covered)} of {count(cov.total)} parameters ({pct(cov.share)}); "
                     f"weights left dense: {count(cov.skipped_numel)} ({pct(cov.skipped_share)})")
        ranked = sorted(cov.skipped, key=lambda s: -s.numel)
        for s in ranked[:6]:
            lines.append(f"  {s.name} ({count(s.numel)}, {pct(s.numel / max(1, cov.total))}): {s.reason}")
        if len(ranked) > 6:
            lines.append(f"  and {len(ranked) - 6} more")
    elif res.skipped:
        lines.append(f"left dense: {', '.join(res.skipped)}")
    return lines


def inspect_text(report: Any) -> str:
    """``pk.inspect``'s report (``InspectReport.summary()``) with counts in the CLI's style."""
    return report.summary(count)
