"""What a channel configuration of one model costs: predicted milliseconds (or MACs).

:class:`CostModel` maps the kept units of every coupled group (:mod:`prunekit.graph`) to
the widths of each Linear/Conv layer they feed or produce, prices each layer from a
:class:`~prunekit.latency.tables.LatencyTable` and adds what the tables do not see
(activations, pooling, norms, additions, layers no table stands for, fusion): one term
per group, linear in the fraction of it removed, fitted to whole-model measurements (the
dense model, and each group alone at half its width), after the tables are scaled to the
machine's speed now (:meth:`CostModel.rescale`). With no table it counts
multiply-accumulates instead (``objective="flops"``).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, TYPE_CHECKING

import torch
from torch import nn

from ..graph.channels import tensors_in
from .tables import LatencyTable, LayerSpec, spec_of

if TYPE_CHECKING:
    from ..graph.groups import Structure

__all__ = ["CostModel", "LayerCost"]


@dataclass
class LayerCost:
    """One Linear/Conv layer: its spec and which groups set its input and output widths."""

    name: str
    spec: LayerSpec
    ins: list[tuple[int, float]] = field(default_factory=list)  # (group index, indices per unit)
    outs: list[tuple[int, float]] = field(default_factory=list)
    scale: float = 1.0  # the machine's speed now against the table's figures (CostModel.rescale)

    def widths(self, removed: list[int]) -> tuple[float, float]:
        cout = self.spec.n_out - sum(removed[g] * m for g, m in self.outs)
        cin = cout if self.spec.depthwise else self.spec.n_in - sum(removed[g] * m for g, m in self.ins)
        return max(0.0, cin), max(0.0, cout)


def _shapes(model: nn.Module, probe: Any) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Input shapes of every Linear/Conv module on ``probe``, and the model's heads: the
    modules whose output is one of the model's outputs as it stands, else the last to run."""
    ins: dict[str, tuple[int, ...]] = {}
    produced: dict[str, weakref.ref] = {}  # weak: no layer's activations kept alive for this
    last: list[str] = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            def hook(mod, args, out, name=name):
                if args and isinstance(args[0], torch.Tensor) and name not in ins:
                    ins[name] = tuple(args[0].shape)
                if isinstance(out, torch.Tensor):
                    produced[name] = weakref.ref(out)
                    last[:] = [name]
            handles.append(m.register_forward_hook(hook))
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            out = model(*probe) if isinstance(probe, tuple) else model(probe)
    finally:
        for h in handles:
            h.remove()
        for m, t in training.items():
            m.training = t
    final = tensors_in(out)
    heads = [n for n, ref in produced.items() if any(ref() is t for t in final)]
    return ins, heads or last


