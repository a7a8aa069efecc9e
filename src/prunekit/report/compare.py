"""The report of a comparison (:func:`prunekit.compare.compare`, ``prunekit compare
--report DIR``): one self-contained HTML page and its Markdown twin.

Sections: the accuracy of every method (bars, mean ± std over seeds, dense dashed, and a
table with the difference to dense, sparsity, nonzero parameters, effective MACs, epochs
and time); the trade-off of accuracy against nonzero parameters and effective MACs, dense
point included; the settings and the machine; every run when there are several seeds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from ..errors import PruneError, PruneTypeError
from . import plots_compare
from . import sections as S
from .checks import check_mapping, check_path
from .environment import environment
from .html import render, write_all
from .sections import Section

__all__ = ["method_summary", "write_compare_report"]

_NEEDED = ("method", "accuracy", "sparsity")


def _check_rows(rows: object) -> list[dict[str, Any]]:
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
        raise PruneTypeError(f"rows must be a list of compare rows (prunekit.compare.Row or dict), "
                             f"got {type(rows).__name__}")
    out = []
    for i, r in enumerate(rows):
        d = asdict(r) if is_dataclass(r) and not isinstance(r, type) else r
        if not isinstance(d, Mapping):
            raise PruneTypeError(f"rows[{i}] must be a prunekit.compare.Row or a dict, got {r!r}"[:300])
        missing = [k for k in _NEEDED if k not in d]
        if missing:
            raise PruneError(f"rows[{i}] lacks {missing}: {dict(d)!r}"[:300])
        for k in ("accuracy", "sparsity"):
            if not S.real(d[k]) or not 0 <= float(d[k]) <= 1:
                raise PruneError(f"rows[{i}][{k!r}]={d[k]!r} is not a number in [0, 1]")
        out.append(dict(d))
    if not out:
        raise PruneError("rows=[] has no rows; run prunekit.compare.compare first")
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def method_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One dict per method, in the order the rows first name it: ``accuracy`` (mean),
    ``std`` (over seeds, 0 for one), ``seeds``, ``sparsity``, ``nonzero_params``,
    ``params``, ``macs`` (effective: FLOPs ÷ 2), ``seconds`` (means; None where a row
    lacks the value), ``epochs`` ("4+3")."""
    by: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by.setdefault(str(r["method"]), []).append(r)
    out = []
    for name, rs in by.items():
        accs = [float(r["accuracy"]) for r in rs]
        mean = _mean(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0

        def avg(key: str, scale: float = 1.0) -> float | None:
            vals = [r.get(key) for r in rs]
            return None if any(not S.real(v) for v in vals) else _mean([float(v) * scale for v in vals])

        first = rs[0]
        epochs = f"{first['train_epochs']}+{first['finetune_epochs']}" if "train_epochs" in first else \
            str(first.get("epochs", "–"))
        out.append({"method": name, "accuracy": mean, "std": std, "seeds": len(rs), "sparsity": avg("sparsity"),
                    "nonzero_params": avg("nonzero_params"), "params": avg("params"),
                    "macs": avg("flops_effective", 0.5), "seconds": avg("seconds"), "epochs": epochs})
    return out


def _int(v: float | None) -> str:
    return "–" if v is None else f"{round(v):,}"


def _methods(summary: list[dict[str, Any]], dense: dict[str, Any] | None, warnings: Sequence[str]) -> Section:
    fig = S.figure(plots_compare.method_accuracy([m["method"] for m in summary], [m["accuracy"] for m in summary],
                                                 [m["std"] for m in summary], dense["accuracy"] if dense else None),
                   "test accuracy of every method",
                   "Test accuracy of every method at the same epoch budget (mean over seeds; the whisker is one "
                   "standard deviation); grey: the dense model, trained the same way without pruning (dashed).")
    seeds = max(m["seeds"] for m in summary)
    body = []
    for m in summary:
        delta = "—" if dense is None or m is dense else f"{100 * (m['accuracy'] - dense['accuracy']):+.2f}"
        acc = f"{m['accuracy']:.2%}" + (f" ± {100 * m['std']:.2f}" if seeds > 1 else "")
        body.append([m["method"], acc, delta, "–" if m["sparsity"] is None else f"{m['sparsity']:.2%}",
                     _int(m["nonzero_params"]), "–" if m["macs"] is None else S.count(m["macs"]), m["epochs"],
                     "–" if m["seconds"] is None else f"{m['seconds']:.1f} s"])
    h, md = S.table(["method", "test accuracy" + (" (mean ± std, pt)" if seeds > 1 else ""), "Δ dense (pt)",
                     "sparsity", "nonzero params", "effective MACs", "epochs (train+fine-tune)", "time"], body)
    text = (f"{len(summary)} methods, {seeds} seed{'s' * (seeds != 1)} each; Δ dense: the difference to the "
            "dense row in percentage points. Time includes the shared dense training phase.")
    if warnings:
        text += " Warnings: " + " | ".join(warnings)
    n = S.note(text)
    return "methods", "Accuracy per method", fig + h + n[0], md + "\n" + n[1]


def _cost(summary: list[dict[str, Any]], dense: dict[str, Any] | None) -> Section | None:
    panels = [(k, lab) for k, lab in S.COST_PANELS[:2] if all(m[k] is not None for m in summary)]
    if not panels or len(summary) < 2:
        return None
    points = [{"label": m["method"], "dense": m is dense, "accuracy": m["accuracy"], **{k: m[k] for k, _ in panels}}
              for m in summary]
    fig = S.figure(plots_compare.cost_tradeoff(points, panels), "accuracy against nonzero parameters and MACs",
                   "Each method's test accuracy (mean over seeds) against what its model costs; grey diamond: the "
                   "dense model. Up and to the left is better. Methods pruned to the same sparsity share one cost, "
                   "so their labels are spread apart and joined to their points.")
    rows = []
    for m in summary:
        fewer = []
        for k, _ in panels:
            ratio = dense[k] / m[k] if dense is not None and m[k] else None
            fewer.append("–" if ratio is None or m is dense else f"{ratio:.1f}×")
        rows.append([m["method"], f"{m['accuracy']:.2%}", _int(m["nonzero_params"]) if "nonzero_params" in dict(panels)
                     else "–", S.count(m["macs"]) if m["macs"] is not None else "–", *fewer])
    h, md = S.table(["method", "test accuracy", "nonzero params", "effective MACs",
                     *[f"{lab}: fewer than dense" for _, lab in panels]], rows)
    n = S.note("Effective MACs count only the multiplications by nonzero weights (1 MAC = 2 FLOPs): what a sparse "
               "kernel could reach; a dense kernel still does every multiplication.")
    return "cost", "Trade-off: accuracy against parameters and MACs", fig + h + n[0], md + "\n" + n[1]


def _runs(rows: list[dict[str, Any]]) -> Section | None:
    if len({r.get("seed", 0) for r in rows}) < 2:
        return None
    h, md = S.table(["method", "seed", "test accuracy", "sparsity", "nonzero params", "time"],
                    [[r["method"], r.get("seed", "–"), f"{float(r['accuracy']):.2%}", f"{float(r['sparsity']):.2%}",
                      _int(r.get("nonzero_params")), f"{float(r['seconds']):.1f} s" if S.real(r.get("seconds")) else "–"]
                     for r in rows])
    return "runs", "Every run", h, md


def write_compare_report(path: str | os.PathLike, rows: Iterable[Any], *, settings: Mapping[str, Any] | None = None,
                         machine: Mapping[str, str] | None = None, warnings: Sequence[str] = (),
                         title: str = "prunekit compare") -> Path:
    """Write ``path`` (HTML, self-contained) and the same name with ``.md`` for the rows
    :func:`prunekit.compare.compare` returned. Both files are written atomically; on a bad
    argument nothing is written. Needs matplotlib.

    Args:
        path: the HTML file (``.html`` or ``.htm``); its folder is created.
        rows: :class:`prunekit.compare.Row` objects or their ``as_dict()`` (``method``,
            ``accuracy``, ``sparsity``, and for the trade-off ``nonzero_params`` and
            ``flops_effective``).
        settings: ``{setting: value}`` shown with the machine (model, data, budget...).
        machine: ``{what: text}``; default: :func:`prunekit.report.environment` now.
        warnings: lines to show under the table (schedules the budget reduced to one shot).
        title: the page's heading.

    Returns:
        The path of the HTML file.

    Example:
        >>> rows = compare(lambda: zoo.create("lenet300100", in_features=64), train, test, Recipe(0.9, epochs=4))
        >>> write_compare_report("out/compare/report.html", rows, settings={"model": "lenet300100"})
    """
    p = check_path(path)
    checked = _check_rows(rows)
    config = check_mapping("settings", settings)
    env = check_mapping("machine", machine, str_values=True)
    if isinstance(warnings, str) or not all(isinstance(w, str) for w in warnings):
        raise PruneTypeError(f"warnings must be a list of str, got {warnings!r}"[:300])
    if not isinstance(title, str):
        raise PruneTypeError(f"title must be a str, got {type(title).__name__}")
    summary = method_summary(checked)
    dense = next((m for m in summary if m["method"] == "dense"), None)
    sections = [_methods(summary, dense, warnings), _cost(summary, dense),
                S.settings(config, env if env is not None else environment(), "Latency was not timed: "
                           "the time column is the wall time of each method's training, on this machine."),
                _runs(checked)]
    page, md = render(title, [s for s in sections if s is not None], p.name)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_all({p: page, p.with_suffix(".md"): md})
    return p
