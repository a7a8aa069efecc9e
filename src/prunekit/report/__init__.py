"""Pruning reports: one self-contained HTML file with plots, and a Markdown summary.

:func:`write_report` puts the before/after metrics, the accuracy per stage, accuracy
against parameters and MACs (dense point included), the files written, the per-layer
sparsity, the energy estimate, sensitivity curves, accuracy trade-offs, and the settings
and machine into ``report.html`` (plots embedded as PNG, no external resources) and
``report.md``. :func:`complete_run_report` adds a recipe run's stages, settings and a
runnable snippet to the report the run wrote. Plots need matplotlib
(``pip install prunekit[plot]``), imported only when a report is written.

Example:
    >>> from prunekit.report import write_report
    >>> write_report("out/report.html", before=pk.measure(dense, x), after=pk.measure(model, x), result=result)
"""

from __future__ import annotations

from .environment import environment
from .html import ORDER, SIZE_KEYS, write_report
from .run import complete_run_report, usage_snippet

__all__ = ["ORDER", "SIZE_KEYS", "complete_run_report", "environment", "usage_snippet", "write_report"]
