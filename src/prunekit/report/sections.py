"""The report's sections. Each builder returns ``(id, heading, html, markdown)``: the HTML
with its plots embedded as base64 PNG, the Markdown with the same tables and no plots.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from ..api import PruneResult
from ..errors import PruneError
from ..metrics import Metrics, compare_table, speedup
from ..sensitivity import SensitivityReport
from . import plots, plots_run

Section = tuple[str, str, str, str]  # (id, heading, html, markdown)

#: Keys a trade-off row may carry for the Pareto plot (first one present wins), with the
#: axis label each gets.
SIZE_KEYS: dict[str, str] = {
    "size_bytes": "size as safetensors (bytes)",
    "nonzero_params": "nonzero parameters",
    "params": "parameters",
    "size": "size",
}

#: Costs the trade-off section plots accuracy against: ``(key, axis label)``. A row of
#: ``tradeoff`` may carry any of them; the dense model and this one always have the first two.
COST_PANELS: tuple[tuple[str, str], ...] = (
    ("nonzero_params", "nonzero parameters"),
    ("macs", "effective MACs per input"),
    ("latency_ms_b1", "latency, batch 1 (ms)"),
)

#: Before and after must differ by this factor for the energy plot to be drawn.
ENERGY_PLOT_RATIO = 1.1


def pct(a: float) -> str:
    return f"{a:.2%}" if 0 <= a <= 1 else f"{a:.4g}"


def real(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(float(value))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str | None = None) -> tuple[str, str]:
    """An HTML table and the same as Markdown; ``cls="kv"`` aligns every column left."""
    esc = lambda v: html.escape(str(v))  # noqa: E731
    h = (f'<table class="{cls}">' if cls else "<table>") + "<thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in header) + "</tr></thead><tbody>"
    h += "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows) + "</tbody></table>"
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    md = "| " + " | ".join(cell(c) for c in header) + " |\n|" + "---|" * len(header) + "\n"
    md += "".join("| " + " | ".join(cell(c) for c in row) + " |\n" for row in rows)
    return h, md


def figure(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def note(text: str) -> tuple[str, str]:
    return f'<p class="note">{html.escape(text)}</p>', f"{text}\n"


def count(v: float) -> str:
    """A count shortened with k, M or G (``1.23M``)."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f}{unit}"
    return f"{v:,.0f}"


def summary(before: Metrics, after: Metrics, before_acc: float | None, after_acc: float | None) -> Section:
    t = compare_table(before, after, before_acc=before_acc, after_acc=after_acc)
    header = [str(c.header) for c in t.columns]
    rows = list(zip(*[list(c.cells) for c in t.columns]))
    h, md = table(header, rows)
    ratio = note("ratio = before ÷ after (accuracy: change in percentage points). "
                 f"Sparsity of the prunable weights: {before.sparsity:.2%} → {after.sparsity:.2%}.")
    h, md = h + ratio[0], md + "\n" + ratio[1]
    if after.speed_note:
        n = note(f"Speed: {after.speed_note}.")
        h, md = h + n[0], md + "\n" + n[1]
    return "summary", "Before and after", h, md


