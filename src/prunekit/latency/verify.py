"""Measuring a channel configuration as it would ship: compacted, in the target runtime,
timed next to the dense model; and choosing ``round_to`` from the latency tables."""

from __future__ import annotations

import copy
import statistics
from typing import Any, TYPE_CHECKING

import torch
from torch import nn

from .. import masking as _masks
from ..criteria.base import call_model
from ..errors import PruneError
from ..metrics_count import check_example_inputs, resize_batch
from ..metrics_timing import prepare, time_ratio
from ..surgery import compact
from .costs import CostModel
from .tables import LatencyTable

if TYPE_CHECKING:
    from ..graph.groups import Structure

__all__ = ["Verifier", "auto_round_to", "removable_groups"]

#: Multiples ``round_to="auto"`` chooses from, largest first.
MULTIPLES = (8, 4, 2)


class Verifier:
    """``verifier(keeps) -> (pruned ms, dense ms)``: the configuration with ``keeps[group]``
    units kept, compacted from a copy of ``model`` and timed in ``runtime`` at
    ``batch_size``, interleaved with the dense model (medians of ``repeats`` runs each)."""

    def __init__(self, model: nn.Module, structure: Structure, probe: Any, runtime: str, batch_size: int,
                 threads: int, repeats: int = 30, warmup: int = 5) -> None:
        self.model, self.structure, self.probe = model, structure, probe
        self.runtime, self.threads, self.repeats, self.warmup = runtime, threads, repeats, warmup
        values = _masks.effective_weights(model)
        for name, buf in model.named_buffers():
            values.setdefault(name, buf)
        self.shapes = {n: tuple(v.shape) for n, v in values.items()}
        self.dead = structure.removed_units(values)
        self.inputs = resize_batch(check_example_inputs(probe), batch_size)
        self.dense = self._runner(set())
        self.calls = 0

    def small(self, removed: set[int]) -> nn.Module:
        """A compacted copy of the model without the ``removed`` units (and those already gone)."""
        dup = copy.deepcopy(self.model)
        masks = self.structure.masks_for(removed | self.dead, self.shapes)
        if masks:
            _masks.apply_masks(dup, masks)
        out = compact(dup, self.probe, inplace=True, check=False)
        return out.eval()

    def _runner(self, removed: set[int]):
        old = torch.get_num_threads()
        try:
            torch.set_num_threads(self.threads)
            small = self.small(removed)
            try:
                with torch.no_grad():
                    small(*self.inputs)
            except Exception as e:  # the model's code depends on a width that shrank
                raise PruneError(
                    f"allocation='latency': {type(self.model).__name__} with {len(removed)} more units removed no longer "
                    f"runs once compacted ({type(e).__name__}: {str(e)[:300]}); its forward likely depends on a width "
                    "that shrank. pk.inspect(model, x) shows the groups; ignore= the layers involved") from e
            try:
                return prepare(small, self.inputs, self.runtime, self.threads)
            except ImportError:
                raise
            except Exception as e:  # e.g. a dtype the runtime has no kernels for (bfloat16 in ONNX Runtime)
                dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in small.parameters()})
                raise PruneError(f"allocation='latency' cannot time {type(small).__name__} ({', '.join(dtypes)}) in "
                                 f"runtime={self.runtime!r}: {type(e).__name__}: {str(e)[:300]}") from e
        finally:
            torch.set_num_threads(old)

    def removed(self, keeps: dict[str, torch.Tensor]) -> set[int]:
        return {r for g in self.structure.groups for r, k in zip(g.units, keeps[g.name].tolist()) if not k}

    def __call__(self, keeps: dict[str, torch.Tensor]) -> tuple[float, float]:
        run = self._runner(self.removed(keeps))
        old = torch.get_num_threads()
        try:
            torch.set_num_threads(self.threads)
            pruned, dense = time_ratio(run, self.dense, self.inputs, self.warmup, self.repeats)
        finally:
            torch.set_num_threads(old)
        self.calls += 1
        return pruned, dense