class CostModel:
    """Predicted cost of a model as a function of the units each group keeps.

    Args:
        model: the model (masked or not), as the structure was traced from it.
        structure: its coupled groups, as allocation sees them.
        probe: inputs the model accepts (their shapes give the layers' spatial sizes).
        table: the latency table; ``None`` prices layers in multiply-accumulates.

    ``rank[g]``: the units group ``g`` must keep so that the model's heads it feeds (a
    layer whose output is the model's, or the last layer to run, with input groups and no
    output group: a classifier) keep their rank, where that is fewer than the group's
    units; 0 elsewhere. A key projection of fixed width inside a block sets none.
    """

    def __init__(self, model: nn.Module, structure: Structure, probe: Any, table: LatencyTable | None) -> None:
        self.table = table
        self.sizes = [len(g.units) for g in structure.groups]
        unit_group = {r: gi for r, (gi, _) in structure.unit_of.items()}
        ins, heads = _shapes(model, probe)
        modules = dict(model.named_modules())
        self.layers: list[LayerCost] = []
        for name, shape in ins.items():
            spec = spec_of(modules[name], shape)
            if spec is None:
                continue
            lc = LayerCost(name, spec)
            for gi, grp in enumerate(structure.groups):
                for m in grp.members:
                    if m.module != name or not m.param.endswith("weight") or m.dim not in (0, 1):
                        continue
                    roots = structure.roots[m.ids].tolist()
                    mult = sum(1 for r in roots if unit_group.get(r) == gi) / max(1, len(grp.units))
                    if mult == 0:
                        continue
                    (lc.outs if m.dim == 0 else lc.ins).append((gi, mult))
            if lc.ins or lc.outs:
                self.layers.append(lc)
        self.touching: list[list[int]] = [[] for _ in self.sizes]
        for li, lc in enumerate(self.layers):
            for gi, _ in lc.ins + lc.outs:
                if li not in self.touching[gi]:
                    self.touching[gi].append(li)
        # the units each group must keep for the model's heads it feeds (a classifier's
        # outputs; 0: none narrower than the group): below them the head loses rank
        self.rank = [0] * len(self.sizes)
        for lc in self.layers:
            if lc.name in heads and lc.ins and not lc.outs and not lc.spec.depthwise:
                for gi, mult in lc.ins:
                    need = math.ceil(lc.spec.n_out / mult - 1e-9)
                    if need < self.sizes[gi]:
                        self.rank[gi] = max(self.rank[gi], need)
        self.constant = 0.0  # ms the tables do not explain
        self.correction = [0.0] * len(self.sizes)  # ms per group, linear in the fraction removed
        self.noise = 0.0  # the standard error (ms) of the whole-model figures it was fitted to

    def prefetch(self) -> int:
        """Measure every grid width the tables may need now (not in the middle of allocating);
        return how many configurations were timed (the rest came from the cache)."""
        if self.table is None:
            return 0
        before = self.table.measured
        for lc in self.layers:
            spec = lc.spec
            if spec.depthwise:
                for w in self.table.grid(spec.n_out):
                    self.table.time(spec, w, w)
                continue
            gi = self.table.grid(spec.n_in) if lc.ins else [spec.n_in]
            go = self.table.grid(spec.n_out) if lc.outs else [spec.n_out]
            for a in gi:
                for b in go:
                    self.table.time(spec, a, b)
        return self.table.measured - before

    def rescale(self) -> float:
        """Time every layer at its full widths now and scale its table figures by how much
        slower (or faster) it runs than the figure read from the on-disk table, measured in
        an earlier process. A machine's speed drifts, and not evenly: on a shared Linux host
        the page faults of fresh large allocations (glibc returning freed memory to the
        system) once made a 1×1 convolution with 12.8 MB of output 8× slower than its
        table figure of two hours before, while small layers were 1.3–1.8× slower. The
        whole-model timings that :meth:`calibrate` fits are taken now; a drift left to the
        fit would become a constant that no pruning removes. Returns the model-wide ratio
        (1 when no figure came from disk, or there is no table)."""
        if self.table is None:
            return 1.0
        old = new = 0.0
        for lc in self.layers:
            spec = lc.spec
            cin = spec.n_out if spec.depthwise else spec.n_in
            lc.scale = 1.0
            if self.table.cached(spec, cin, spec.n_out):
                was = self.table.time(spec, cin, spec.n_out)
                now = self.table.measure(spec, cin, spec.n_out)
                if was > 0 and now > 0:
                    lc.scale = now / was
                    old, new = old + was, new + now
        return new / old if old > 0 else 1.0

    # -- prediction --------------------------------------------------------------------------
    def layer_cost(self, lc: LayerCost, removed: list[int]) -> float:
        cin, cout = lc.widths(removed)
        if cin < 0.5 or cout < 0.5:  # no channels in or out: the layer is gone (a removed block)
            return 0.0
        cin, cout = max(1.0, cin), max(1.0, cout)
        if self.table is None:
            return lc.spec.flops(round(cin), round(cout))
        return lc.scale * self.table.interpolate(lc.spec, cin, cout, bool(lc.ins), bool(lc.outs))

    def _removed(self, kept: list[int]) -> list[int]:
        return [n - k for n, k in zip(self.sizes, kept)]

    def tables_part(self, kept: list[int]) -> float:
        removed = self._removed(kept)
        return sum(self.layer_cost(lc, removed) for lc in self.layers)

    def _corrections(self, kept: list[int]) -> float:
        return -sum(c * (1 - k / n) for c, k, n in zip(self.correction, kept, self.sizes) if n)

    def predict(self, kept: list[int]) -> float:
        """Predicted cost (ms, or MACs per sample) with ``kept[g]`` units in group ``g``."""
        return self.constant + self.tables_part(kept) + self._corrections(kept)

    def partial(self, kept: list[int], group: int) -> float:
        """The part of :meth:`predict` that depends on ``group``'s width."""
        removed = self._removed(kept)
        n = self.sizes[group]
        fix = -self.correction[group] * (1 - kept[group] / n) if n else 0.0
        return sum(self.layer_cost(self.layers[li], removed) for li in self.touching[group]) + fix

    def calibrate(self, dense_ms: float, halves: list[float], noise: float = 0.0) -> None:
        """Fit the model to whole-model measurements: ``dense_ms``, and ``halves[g]``, the
        model with only group ``g`` at half its width. Each group gets a linear term (in the
        fraction of it removed) that makes the prediction of its own half-width model exact:
        what the layer tables miss (activations, pooling, norms, layers no table stands
        for, how the runtime fuses them) is charged to the group whose width it follows.
        The layers' scales (:meth:`rescale`) are kept.

        ``noise``: the standard error of each ``halves`` figure (ms). What the tables miss,
        ``m``, is shrunk to ``m · m² / (m² + noise²)``: a miss within the timing noise is
        mostly noise, and charged in full it sends the allocation after it (a group whose
        half width saved 1.9 ms in one calibration and 0.1 ms in the next, on a 58 ms
        model timed to ±2 ms)."""
        self.correction = [0.0] * len(self.sizes)
        self.noise = noise
        full = list(self.sizes)
        base = self.tables_part(full)
        self.constant = dense_ms - base
        for g, ms in enumerate(halves):
            if ms is None or self.sizes[g] < 2:
                continue
            kept = full.copy()
            kept[g] = self.sizes[g] // 2
            frac = 1 - kept[g] / self.sizes[g]
            predicted_drop = base - self.tables_part(kept)
            miss = (dense_ms - ms) - predicted_drop
            if noise > 0:
                miss *= miss * miss / (miss * miss + noise * noise)
            self.correction[g] = miss / frac
