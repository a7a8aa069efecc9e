"""Pruning reports: one self-contained HTML file with plots, and a Markdown summary.

:func:`write_report` puts the before/after metrics, the accuracy per stage, accuracy
against parameters and MACs (dense point included), the files written, the per-layer
sparsity, the energy estimate, sensitivity curves, accuracy trade-offs, and the settings
and machine into ``report.html`` (plots embedded as PNG, no external resources) and
``report.md``. :func:`complete_run_report` adds a recipe run's stages, settings and a
runnable snippet to the report the run wrote. :func:`write_compare_report` (a comparison
of methods: accuracy per method, accuracy against parameters and MACs with the dense
point), :func:`write_sensitivity_report` (sensitivity curves) and
:func:`write_search_report` (a strategy search: accuracy against nonzero parameters and
sparsity of every setting, the dense point and the Pareto front) write the reports of
``prunekit compare --report``, ``prunekit analyze --report`` and ``prunekit search --report``. Plots need matplotlib
(``pip install prunekit[plot]``), imported only when a report is written.

Example:
    >>> from prunekit.report import write_report
    >>> write_report("out/report.html", before=pk.measure(dense, x), after=pk.measure(model, x), result=result)
"""

from __future__ import annotations

from .analyze import write_sensitivity_report
from .compare import write_compare_report
from .environment import environment
from .html import ORDER, SIZE_KEYS, write_report
from .run import complete_run_report, usage_snippet
from .search import write_search_report

__all__ = ["ORDER", "SIZE_KEYS", "complete_run_report", "environment", "usage_snippet", "write_compare_report",
           "write_report", "write_search_report", "write_sensitivity_report"]