def auto_round_to(table: LatencyTable, cost: CostModel, tolerance: float = 0.02, passes: int = 3) -> int:
    """The multiple channel counts should keep, read from the tables of the slowest layer.

    Around half of that layer's width, each width is timed; a multiple ``m`` qualifies when
    rounding a width up to the next multiple of ``m`` costs at most ``tolerance`` of its
    time for the median width (the kernels pad to that multiple anyway). The largest
    qualifying ``m`` (at most a quarter of the layer's width) is returned; 1 when none
    qualifies.

    Every width is timed ``passes`` times, one sweep after the other, and its fastest
    figure is kept; the median, not the mean, of the rounding costs decides. On a shared
    machine a burst of other work slows a run of neighbouring widths by up to 2x: one
    sweep judged by the mean then picked 1, 2 or 8 for the same layer from one run to the
    next (ONNX Runtime, MNISTNet's second convolution, where every width up to 32 costs
    the same).
    """
    if not cost.layers:
        return 1
    full = [0] * len(cost.sizes)
    lc = max(cost.layers, key=lambda l: cost.layer_cost(l, full))
    spec = lc.spec
    vary_out = bool(lc.outs) or spec.depthwise
    n = spec.n_out if vary_out else spec.n_in
    if n < 8:
        return 1
    centre = max(16, round(n / 2 / 16) * 16)
    widths = [w for w in range(centre - 15, centre + 17) if 1 <= w <= n]

    def shape(w: int) -> tuple[int, int]:
        if spec.depthwise:
            return w, w
        return (spec.n_in, w) if vary_out else (w, spec.n_out)

    times = {w: table.time(spec, *shape(w)) for w in widths}
    for _ in range(passes - 1):
        times = {w: table.remeasure(spec, *shape(w)) for w in widths}
    for m in MULTIPLES:
        if m > n // 4:
            continue
        costs = [(times[-(-w // m) * m] - times[w]) / times[w] for w in widths
                 if w % m and -(-w // m) * m in times]
        if costs and statistics.median(costs) <= tolerance:
            return m
    return 1


def removable_groups(model: nn.Module, structure: Structure, probe: Any) -> list[bool]:
    """Which groups can lose every unit: those inside a residual branch (``x + f(x)``),
    found by trying. Groups are tried in order, each *together with those already
    accepted* (so that any of them can go at once: two branches of one addition with no
    identity path are not both accepted): removed, the model must still compact exactly
    (:class:`~prunekit.layers.EmptyOutput`, :class:`~prunekit.layers.ConstantOutput`) and
    its outputs must still differ between the probe's samples (the input still reaches
    them). A probe whose samples are all alike, or a model whose output is not one tensor,
    finds none."""
    values = _masks.effective_weights(model)
    for name, buf in model.named_buffers():
        values.setdefault(name, buf)
    shapes = {n: tuple(v.shape) for n, v in values.items()}
    dead = structure.removed_units(values)
    dtypes = [p.dtype for p in model.parameters() if p.is_floating_point()]
    rtol = max([1e-4] + [8 * torch.finfo(d).eps for d in dtypes])  # a half-precision model's rounding
    accepted: set[int] = set()
    out = []
    for g in structure.groups:
        trial = accepted | set(g.units)
        ok = _still_runs(model, structure, probe, structure.masks_for(trial | dead, shapes), rtol)
        if ok:
            accepted = trial
        out.append(ok)
    return out


def _still_runs(model: nn.Module, structure: Structure, probe: Any, masks: dict, rtol: float) -> bool:
    """Whether ``model`` with ``masks`` compacts exactly and its output still depends on its input."""
    if not masks:
        return False
    dup = copy.deepcopy(model)
    _masks.apply_masks(dup, masks)
    try:
        small = compact(dup, probe, inplace=True, rtol=rtol).eval()
        with torch.no_grad():
            y = call_model(small, probe)
    except Exception:  # noqa: BLE001 - any failure means "not removable", never a failed prune
        return False
    if not isinstance(y, torch.Tensor) or y.dim() < 1 or y.shape[0] < 2:
        return False
    y = y.detach().float()
    return bool((y - y[:1]).abs().amax() > 1e-6 * (1 + float(y.abs().amax())))
