"""The report of a strategy search (:func:`prunekit.search.search`, ``prunekit search
--report DIR``): one self-contained HTML page and its Markdown twin.

Sections: the trade-off (every setting's cross-validated accuracy against its nonzero
parameters and its sparsity, the dense model and the chance floor drawn, the Pareto front
marked, and a table of the front); every setting in a table (the dense row first, then
best mean accuracy first, with Δ dense, nonzero parameters, effective MACs, runs and the
front mark); the settings of the search and the machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import PruneError, PruneTypeError
from . import plots_search
from . import sections as S
from .checks import check_mapping, check_path
from .environment import environment
from .html import render, write_all
from .sections import Section

__all__ = ["setting_columns", "write_search_report"]

_NEEDED = ("key", "setting", "accuracy_mean", "accuracy_std", "nonzero_params")


def _check_row(name: str, r: object) -> dict[str, Any]:
    if not isinstance(r, Mapping):
        raise PruneTypeError(f"{name} must be a dict (a row of SearchResult), got {r!r}"[:300])
    missing = [k for k in _NEEDED if k not in r]
    if missing:
        raise PruneError(f"{name} lacks {missing}: {dict(r)!r}"[:300])
    for k in ("accuracy_mean", "accuracy_std"):
        if not S.real(r[k]) or not 0 <= float(r[k]) <= 1:
            raise PruneError(f"{name}[{k!r}]={r[k]!r} is not a number in [0, 1]")
    if not S.real(r["nonzero_params"]) or float(r["nonzero_params"]) < 0:
        raise PruneError(f"{name}['nonzero_params']={r['nonzero_params']!r} is not a count")
    if not isinstance(r["setting"], Mapping):
        raise PruneError(f"{name}['setting']={r['setting']!r} is not a dict of option -> value"[:300])
    return dict(r)


def _check_result(result: object) -> dict[str, Any]:
    """``result`` as a dict: a :class:`prunekit.search.SearchResult` or its ``to_dict()``."""
    d = result.to_dict() if hasattr(result, "to_dict") and not isinstance(result, Mapping) else result
    if not isinstance(d, Mapping) or "rows" not in d:
        raise PruneTypeError(f"result must be a prunekit.search.SearchResult or its to_dict(), "
                             f"got {type(result).__name__}")
    rows = d["rows"]
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence) or not rows:
        raise PruneError(f"result['rows'] must be a non-empty list of settings, got {rows!r}"[:300])
    out = dict(d)
    out["rows"] = [_check_row(f"rows[{i}]", r) for i, r in enumerate(rows)]
    out["dense"] = None if d.get("dense") is None else _check_row("dense", d["dense"])
    keys = {r["key"] for r in out["rows"]}
    front = [p["key"] if isinstance(p, Mapping) else p for p in d.get("pareto") or []]
    unknown = [k for k in front if k not in keys]
    if unknown:
        raise PruneError(f"result['pareto'] names settings that are not in rows: {unknown}"[:300])
    out["pareto"] = front
    for k in ("chance", "floor"):
        if d.get(k) is not None and not S.real(d[k]):
            raise PruneError(f"result[{k!r}]={d[k]!r} is not a number")
    return out


def setting_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The searched options, as columns: ``criterion`` first, then the others sorted (the
    order of :meth:`prunekit.search.SearchResult.summary`)."""
    options = sorted({k for r in rows for k in r["setting"]})
    if "criterion" in options:
        options.remove("criterion")
        options.insert(0, "criterion")
    return options


def _sparsity(r: Mapping[str, Any]) -> float | None:
    v = r["setting"].get("sparsity")
    return float(v) if S.real(v) else None


def _macs(r: Mapping[str, Any]) -> str:
    return S.count(float(r["flops_effective"]) / 2) if S.real(r.get("flops_effective")) else "–"


def _mark(r: Mapping[str, Any], front: set[str], floor: float | None) -> str:
    if r["key"] in front:
        return "Pareto front"
    above = r.get("above_chance", floor is None or float(r["accuracy_mean"]) > floor)
    return "" if above else "at chance"


def _delta(r: Mapping[str, Any], dense: Mapping[str, Any] | None) -> str:
    if dense is None:
        return "–"
    return f"{100 * (float(r['accuracy_mean']) - float(dense['accuracy_mean'])):+.2f}"


def _acc(r: Mapping[str, Any]) -> str:
    return f"{float(r['accuracy_mean']):.2%} ± {100 * float(r['accuracy_std']):.2f}"


