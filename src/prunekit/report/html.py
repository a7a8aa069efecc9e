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


# -- building blocks (each returns (html, markdown)) --------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> tuple[str, str]:
    esc = lambda v: html.escape(str(v))  # noqa: E731
    h = "<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in header) + "</tr></thead><tbody>"
    h += "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows) + "</tbody></table>"
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    md = "| " + " | ".join(cell(c) for c in header) + " |\n|" + "---|" * len(header) + "\n"
    md += "".join("| " + " | ".join(cell(c) for c in row) + " |\n" for row in rows)
    return h, md


def _figure(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _note(text: str) -> tuple[str, str]:
    return f'<p class="note">{html.escape(text)}</p>', f"{text}\n"


Section = tuple[str, str, str, str]  # (id, heading, html, markdown)


def _summary(before: Metrics, after: Metrics, before_acc: float | None, after_acc: float | None) -> Section:
    t = compare_table(before, after, before_acc=before_acc, after_acc=after_acc)
    header = [str(c.header) for c in t.columns]
    rows = list(zip(*[list(c.cells) for c in t.columns]))
    h, md = _table(header, rows)
    ratio = _note("ratio = before ÷ after (accuracy: change in percentage points). "
                  f"Sparsity of the prunable weights: {before.sparsity:.2%} → {after.sparsity:.2%}.")
    h, md = h + ratio[0], md + "\n" + ratio[1]
    if after.speed_note:
        n = _note(f"Speed: {after.speed_note}.")
        h, md = h + n[0], md + "\n" + n[1]
    return "summary", "Before and after", h, md


def _files(files: Mapping[str, int], before: Metrics) -> Section:
    rows = [(name, f"{size:,}", f"{size / 1024:.2f}") for name, size in sorted(files.items())]
    h, md = _table(["file", "bytes", "KiB"], rows)
    n = _note(f"As written to disk. For comparison, the model before pruning as safetensors: {before.size_bytes:,} bytes.")
    return "files", "Files written", h + n[0], md + "\n" + n[1]


def _energy(before: Metrics, after: Metrics) -> Section:
    rows = [
        ("compute (µJ)", f"{before.compute_uj:.4g}", f"{after.compute_uj:.4g}"),
        ("memory, dense storage (µJ)", f"{before.memory_uj:.4g}", f"{after.memory_uj:.4g}"),
        ("memory, nonzeros only (µJ)", f"{before.memory_uj_sparse_storage:.4g}", f"{after.memory_uj_sparse_storage:.4g}"),
        ("total (µJ)", f"{before.energy_uj:.4g}", f"{after.energy_uj:.4g}"),
    ]
    h, md = _table(["per inference, batch 1", "before", "after"], rows)
    text = ("An estimate, not a measurement: effective multiply-accumulates priced at 45 nm per-operation "
            "energies (Horowitz, ISSCC 2014), every weight read once from DRAM, layer inputs and outputs "
            "once from SRAM. 'Nonzeros only' stores just the nonzero prunable weights (index overhead ignored).")
    fig = _figure(plots.energy(before, after), "energy estimate before and after pruning",
                  "Estimated energy per inference: compute and memory, before and after pruning.")
    n = _note(text)
    return "energy", "Energy estimate", fig + h + n[0], md + "\n" + n[1]


def _layers(result: PruneResult) -> Section:
    names = [l.name for l in result.layers]
    fig = _figure(plots.layer_sparsity(names, [l.sparsity for l in result.layers]), "sparsity per layer",
                  "Fraction of each layer's weights that is zero after pruning.")
    h, md = _table(["layer", "shape", "units", "pruned units", "sparsity"],
                   [(l.name, "×".join(map(str, l.shape)), l.units, l.pruned_units, f"{l.sparsity:.2%}")
                    for l in result.layers])
    if result.groups is not None:
        gh, gmd = _table(["channel group", "channels", "removed"],
                         [(g.name, g.units, g.pruned_units) for g in result.groups])
        h, md = h + gh, md + "\n" + gmd
    keys = ("criterion", "granularity", "allocation", "sparsity", "threshold")
    cfg = ", ".join(f"{k}={result.config[k]}" for k in keys if result.config.get(k) is not None)
    n = _note(f"Pruned with {cfg}; sparsity over the pruned layers: {result.sparsity:.2%}." if cfg
              else f"Sparsity over the pruned layers: {result.sparsity:.2%}.")
    return "layers", "Sparsity per layer", fig + n[0] + h, n[1] + "\n" + md


def _sensitivity(report: SensitivityReport) -> Section:
    fig = _figure(plots.sensitivity_curves(report.baseline, report.curves), "sensitivity curves",
                  "Accuracy with one layer pruned alone, against that layer's sparsity; the dashed line is "
                  "the unpruned accuracy. A curve that falls early marks a layer to prune less.")
    sps = sorted({s for pts in report.curves.values() for s, _ in pts})
    rows = []
    for name, pts in report.curves.items():
        acc = dict(pts)
        rows.append([name, report.sizes.get(name, "")] + [_pct(acc[s]) if s in acc else "–" for s in sps])
    h, md = _table(["layer", "size"] + [f"{s:.0%}" for s in sps], rows)
    n = _note(f"Unpruned accuracy {_pct(report.baseline)}; criterion {report.criterion}, granularity "
              f"{report.granularity}. Most sensitive first: {', '.join(report.ranking()[:5])}.")
    return "sensitivity", "Sensitivity analysis", fig + n[0] + h, n[1] + "\n" + md


def _tradeoff(rows: list[dict[str, Any]], baseline: float | None, marker: tuple[float, float] | None) -> Section:
    fig = _figure(plots.tradeoff(rows, baseline, marker), "accuracy against sparsity",
                  "Accuracy against global sparsity, one line per method; dashed: unpruned accuracy.")
    size_key = next((k for k in SIZE_KEYS if any(k in r for r in rows)), None)
    header = ["method", "sparsity", "accuracy"] + ([size_key] if size_key else [])
    body = [[r["method"], f"{r['sparsity']:.2%}", _pct(float(r["accuracy"]))] + ([r.get(size_key, "–")] if size_key else [])
            for r in sorted(rows, key=lambda r: (r["method"], r["sparsity"]))]
    h, md = _table(header, body)
    return "tradeoff", "Accuracy–sparsity trade-off", fig + h, md


def _pareto(rows: list[dict[str, Any]], baseline: float | None) -> Section | None:
    size_key = next((k for k in SIZE_KEYS if any(k in r for r in rows)), None)
    if size_key is None:
        return None
    sized = [r for r in rows if size_key in r]
    front = plots.pareto_front([(float(r[size_key]), float(r["accuracy"])) for r in sized])
    fig = _figure(plots.pareto(sized, size_key, SIZE_KEYS[size_key], baseline), "accuracy against size",
                  "Each run's accuracy against its size; the step line joins the runs no other run beats "
                  "(smaller and at least as accurate, or as small and more accurate).")
    on_front = [r for r in sized if (float(r[size_key]), float(r["accuracy"])) in set(front)]
    h, md = _table(["method", "sparsity", SIZE_KEYS[size_key], "accuracy"],
                   [(r["method"], f"{r['sparsity']:.2%}", r[size_key], _pct(float(r["accuracy"]))) for r in on_front])
    n = _note(f"Pareto front ({len(on_front)} of {len(sized)} runs):")
    return "pareto", "Pareto front: accuracy against size", fig + n[0] + h, n[1] + "\n" + md


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
