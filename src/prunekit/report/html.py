"""One self-contained HTML report (plots embedded as base64 PNG) and a Markdown summary."""

from __future__ import annotations

import contextlib
import html
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..api import PruneResult
from ..errors import PruneError, PruneTypeError
from ..metrics import Metrics
from ..sensitivity import SensitivityReport
from . import sections as S
from .checks import check_mapping, check_path, check_stages, check_tradeoff
from .environment import environment
from .sections import SIZE_KEYS, Section

__all__ = ["ORDER", "SIZE_KEYS", "write_report"]

#: The order of the sections in a report (those without their input are left out).
ORDER = ("summary", "stages", "cost", "files", "usage", "layers", "energy", "sensitivity", "tradeoff", "pareto",
         "settings")

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child, table.kv th, table.kv td { text-align: left; }
figure { margin: 1rem 0; } img { max-width: 100%; } figcaption, .note { color: #555; font-size: 0.9rem; }
nav ul { columns: 2; font-size: 0.9rem; }
pre { background: #f5f5f5; border: 1px solid #ddd; padding: 0.6rem; overflow-x: auto; font-size: 0.85rem; }
"""


# -- the page and its Markdown twin ------------------------------------------------------------


def render(title: str, sections: Sequence[Section], html_name: str) -> tuple[str, str]:
    """The page and its Markdown twin, from a title and sections (shared by every report kind)."""
    t = html.escape(title)
    toc = "".join(f'<li><a href="#{sid}">{html.escape(head)}</a></li>' for sid, head, _, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{html.escape(head)}</h2>{h}</section>\n' for sid, head, h, _ in sections)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{t}</title>'
            f"<style>{_CSS}</style></head>\n<body><h1>{t}</h1><nav><ul>{toc}</ul></nav>\n{body}</body></html>\n")
    md = f"# {title}\n\nPlots: {html_name}\n\n" + "\n".join(f"## {head}\n\n{m}" for _, head, _, m in sections)
    return page, md


_SECTION = re.compile(r'<section id="([\w-]+)"><h2>(.*?)</h2>(.*?)</section>\n', re.DOTALL)


def _parse(path: Path) -> tuple[str, list[Section]]:
    """The title and sections of a report this module wrote (its ``.html`` and ``.md``)."""
    md_path = path.with_suffix(".md")
    try:
        page, md = path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")
    except OSError as e:
        raise PruneError(f"cannot read the report {str(path)!r} and its Markdown twin {md_path.name!r}: {e}") from e
    title = re.search(r"<title>(.*?)</title>", page, re.DOTALL)
    found = _SECTION.findall(page)
    if title is None or not found:
        raise PruneError(f"{str(path)!r} is not a report prunekit wrote (no <title> or no sections in it)")
    heads = [html.unescape(head) for _, head, _ in found]
    starts = []
    pos = 0
    for head in heads:
        i = md.find(f"## {head}\n\n", pos)
        if i < 0:
            raise PruneError(f"{str(md_path)!r} has no section {head!r}, which {path.name!r} has; write the report again")
        starts.append(i)
        pos = i + 1
    out: list[Section] = []
    for k, ((sid, _, body), head) in enumerate(zip(found, heads)):
        end = starts[k + 1] - 1 if k + 1 < len(starts) else len(md)
        out.append((sid, head, body, md[starts[k] + len(f"## {head}\n\n"):end]))
    return html.unescape(title.group(1)), out


def _ordered(sections: Sequence[Section]) -> list[Section]:
    rank = {sid: i for i, sid in enumerate(ORDER)}
    return sorted(sections, key=lambda s: rank.get(s[0], len(ORDER) - 1))  # unknown ids: before "settings"


def add_sections(path: str | os.PathLike, new: Sequence[Section]) -> Path:
    """Put ``new`` sections into a report written by :func:`write_report` (a section with
    the same id is replaced), in :data:`ORDER`, rewriting the HTML and the Markdown
    atomically. Used by :func:`prunekit.report.complete_run_report`."""
    p = check_path(path)
    title, old = _parse(p)
    ids = {s[0] for s in new}
    page, md = render(title, _ordered([s for s in old if s[0] not in ids] + list(new)), p.name)
    write_all({p: page, p.with_suffix(".md"): md})
    return p


# -- writing ---------------------------------------------------------------------------------


def write_all(files: dict[Path, str]) -> None:
    """Write every file to a temporary name in its folder, then rename each into place:
    an error before the renames leaves every existing file untouched."""
    from ..export import current_umask

    umask = current_umask()
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


def _cost_points(before: Metrics, after: Metrics, before_acc: float | None, after_acc: float | None,
                 rows: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The dense model, this model and the trade-off rows that carry a cost, for the
    accuracy-against-cost section."""
    def point(label: str, kind: str, acc: float, m: Metrics) -> dict[str, Any]:
        return {"label": label, "kind": kind, "accuracy": float(acc), "nonzero_params": m.nonzero_params,
                "macs": m.flops_effective / 2, "latency_ms_b1": m.latency_ms_b1}

    points = []
    if before_acc is not None:
        points.append(point("before pruning (dense)", "dense", before_acc, before))
    if after_acc is not None:
        points.append(point("this model", "model", after_acc, after))
    costs = [k for k, _ in S.COST_PANELS]
    for r in rows or []:
        if any(k in r for k in costs):
            points.append({"label": r["method"], "kind": "run", "accuracy": float(r["accuracy"]),
                           **{k: r.get(k) for k in costs}})
    return points


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
    stages: Sequence[Mapping[str, Any]] | None = None,
    settings: Mapping[str, Any] | None = None,
    machine: Mapping[str, str] | None = None,
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
            size (one of :data:`SIZE_KEYS`), the accuracy-against-size Pareto plot. Rows
            that carry ``nonzero_params``, ``macs`` or ``latency_ms_b1`` also join the
            accuracy-against-cost plot.
        before_acc: accuracy before pruning (drawn as the baseline, shown in the table).
        after_acc: accuracy after pruning (marked on the trade-off plot at the fraction of
            the original prunable weights that is gone, so a compacted model counts too).
            With ``before_acc``: the accuracy-against-cost section (nonzero parameters,
            effective MACs, and latency when both were timed), dense point included.
        title: the report's heading.
        files: ``{name: bytes}`` of the files the run wrote (the saved model's weights and
            spec): shown as they are on disk, beside the size of the model as safetensors.
        stages: rows ``{"stage", "accuracy"}`` (optionally ``"sparsity"``, ``"loss"``), in
            the order the stages ran; a first row whose stage starts with ``"start"`` is the
            model the run began with: adds the accuracy-per-stage plot.
        settings: ``{setting: value}`` the run used (a recipe's fields): shown in the
            "Settings and machine" section.
        machine: ``{what: text}`` describing where the report was made; ``None`` (the
            default) collects it now: date, versions, CPU, cores, threads, load average
            (see :func:`prunekit.report.environment`).

    Returns:
        The path of the HTML file.

    Example:
        >>> write_report("out/report.html", before=pk.measure(dense, x), after=pk.measure(model, x),
        ...              result=result, before_acc=0.97, after_acc=0.96)
    """
    p = check_path(path)
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
        if acc is not None and not S.real(acc):
            raise PruneError(f"{name}={acc!r} must be a finite number or None")
    if not isinstance(title, str):
        raise PruneTypeError(f"title must be a str, got {type(title).__name__}")
    if files is not None and (not isinstance(files, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in files.items())):
        raise PruneTypeError(f"files must map file names to sizes in bytes (non-negative ints), got {files!r}"[:300])
    rows = check_tradeoff(tradeoff) if tradeoff is not None else None
    stage_rows = check_stages(stages) if stages is not None else None
    config = check_mapping("settings", settings)
    env = check_mapping("machine", machine, str_values=True)

    baseline = before_acc if before_acc is not None else (sensitivity.baseline if sensitivity is not None else None)
    sections: list[Section | None] = [S.summary(before, after, before_acc, after_acc)]
    if stage_rows:
        sections.append(S.stages(stage_rows, before_acc))
    sections.append(S.cost(_cost_points(before, after, before_acc, after_acc, rows)))
    if files:
        sections.append(S.files(files, before))
    sections.append(S.energy(before, after))
    if result is not None:
        sections.append(S.layers(result))
    if sensitivity is not None and sensitivity.curves:
        sections.append(S.sensitivity(sensitivity))
    if rows is not None:
        # Weights removed relative to the model before pruning: right for compacted models too.
        removed = 1 - after.prunable_nonzero / before.prunable_params if before.prunable_params else after.sparsity
        marker = (removed, float(after_acc)) if after_acc is not None else None
        sections.append(S.tradeoff(rows, baseline, marker))
        sections.append(S.pareto(rows, baseline))
    sections.append(S.settings(config, env if env is not None else environment(), S.timing_note(after, before)))

    page, md = render(title, _ordered([s for s in sections if s is not None]), p.name)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_all({p: page, p.with_suffix(".md"): md})
    return p