def _tradeoff(d: dict[str, Any]) -> Section:
    rows, dense, front, floor = d["rows"], d["dense"], set(d["pareto"]), d.get("floor")
    points = [{**r, "label": r["setting"].get("criterion", r["key"]),
               "sparsity": _sparsity(r)} for r in rows]
    panels = [("nonzero_params", "nonzero parameters")]
    if all(p["sparsity"] is not None for p in points):
        panels.append(("sparsity", "sparsity of the prunable weights (setting)"))
    dense_point = None if dense is None else {**dense, "sparsity": 0.0}
    fig = S.figure(plots_search.search_tradeoff(points, dense_point, front, panels, floor),
                   "cross-validated accuracy of every setting against nonzero parameters and sparsity",
                   "Every searched setting: mean accuracy on the held-out folds (whisker: ± one standard deviation "
                   "over folds and seeds) against its nonzero parameters and its sparsity; one colour per criterion, "
                   "the random and magnitude baselines hollow; criteria at the same cost are set slightly apart. Black step line and circles: the Pareto front. Grey "
                   "diamond and dashed line: the dense model, trained and evaluated the same way. Dotted: the chance "
                   "floor. Up and to the left is better.")
    on = sorted((r for r in rows if r["key"] in front), key=lambda r: float(r["nonzero_params"]))
    body = []
    for r in on:
        fewer = (f"{float(dense['nonzero_params']) / float(r['nonzero_params']):.1f}×"
                 if dense is not None and float(r["nonzero_params"]) > 0 else "–")
        body.append([r["key"], _acc(r), _delta(r, dense), f"{round(float(r['nonzero_params'])):,}", fewer])
    h, md = S.table(["setting", "accuracy (mean ± std, pt)", "Δ dense (pt)", "nonzero params",
                     "fewer than dense"], body)
    text = (f"Pareto front: {len(on)} of {len(rows)} settings, fewest parameters first; no other setting beats "
            "one of them on both accuracy (higher) and nonzero parameters (fewer).")
    if not on:
        text = "The Pareto front is empty: no setting is clearly above chance."
    if floor is not None and d.get("chance") is not None:
        text += (f" Only settings with a mean accuracy above {float(floor):.2%} (chance {float(d['chance']):.2%}, "
                 "always answering the most frequent class, plus the margin) can be on it.")
    n = S.note(text)
    if not on:
        h = md = ""
    return "tradeoff", "Trade-off: accuracy against parameters and sparsity", fig + n[0] + h, n[1] + "\n" + md


def _table(d: dict[str, Any]) -> Section:
    rows, dense, front, floor = d["rows"], d["dense"], set(d["pareto"]), d.get("floor")
    options = setting_columns(rows)
    body = []
    if dense is not None:
        cells = ["dense" if o == "criterion" else "–" for o in options]
        if "criterion" not in options and cells:
            cells[0] = "dense"
        body.append([*cells, _acc(dense), "–", f"{round(float(dense['nonzero_params'])):,}", _macs(dense),
                     dense.get("runs", "–"), "reference"])
    for r in rows:
        body.append([*(S.value_text(r["setting"].get(o)) for o in options), _acc(r), _delta(r, dense),
                     f"{round(float(r['nonzero_params'])):,}", _macs(r), r.get("runs", "–"), _mark(r, front, floor)])
    h, md = S.table([*options, "accuracy (mean ± std, pt)", "Δ dense (pt)", "nonzero params", "effective MACs",
                     "runs", "mark"], body)
    n = S.note("Best mean accuracy first. Accuracy: on the held-out fold, averaged over folds and seeds. Δ dense: the "
               "difference to the dense row in percentage points. Effective MACs count only the multiplications by "
               "nonzero weights (1 MAC = 2 FLOPs). 'at chance': not clearly above chance, so never on the front.")
    return "settings-table", "Every setting", h + n[0], md + "\n" + n[1]


def write_search_report(path: str | os.PathLike, result: Any, *, settings: Mapping[str, Any] | None = None,
                        machine: Mapping[str, str] | None = None, title: str = "prunekit search") -> Path:
    """Write ``path`` (HTML, self-contained) and the same name with ``.md`` for a search.
    Both files are written atomically; on a bad argument nothing is written. Needs
    matplotlib.

    Args:
        path: the HTML file (``.html`` or ``.htm``); its folder is created.
        result: the :class:`prunekit.search.SearchResult` :func:`prunekit.search.search`
            returned, or its ``to_dict()`` (``rows``, ``pareto``, ``dense``, ``chance``, ``floor``).
        settings: ``{setting: value}`` shown with the machine (model, data, grid, folds...).
        machine: ``{what: text}``; default: :func:`prunekit.report.environment` now.
        title: the page's heading.

    Returns:
        The path of the HTML file.

    Example:
        >>> res = search(ZooModel("lenet300100", {"in_features": 64}), train, {"sparsity": [0.5, 0.9]})
        >>> write_search_report("out/search/report.html", res, settings={"model": "lenet300100"})
    """
    p = check_path(path)
    d = _check_result(result)
    config = check_mapping("settings", settings)
    env = check_mapping("machine", machine, str_values=True)
    if not isinstance(title, str):
        raise PruneTypeError(f"title must be a str, got {type(title).__name__}")
    sections = [_tradeoff(d), _table(d),
                S.settings(config, env if env is not None else environment(),
                           "Latency was not timed: a search compares settings by accuracy and size only.")]
    page, md = render(title, sections, p.name)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_all({p: page, p.with_suffix(".md"): md})
    return p