def stages(rows: Sequence[Mapping[str, Any]], baseline: float | None) -> Section:
    """Accuracy after every stage of a run (a row whose stage starts with ``"start"``, e.g.
    ``"start (untrained)"``, is the model the run began with and gets no number)."""
    labels, body, pruned = [], [], []
    n = 0
    prev: float | None = None
    for i, r in enumerate(rows):
        name = str(r["stage"])
        start = name.split(" ")[0] == "start"
        if not start:
            n += 1
        label = name if start else f"{n}. {name}"
        details = []
        if r.get("sparsity") is not None:
            details.append(f"sparsity {float(r['sparsity']):.2%}")
        if r.get("loss") is not None:
            details.append(f"last training loss {float(r['loss']):.4g}")
        if name == "prune":
            pruned.append(i)
            if r.get("sparsity") is not None:
                label += f"\n{float(r['sparsity']):.0%}"
        acc = float(r["accuracy"])
        change = "–" if prev is None else (f"{(acc - prev) * 100:+.2f} pt" if 0 <= acc <= 1 else f"{acc - prev:+.4g}")
        body.append((label.split("\n")[0], pct(acc), change, ", ".join(details) or "–"))
        labels.append(label)
        prev = acc
    accs = [float(r["accuracy"]) for r in rows]
    fig = figure(plots_run.stage_accuracy(labels, accs, pruned=pruned, baseline=baseline), "accuracy after each stage",
                 "Test accuracy after each stage, in the order the stages ran; shaded: the stages that pruned; "
                 "dashed: the accuracy of the model before pruning.")
    h, md = table(["stage", "accuracy", "change", "details"], body)
    return "stages", "Accuracy per stage", fig + h, md


def cost(points: Sequence[Mapping[str, Any]]) -> Section | None:
    """Accuracy against nonzero parameters, effective MACs and (when timed) latency: the
    dense point, this model and any trade-off rows; None with fewer than two points."""
    panels = [(k, lab) for k, lab in COST_PANELS if sum(p.get(k) is not None for p in points) >= 2]
    if len(points) < 2 or not panels:
        return None
    runs = ", lines: the trade-off runs given" if any(p["kind"] not in ("dense", "model") for p in points) else ""
    fig = figure(plots_run.cost_tradeoff(points, panels), "accuracy against parameters and compute",
                 f"Accuracy against what the model costs; grey dot: the model before pruning, red star: this "
                 f"model{runs}. Up and to the left is better.")
    fmt = {"nonzero_params": lambda v: f"{int(v):,}", "macs": count, "latency_ms_b1": lambda v: f"{v:.3f} ms"}
    h, md = table(["model", "accuracy"] + [lab for _, lab in panels],
                  [[p["label"], pct(float(p["accuracy"]))] + ["–" if p.get(k) is None else fmt[k](float(p[k]))
                                                              for k, _ in panels] for p in points])
    n = note("Effective MACs count only the multiplications by nonzero weights (1 MAC = 2 FLOPs): what a "
             "sparse kernel could reach. Dense kernels still do every multiplication unless whole channels "
             "were removed (compacted); see the speed note above.")
    return "cost", "Trade-off: accuracy against size and compute", fig + h + n[0], md + "\n" + n[1]


def files(sizes: Mapping[str, int], before: Metrics) -> Section:
    rows = [(name, f"{size:,}", f"{size / 1024:.2f}") for name, size in sorted(sizes.items())]
    h, md = table(["file", "bytes", "KiB"], rows)
    n = note(f"As written to disk. For comparison, the model before pruning as safetensors: {before.size_bytes:,} bytes.")
    return "files", "Files written", h + n[0], md + "\n" + n[1]


def energy(before: Metrics, after: Metrics) -> Section:
    def ratio(b: float, a: float) -> str:
        return f"{b / a:.1f}×" if a > 0 else "–"

    rows = [
        ("compute (µJ)", f"{before.compute_uj:.4g}", f"{after.compute_uj:.4g}", ratio(before.compute_uj, after.compute_uj)),
        ("memory, dense storage (µJ)", f"{before.memory_uj:.4g}", f"{after.memory_uj:.4g}",
         ratio(before.memory_uj, after.memory_uj)),
        ("memory, nonzeros only (µJ)", f"{before.memory_uj_sparse_storage:.4g}",
         f"{after.memory_uj_sparse_storage:.4g}",
         ratio(before.memory_uj_sparse_storage, after.memory_uj_sparse_storage)),
        ("total (µJ)", f"{before.energy_uj:.4g}", f"{after.energy_uj:.4g}", ratio(before.energy_uj, after.energy_uj)),
    ]
    h, md = table(["per inference, batch 1", "before", "after", "before ÷ after"], rows)
    text = ("An estimate, not a measurement: effective multiply-accumulates priced at 45 nm per-operation "
            "energies (Horowitz, ISSCC 2014), every weight read once from DRAM, layer inputs and outputs "
            "once from SRAM. 'Nonzeros only' stores just the nonzero prunable weights (index overhead ignored).")
    total_ratio = before.energy_uj / after.energy_uj if after.energy_uj > 0 else math.inf
    if total_ratio >= ENERGY_PLOT_RATIO or total_ratio <= 1 / ENERGY_PLOT_RATIO:
        fig = figure(plots.energy(before, after), "energy estimate before and after pruning",
                     "Estimated energy per inference: compute and memory, before and after pruning.")
        n = note(text)
        return "energy", "Energy estimate", h + fig + n[0], md + "\n" + n[1]
    n = note(text + f" No plot: the totals before and after differ by less than {ENERGY_PLOT_RATIO - 1:.0%}, "
             "because reading the weights dominates and zeros stored densely are still read.")
    return "energy", "Energy estimate", h + n[0], md + "\n" + n[1]


