"""One self-contained HTML report (plots embedded as base64 PNG) and a Markdown summary."""

from __future__ import annotations

import base64
import contextlib
import html
import math
import numbers
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..api import PruneResult
from ..errors import PruneError, PruneTypeError
from ..metrics import Metrics, compare_table
from ..sensitivity import SensitivityReport
from . import plots

__all__ = ["SIZE_KEYS", "write_report"]

#: Keys a trade-off row may carry for the Pareto plot (first one present wins), with the
#: axis label each gets.
SIZE_KEYS: dict[str, str] = {
    "size_bytes": "size as safetensors (bytes)",
    "nonzero_params": "nonzero parameters",
    "params": "parameters",
    "size": "size",
}

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1rem 0; } img { max-width: 100%; } figcaption, .note { color: #555; font-size: 0.9rem; }
"""


def _pct(a: float) -> str:
    return f"{a:.2%}" if 0 <= a <= 1 else f"{a:.4g}"


def _real(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(float(value))


def _check_rows(rows: object) -> list[dict[str, Any]]:
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
        raise PruneTypeError(f"tradeoff must be a list of dict rows (sparsity, accuracy, method), got {type(rows).__name__}")
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise PruneTypeError(f"tradeoff[{i}] must be a dict with keys sparsity, accuracy, method; got {r!r}")
        missing = [k for k in ("sparsity", "accuracy", "method") if k not in r]
        if missing:
            raise PruneError(f"tradeoff[{i}] lacks {missing}: {dict(r)!r}")
        if not _real(r["sparsity"]) or not 0 <= float(r["sparsity"]) <= 1:
            raise PruneError(f"tradeoff[{i}]['sparsity']={r['sparsity']!r} is not a number in [0, 1]")
        if not _real(r["accuracy"]):
            raise PruneError(f"tradeoff[{i}]['accuracy']={r['accuracy']!r} is not a finite number")
        if not isinstance(r["method"], str) or not r["method"]:
            raise PruneError(f"tradeoff[{i}]['method']={r['method']!r} must be a non-empty string")
        for key in SIZE_KEYS:
            if key in r and (not _real(r[key]) or float(r[key]) <= 0):
                raise PruneError(f"tradeoff[{i}][{key!r}]={r[key]!r} must be a positive number")
        out.append(dict(r))
    if not out:
        raise PruneError("tradeoff=[] has no rows; give None to leave the trade-off out")
    return out


def _check_path(path: object) -> Path:
    try:
        p = Path(os.fspath(path))  # type: ignore[arg-type]
    except TypeError as e:
        raise PruneTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}: {path!r}") from e
    if p.suffix.lower() not in (".html", ".htm"):
        raise PruneError(f"path={str(p)!r} must end in .html or .htm (the Markdown summary goes next to it as .md)")
    if p.is_dir():
        raise PruneError(f"path={str(p)!r} is a folder; give the report file's name, e.g. {str(p / 'report.html')!r}")
    return p


# -- writing ---------------------------------------------------------------------------------


def _write_all(files: dict[Path, str]) -> None:
    """Write every file to a temporary name in its folder, then rename each into place:
    an error before the renames leaves every existing file untouched."""
    umask = os.umask(0)
    os.umask(umask)
    temps: dict[Path, str] = {}
    try:
        for path, text in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps[path] = tmp
            # mkstemp makes the file private; give it the mode a plain open() would.
            os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~umask)
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_report(
    path: str | os.PathLike,
    *,
    before: Metrics,
    after: Metrics,
    result: PruneResult | None = None,
    sensitivity: SensitivityReport | None = None,
    tradeoff: Sequence[Mapping[str, Any]] | None = None,
    before_acc: float | None = None,
    after_acc: float | None = None,
    title: str = "Pruning report",
    files: Mapping[str, int] | None = None,
) -> Path:
    """Write a self-contained HTML report and a Markdown summary next to it.

    The HTML holds every plot as an embedded PNG (no external files, URLs or scripts);
    the Markdown (same name, ``.md``) holds the same tables without plots. Both files are
    written atomically; on any error neither is created or changed. Needs matplotlib
    (``pip install prunekit[plot]``).

    Args:
        path: the HTML file to write (``.html`` or ``.htm``); its folder is created.
        before: ``pk.measure`` of the model before pruning.
        after: ``pk.measure`` of the pruned model.
        result: what ``pk.prune`` returned: adds the per-layer sparsity section.
        sensitivity: from :func:`prunekit.sensitivity.sensitivity`: adds its curves.
        tradeoff: rows ``{"method", "sparsity", "accuracy"}`` (e.g. several methods at
            several sparsities): adds the accuracy–sparsity plot, and, when rows carry a
            size (one of :data:`SIZE_KEYS`), the accuracy-against-size Pareto plot.
        before_acc: accuracy before pruning (drawn as the baseline, shown in the table).
        after_acc: accuracy after pruning (marked on the trade-off plot at the fraction of
            the original prunable weights that is gone, so a compacted model counts too).
        title: the report's heading.
        files: ``{name: bytes}`` of the files the run wrote (the saved model's weights and
            spec): shown as they are on disk, beside the size of the model as safetensors.

    Returns:
        The path of the HTML file.

    Example:
        >>> write_report("out/report.html", before=pk.measure(dense, x), after=pk.measure(model, x),
        ...              result=result, before_acc=0.97, after_acc=0.96)
    """
    p = _check_path(path)
    for name, value in (("before", before), ("after", after)):
        if not isinstance(value, Metrics):
            raise PruneTypeError(f"{name} must be a Metrics (from prunekit.measure), got {type(value).__name__}")
    if result is not None and not isinstance(result, PruneResult):
        raise PruneTypeError(f"result must be a PruneResult (from prunekit.prune) or None, got {type(result).__name__}")
    if sensitivity is not None and not isinstance(sensitivity, SensitivityReport):
        raise PruneTypeError(
            f"sensitivity must be a SensitivityReport (from prunekit.sensitivity.sensitivity) or None, "
            f"got {type(sensitivity).__name__}"
        )
    for name, acc in (("before_acc", before_acc), ("after_acc", after_acc)):
        if acc is not None and not _real(acc):
            raise PruneError(f"{name}={acc!r} must be a finite number or None")
    if not isinstance(title, str):
        raise PruneTypeError(f"title must be a str, got {type(title).__name__}")
    if files is not None and (not isinstance(files, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in files.items())):
        raise PruneTypeError(f"files must map file names to sizes in bytes (non-negative ints), got {files!r}"[:300])
    rows = _check_rows(tradeoff) if tradeoff is not None else None

    baseline = before_acc if before_acc is not None else (sensitivity.baseline if sensitivity is not None else None)
    sections: list[Section] = [_summary(before, after, before_acc, after_acc)]
    if files:
        sections.append(_files(files, before))
    sections.append(_energy(before, after))
    if result is not None:
        sections.append(_layers(result))
    if sensitivity is not None and sensitivity.curves:
        sections.append(_sensitivity(sensitivity))
    if rows is not None:
        # Weights removed relative to the model before pruning: right for compacted models too.
        removed = 1 - after.prunable_nonzero / before.prunable_params if before.prunable_params else after.sparsity
        marker = (removed, float(after_acc)) if after_acc is not None else None
        sections.append(_tradeoff(rows, baseline, marker))
        pareto = _pareto(rows, baseline)
        if pareto is not None:
            sections.append(pareto)

    t = html.escape(title)
    toc = "".join(f'<li><a href="#{sid}">{html.escape(head)}</a></li>' for sid, head, _, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{html.escape(head)}</h2>{h}</section>\n' for sid, head, h, _ in sections)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{t}</title>'
            f"<style>{_CSS}</style></head>\n<body><h1>{t}</h1><nav><ul>{toc}</ul></nav>\n{body}</body></html>\n")
    md = f"# {title}\n\nPlots: {p.name}\n\n" + "\n".join(f"## {head}\n\n{m}" for _, head, _, m in sections)

    p.parent.mkdir(parents=True, exist_ok=True)
    _write_all({p: page, p.with_suffix(".md"): md})
    return p
