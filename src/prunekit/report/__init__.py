"""Pruning reports: one self-contained HTML file with plots, and a Markdown summary.

:func:`write_report` puts the before/after metrics, the energy estimate, the per-layer
sparsity, sensitivity curves and accuracy trade-offs into ``report.html`` (plots embedded
as PNG, no external resources) and ``report.md``. Plots need matplotlib
(``pip install prunekit[plot]``), imported only when a report is written.

Example:
    >>> from prunekit.report import write_report
    >>> write_report("out/report.html", before=pk.measure(dense, x), after=pk.measure(model, x), result=result)
"""

from __future__ import annotations

from .html import SIZE_KEYS, write_report

__all__ = ["SIZE_KEYS", "write_report"]