def layers(result: PruneResult) -> Section:
    names = [l.name for l in result.layers]
    fig = figure(plots.layer_sparsity(names, [l.sparsity for l in result.layers]), "sparsity per layer",
                 "Fraction of each layer's weights that is zero after pruning.")
    h, md = table(["layer", "shape", "units", "pruned units", "sparsity"],
                  [(l.name, "×".join(map(str, l.shape)), l.units, l.pruned_units, f"{l.sparsity:.2%}")
                   for l in result.layers])
    if result.groups is not None:
        gh, gmd = table(["channel group", "units", "removed units", "output channels", "removed channels"],
                        [(g.name, g.units, g.pruned_units, g.channels, g.pruned_channels) for g in result.groups])
        h, md = h + gh, md + "\n" + gmd
    keys = ("criterion", "granularity", "allocation", "sparsity", "threshold")
    cfg = ", ".join(f"{k}={result.config[k]}" for k in keys if result.config.get(k) is not None)
    done = (f"coupled units removed: {result.sparsity:.2%}; zeros over the pruned layers' weights: "
            f"{result.weight_sparsity:.2%}" if result.groups is not None
            else f"sparsity over the pruned layers: {result.sparsity:.2%}")
    n = note(f"Pruned with {cfg}; {done}." if cfg else f"{done[0].upper()}{done[1:]}.")
    return "layers", "Sparsity per layer", fig + n[0] + h, n[1] + "\n" + md


def sensitivity(report: SensitivityReport) -> Section:
    fig = figure(plots.sensitivity_curves(report.baseline, report.curves), "sensitivity curves",
                 "Accuracy with one layer pruned alone, against that layer's sparsity; the dashed line is "
                 "the unpruned accuracy. A curve that falls early marks a layer to prune less.")
    sps = sorted({s for pts in report.curves.values() for s, _ in pts})
    rows = []
    for name, pts in report.curves.items():
        acc = dict(pts)
        rows.append([name, report.sizes.get(name, "")] + [pct(acc[s]) if s in acc else "–" for s in sps])
    h, md = table(["layer", "size"] + [f"{s:.0%}" for s in sps], rows)
    n = note(f"Unpruned accuracy {pct(report.baseline)}; criterion {report.criterion}, granularity "
             f"{report.granularity}. Most sensitive first: {', '.join(report.ranking()[:5])}.")
    return "sensitivity", "Sensitivity analysis", fig + n[0] + h, n[1] + "\n" + md


def tradeoff(rows: list[dict[str, Any]], baseline: float | None, marker: tuple[float, float] | None) -> Section:
    fig = figure(plots.tradeoff(rows, baseline, marker), "accuracy against sparsity",
                 "Accuracy against global sparsity, one line per method; dashed: unpruned accuracy.")
    size_key = next((k for k in SIZE_KEYS if any(k in r for r in rows)), None)
    header = ["method", "sparsity", "accuracy"] + ([size_key] if size_key else [])
    body = [[r["method"], f"{r['sparsity']:.2%}", pct(float(r["accuracy"]))] + ([r.get(size_key, "–")] if size_key else [])
            for r in sorted(rows, key=lambda r: (r["method"], r["sparsity"]))]
    h, md = table(header, body)
    return "tradeoff", "Accuracy–sparsity trade-off", fig + h, md


