"""The curves of a sensitivity analysis, and the allocation that spends a budget by them.

Part of :mod:`prunekit.sensitivity` (which re-exports these names; import them from there).
:class:`SensitivityReport` holds one accuracy-vs-sparsity curve per layer, as
:func:`prunekit.sensitivity.sensitivity` measures them; :class:`SensitivityAllocation`
turns the curves into per-layer sparsities that meet a global target: starting from nothing
pruned, it repeatedly raises the sparsity of the layer whose (interpolated) accuracy loss
per removed parameter, or per removed FLOP, is smallest, until the budget is met, then
removes each layer's lowest-scoring units.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

import torch

from .allocation import Allocation, Layer, protected_scores, prune_lowest
from .errors import PruneError, PruneTypeError
from .validate import choice, integer

__all__ = ["BUDGETS", "SensitivityAllocation", "SensitivityReport"]

BUDGETS = ("params", "flops", "latency")


@dataclass
class SensitivityReport:
    """What :func:`prunekit.sensitivity.sensitivity` returns.

    Attributes:
        baseline: accuracy of the unpruned model.
        curves: ``{layer: [(sparsity, accuracy), ...]}`` with that layer alone pruned, in
            increasing sparsity. Layers are weight names (``"net.0.weight"``), or coupled
            channel group names with ``granularity="channel"``/``"head"``.
        sizes: what each layer's sparsity counts: weights, or channels (heads) of a group.
        criterion: the criterion's name.
        granularity: the granularity pruned.
        flops: FLOPs removed per unit of a layer's sparsity (measured at the largest
            sparsity; a first-order estimate); ``None`` when no ``example_inputs`` were given.
        flops_modules: for each layer, the FLOPs (at batch 1, weight density included) of
            every module whose weights it thins, so that a FLOPs budget counts a module
            shared by two layers (a conv's output and input channels) once.
    """

    baseline: float
    curves: dict[str, list[tuple[float, float]]]
    sizes: dict[str, int]
    criterion: str
    granularity: str
    flops: dict[str, float] | None = None
    flops_modules: dict[str, dict[str, float]] | None = None

    def accuracy(self, layer: str, sparsity: float) -> float:
        """Accuracy with ``layer`` alone at ``sparsity``, linearly interpolated between the
        measured points (the baseline at 0, the last measurement beyond the last point)."""
        if layer not in self.curves:
            raise PruneError(f"no curve for layer {layer!r}; layers: {sorted(self.curves)}")
        return _interp([(0.0, self.baseline)] + [p for p in self.curves[layer] if p[0] > 0], sparsity)

    def ranking(self) -> list[str]:
        """Layers from most to least sensitive, by the mean accuracy drop over the measured
        sparsities (ties keep model order)."""
        def mean_drop(name: str) -> float:
            return sum(self.baseline - a for _, a in self.curves[name]) / max(1, len(self.curves[name]))

        return sorted(self.curves, key=mean_drop, reverse=True)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable copy (curves as lists of ``[sparsity, accuracy]``)."""
        d = asdict(self)
        d["curves"] = {k: [list(p) for p in v] for k, v in self.curves.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SensitivityReport:
        """Inverse of :meth:`to_dict` (e.g. after ``json.load``)."""
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in d]
        if missing:
            raise PruneError(f"a sensitivity report dict needs {missing}; got keys {sorted(d)}")
        kwargs = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kwargs["curves"] = {k: [(float(s), float(a)) for s, a in v] for k, v in d["curves"].items()}
        return cls(**kwargs)

    def summary(self) -> str:
        """A plain-text table: one row per layer, accuracy at each measured sparsity."""
        sps = sorted({s for pts in self.curves.values() for s, _ in pts})
        width = max([len(n) for n in self.curves] + [5])
        head = f"{'layer':<{width}}  {'size':>8} " + " ".join(f"{s:>7.0%}" for s in sps)
        lines = [head]
        for name, pts in self.curves.items():
            acc = dict(pts)
            cells = " ".join(f"{_pct(acc[s]):>7}" if s in acc else f"{'-':>7}" for s in sps)
            lines.append(f"{name:<{width}}  {self.sizes.get(name, 0):>8} {cells}")
        lines.append(f"baseline accuracy {_pct(self.baseline)} ({self.criterion}, {self.granularity})")
        if self.curves:
            lines.append(f"most sensitive: {self.ranking()[0]}")
        return "\n".join(lines)


def _pct(a: float) -> str:
    return f"{a:.2%}" if 0 <= a <= 1 else f"{a:.4g}"


def _hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower convex hull of points sorted by x (collinear points dropped)."""
    out: list[tuple[float, float]] = []
    for p in points:
        while len(out) >= 2:
            (x1, y1), (x2, y2) = out[-2], out[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:
                out.pop()
            else:
                break
        out.append(p)
    return out


def _interp(points: list[tuple[float, float]], x: float) -> float:
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1] if x > points[-1][0] else points[0][1]


class SensitivityAllocation(Allocation):
    """Per-layer sparsities from a :class:`SensitivityReport`, meeting the global target.

    Each layer's accuracy-drop curve (baseline at 0, the report's points, made
    non-decreasing, extended to a total loss of the baseline at sparsity 1) is replaced by
    its lower convex hull; pieces of all hulls are then taken cheapest first (accuracy drop
    per removed parameter, or per removed FLOP) until the budget is met, the last one
    partially. Within a layer, the lowest-scoring units go, as with every allocation.

    Args:
        report: from :func:`prunekit.sensitivity.sensitivity`, on the same model and granularity that is pruned.
        budget: ``"params"``: ``sparsity`` is the fraction of the pruned layers' weights
            (channels, for coupled channel pruning) removed, as for every allocation;
            ``"flops"``: the fraction removed of the FLOPs of the modules these layers thin
            (needs a report made with ``example_inputs``). Each layer is assumed to remove
            FLOPs in proportion to its sparsity (exact for unstructured pruning; for
            coupled channels, where one conv loses output and input channels, a
            first-order estimate that overcounts slightly). Layers whose FLOPs were not
            counted keep their current sparsity under a FLOPs budget.
            ``"latency"``: the fraction removed of the model's latency in ``runtime`` at
            ``batch_size``, as its latency tables predict it (:mod:`prunekit.latency`;
            needs ``granularity="channel"`` with ``example_inputs=``): each group's cost is
            the milliseconds it saves when pruned to one unit, first order.
        runtime: with ``budget="latency"``: ``"eager"``, ``"torchscript"``, ``"compile"``
            or ``"onnxruntime"``.
        batch_size: with ``budget="latency"``: the batch the latency is for.

    Not registered by name: it needs a report. Pass an instance,
    ``pk.prune(model, 0.8, allocation=SensitivityAllocation(report))``.
    """

    name = "sensitivity"
    supports_threshold = False

    def __init__(self, report: SensitivityReport, budget: str = "params", *, runtime: str = "eager",
                 batch_size: int = 64) -> None:
        if not isinstance(report, SensitivityReport):
            raise PruneTypeError(
                f"report must be a SensitivityReport (from prunekit.sensitivity.sensitivity), got {type(report).__name__}"
            )
        choice("budget", budget, BUDGETS)
        if budget == "flops" and report.flops is None:
            raise PruneError("budget='flops' needs FLOPs per layer: run sensitivity(..., example_inputs=x)")
        from .metrics_timing import RUNTIMES

        self.report = report
        self.budget = budget
        self.runtime = choice("runtime", runtime, RUNTIMES)
        self.batch_size = integer("batch_size", batch_size, minimum=1)
        self._latency: dict[str, float] | None = None
        self._latency_total = 0.0

    @property
    def needs_latency(self) -> bool:
        """Whether pruning must bind per-group latencies (``budget="latency"``)."""
        return self.budget == "latency"

    def bind_latency(self, saved_ms: dict[str, float], total_ms: float) -> None:
        """Per-group milliseconds saved when the group is pruned to one unit, and the
        model's predicted latency (set by the coupled channel path before it allocates)."""
        self._latency, self._latency_total = dict(saved_ms), float(total_ms)

    def check_granularity(self, granularity: str) -> None:
        """Refuse pruning at another granularity than the report's curves were measured at
        (curves of single weights say little about 4x4 blocks or whole channels)."""
        measured = self.report.granularity
        if granularity != measured:
            shown = "an N:M pattern" if granularity == "nm" else repr(granularity)
            raise PruneError(
                f"the sensitivity report was measured with granularity={measured!r}, and this pruning uses "
                f"{shown}: run sensitivity(model, ..., granularity=...) with the granularity you prune with"
            )

    def get_config(self) -> dict[str, Any]:
        return {"budget": self.budget, "layers": len(self.report.curves), "criterion": self.report.criterion,
                "granularity": self.report.granularity}

    def __repr__(self) -> str:
        return f"SensitivityAllocation(budget={self.budget!r}, layers={len(self.report.curves)})"

    def _cost(self, layer: Layer) -> float:
        if self.budget == "params":
            return float(layer.numel)
        if self.budget == "latency":
            return float(self._latency_or_fail().get(layer.name, 0.0))
        return float((self.report.flops or {}).get(layer.name, 0.0))

    def _latency_or_fail(self) -> dict[str, float]:
        if self._latency is None:
            raise PruneError("budget='latency' needs the model's latency tables: prune with granularity='channel' "
                             "and example_inputs=")
        return self._latency

    def sparsities(self, layers: list[Layer], sparsity: float, min_keep: int = 1) -> dict[str, float]:
        """Fraction of each layer to remove (of its weights; of its channels for coupled
        groups), continuous, before rounding to whole units."""
        missing = [l.name for l in layers if l.name not in self.report.curves]
        if missing:
            covered = sorted(self.report.curves)
            raise PruneError(
                f"the sensitivity report has no curve for {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                f"it covers {covered[:5]}{' ...' if len(covered) > 5 else ''}: run sensitivity() on the same "
                "model, granularity and ignore= as the pruning"
            )
        base = self.report.baseline
        lo: dict[str, float] = {}
        frac: dict[str, float] = {}
        pieces: list[tuple[float, int, int, str, float, float, float]] = []
        for li, l in enumerate(layers):
            sizes = l.sizes().double()
            n = float(l.numel) or 1.0
            lo_i = float(sizes[l.scores == float("-inf")].sum()) / n
            hi_i = max(lo_i, 1.0 - float(sizes[protected_scores(l, l.scores, min_keep) == float("inf")].sum()) / n)
            lo[l.name] = frac[l.name] = lo_i
            drops = [(0.0, 0.0)] + [(s, base - a) for s, a in self.report.curves[l.name] if 0 < s < 1]
            drops.append((1.0, max(base, drops[-1][1])))
            mono, top = [], -math.inf
            for s, d in drops:
                top = max(top, d)
                mono.append((s, top))
            inside = [(lo_i, _interp(mono, lo_i))] + [p for p in mono if lo_i < p[0] < hi_i]
            inside.append((hi_i, _interp(mono, hi_i)))
            cost = self._cost(l)
            if cost <= 0 or hi_i <= lo_i:
                continue
            hull = _hull(inside)
            for si, ((s0, d0), (s1, d1)) in enumerate(zip(hull, hull[1:])):
                pieces.append(((d1 - d0) / ((s1 - s0) * cost), li, si, l.name, s0, s1, cost))
        if self.budget == "flops":
            shared: dict[str, float] = {}
            for l in layers:
                shared.update((self.report.flops_modules or {}).get(l.name, {}))
            total = sum(shared.values())
        elif self.budget == "latency":
            self._latency_or_fail()
            total = self._latency_total
        else:
            total = float(sum(l.numel for l in layers))
        need = sparsity * total - sum(lo[l.name] * self._cost(l) for l in layers)
        for _, _, _, name, s0, s1, cost in sorted(pieces):
            if need <= 0:
                break
            step = min(s1 - s0, need / cost)
            frac[name] = s0 + step
            need -= step * cost
        return frac

    def select(self, layers: list[Layer], sparsity: float, min_keep: int = 1) -> dict[str, torch.Tensor]:
        frac = self.sparsities(layers, sparsity, min_keep)
        budgets = {l.name: frac[l.name] * l.numel for l in layers}
        if self.budget == "params" and all(isinstance(l.size, int) and l.size > 0 for l in layers):
            # Whole units per layer, remainders handed out so the total meets the target.
            units = {l.name: math.floor(budgets[l.name] / l.size + 1e-9) for l in layers}
            caps = {l.name: int(torch.count_nonzero(protected_scores(l, l.scores, min_keep) < float("inf"))) for l in layers}
            rem = sparsity * sum(l.numel for l in layers) - sum(units[l.name] * l.size for l in layers)
            order = sorted(layers, key=lambda l: units[l.name] - budgets[l.name] / l.size)
            for l in order:
                if rem >= l.size / 2 and units[l.name] < caps[l.name]:
                    units[l.name] += 1
                    rem -= l.size
            budgets = {l.name: float(units[l.name] * l.size) for l in layers}
        return {
            l.name: prune_lowest(protected_scores(l, l.scores, min_keep), l.sizes(), budgets[l.name]) for l in layers
        }
