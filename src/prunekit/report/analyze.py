"""The report of a sensitivity analysis (``prunekit analyze --report DIR``): the curves of
:func:`prunekit.sensitivity.sensitivity` (accuracy with one layer pruned alone, against
its sparsity), their table, and the settings and machine; one self-contained HTML page and
its Markdown twin."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import PruneError, PruneTypeError
from ..sensitivity import SensitivityReport
from . import sections as S
from .checks import check_mapping, check_path
from .environment import environment
from .html import render, write_all

__all__ = ["write_sensitivity_report"]


def write_sensitivity_report(path: str | os.PathLike, report: SensitivityReport, *,
                             settings: Mapping[str, Any] | None = None, machine: Mapping[str, str] | None = None,
                             title: str = "prunekit analyze") -> Path:
    """Write ``path`` (HTML) and the same name with ``.md``, atomically; needs matplotlib.

    Args:
        path: the HTML file (``.html`` or ``.htm``); its folder is created.
        report: what :func:`prunekit.sensitivity.sensitivity` returned, with curves.
        settings: ``{setting: value}`` shown with the machine (model, data, sparsities...).
        machine: ``{what: text}``; default: :func:`prunekit.report.environment` now.
        title: the page's heading.
    """
    p = check_path(path)
    if not isinstance(report, SensitivityReport):
        raise PruneTypeError(f"report must be a SensitivityReport (from prunekit.sensitivity.sensitivity), "
                             f"got {type(report).__name__}")
    if not report.curves:
        raise PruneError("report has no curves (no layer was analysed); nothing to plot")
    config = check_mapping("settings", settings)
    env = check_mapping("machine", machine, str_values=True)
    if not isinstance(title, str):
        raise PruneTypeError(f"title must be a str, got {type(title).__name__}")
    sections = [S.sensitivity(report), S.settings(config, env if env is not None else environment(),
                                                  "Each trial prunes one layer alone and evaluates the model on the "
                                                  "held-out data; nothing is timed.")]
    page, md = render(title, sections, p.name)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_all({p: page, p.with_suffix(".md"): md})
    return p