def pareto(rows: list[dict[str, Any]], baseline: float | None) -> Section | None:
    size_key = next((k for k in SIZE_KEYS if any(k in r for r in rows)), None)
    if size_key is None:
        return None
    sized = [r for r in rows if size_key in r]
    front = set(plots.pareto_front([(float(r[size_key]), float(r["accuracy"])) for r in sized]))
    fig = figure(plots.pareto(sized, size_key, SIZE_KEYS[size_key], baseline), "accuracy against size",
                 "Each run's accuracy against its size; the step line joins the runs no other run beats "
                 "(smaller and at least as accurate, or as small and more accurate).")
    on_front = [r for r in sized if (float(r[size_key]), float(r["accuracy"])) in front]
    h, md = table(["method", "sparsity", SIZE_KEYS[size_key], "accuracy"],
                  [(r["method"], f"{r['sparsity']:.2%}", r[size_key], pct(float(r["accuracy"]))) for r in on_front])
    n = note(f"Pareto front ({len(on_front)} of {len(sized)} runs):")
    return "pareto", "Pareto front: accuracy against size", fig + n[0] + h, n[1] + "\n" + md


def value_text(v: Any) -> str:
    """A setting's value as short text: mappings as ``k=v, ...``, lists comma-separated."""
    if isinstance(v, Mapping):
        inner = ", ".join(f"{k}={value_text(x) if not isinstance(x, Mapping) else '{' + value_text(x) + '}'}"
                          for k, x in v.items() if x is not None and x != [] and x != {})
        return inner or "–"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value_text(x) for x in v) + "]"
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def timing_note(after: Metrics, before: Metrics | None = None) -> str:
    """How the latency in the summary was timed (threads, load, cores, runtime), or that it
    was not; with ``before``, the measured speedup ÷ MAC reduction."""
    if after.latency_ms_b1 is None:
        return "Latency was not timed for this report (the summary shows –)."
    load = "an unknown load" if after.loadavg is None else f"load {after.loadavg:.2f}"
    runtime = getattr(after, "runtime", "eager")
    text = f"Latency was timed in {runtime} with {after.threads} torch threads at {load} on {after.cores} cores."
    if before is not None:
        try:
            s = speedup(before, after)
        except PruneError as e:  # timed in another runtime or thread count: no ratio
            return f"{text} No speedup: {e}."
        if s is not None:
            text += f" Speedup ÷ MAC reduction: {s.text()}."
    return text


def settings(config: Mapping[str, Any] | None, machine: Mapping[str, str], timing: str) -> Section:
    parts_h, parts_md = "", ""
    if config:
        h, md = table(["setting", "value"], [(k, value_text(v)) for k, v in config.items()], "kv")
        parts_h, parts_md = h, md + "\n"
    h, md = table(["machine", "value"], list(machine.items()), "kv")
    n = note(timing)
    return "settings", "Settings and machine", parts_h + h + n[0], parts_md + md + "\n" + n[1]


def usage(code: str, shell: str | None = None, text: str | None = None) -> Section:
    """How to use what the run saved: a Python snippet that runs as written from the
    report's folder, and the equivalent commands."""
    h = md = ""
    if text:
        h, md = note(text)
        md += "\n"
    h += f'<pre><code class="language-python">{html.escape(code)}</code></pre>'
    md += f"```python\n{code.rstrip()}\n```\n"
    if shell:
        h += f'<pre><code class="language-bash">{html.escape(shell)}</code></pre>'
        md += f"\n```bash\n{shell.rstrip()}\n```\n"
    return "usage", "Use the saved model", h, md
