"""``allocation="latency"``: spend a latency budget where accuracy suffers least per
millisecond saved (in the spirit of HALP, Shen et al. 2022, and NetAdapt, Yang et al. 2018).

The allocation sees coupled channel groups (``granularity="channel"`` with inputs to
trace) and a cost model bound to them by the coupled path (:mod:`prunekit.latency`):
starting from every unit kept, it repeatedly removes, from the group where it costs
least, the next ``round_to`` lowest-scoring units, the cost being the rise of the square
of the group's removed fraction, times the layers it narrows (a convex term: a group's last units cost the most, so
cuts spread over the groups the way uniform pruning's do unless the milliseconds say
otherwise; with ``distortion=True`` plus how much the model's outputs move when that
group shrinks, :mod:`prunekit.latency.distortion`) divided by the milliseconds the
model's latency tables say they save, until the predicted latency meets the target. A verifier then compacts a copy, measures it in the target
runtime next to the dense model, and, when the target is missed, scales the predicted
target by the measured error and allocates again (at most ``max_iterations`` times); the
configuration kept is the most accurate one (least score removed) that meets the target.
Where that one cut groups below their usual widths or removed a block (there the cost
model is furthest from what it measured), or measured more than ``tolerance`` under the
target (time left to spend), the groups left are widened again, each step measured, and a
step measured at the edge of the target timed twice
(:func:`~prunekit.allocation.measured_search.widen_measured`).

Without a latency target (``pk.prune(model, 0.5, allocation="latency")``) there are no
milliseconds to spend: ``sparsity`` is then a fraction of the weights, removed lowest
score first over all layers, as ``"global"`` does.

:func:`~prunekit.allocation.widths.round_keeps` rounds any allocation's kept units to multiples of ``round_to``.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable

import torch

from ..errors import PruneError, PruneTypeError
from ..metrics_timing import RUNTIMES
from ..registry import register
from ..validate import boolean, choice, integer, number
from .base import Allocation, Global, Layer
from .measured_search import (blend, confirm, disagree, done, next_aim, spread, total_cost, widen_measured,
                             without_removal)
from .latency_greedy import greedy, group_weights, width_cost
from .latency_target import SlowerThanDenseWarning, parse_target, warn_narrow, warn_pick
from .widths import group_steps, keeps_of, round_keeps

__all__ = ["LatencyAllocation", "SlowerThanDenseWarning", "parse_target", "round_keeps"]

OBJECTIVES = ("latency", "flops")
@register("allocation", "latency")
class LatencyAllocation(Allocation):
    """Channels spent against a measured latency budget (see the module's docstring).

    Args:
        target: the latency to reach: a fraction of the dense model's in (0, 1] (``0.5``:
            twice as fast) or milliseconds (``"2.5ms"``, at ``batch_size``). ``None``: spend
            a ``sparsity`` instead, as ``"global"``.
        runtime: where latency is measured: ``"eager"``, ``"torchscript"``, ``"compile"``
            or ``"onnxruntime"``.
        batch_size: the batch the latency is for.
        threads: intra-op threads while timing (``None``: torch's current number).
        round_to: channels (heads) kept per group in multiples of this; ``"auto"``: chosen
            from the latency tables (and, when only narrower groups reach the target, halved
            for them down to one unit); ``1``: any width.
        tolerance: a measured latency up to ``target × (1 + tolerance)`` meets the target;
            the search stops at the first that also measures at least
            ``target × (1 − 2·min(tolerance, 0.05))``.
        max_iterations: measured allocations at most.
        objective: ``"latency"`` (tables, measured) or ``"flops"`` (multiply-accumulates,
            not measured: the FLOP-budgeted twin, ``target`` a fraction of the dense MACs).
        repeats: timed runs per whole-model measurement (medians, interleaved with dense).
        distortion: also charge each step the change of the model's outputs it causes,
            measured per group on the example inputs before any fine-tuning (BatchNorm
            statistics re-estimated on those inputs first:
            :func:`prunekit.latency.distortion.distortion_curves`). Off by default: over
            a benchmark run it did not beat the plain proxy (``docs/latency.md``).
        blocks: let a group inside a residual branch (``x + f(x)``) lose every unit when
            that is the cheapest way to the target: the block is removed whole, depth
            pruning (found by trying each group: the model must compact exactly and its
            outputs still depend on the input). ``False``: widths only.
        head_rank: keep every group that feeds one of the model's heads (the layer whose
            output is the model's, or the last to run: a classifier) at least as wide as
            its outputs, in the usual and the last-resort widths: a
            10-class head fed by 4 channels has rank 4, a bottleneck no other width makes
            up for. ``False``: such groups may go down to ``min_keep`` like any other.

    The per-group cap of coupled channel pruning (``max_sparsity``, 90 % by default) is a
    preference here: when every group at its capped width still misses the target, groups
    are cut further (to ``min_keep``), the cheapest first, with a warning naming them.

    Attributes set by a pruning: ``history_`` (one dict per measured iteration:
    predicted and measured milliseconds, the target, the kept units per group),
    ``round_to_`` (the multiple used), ``dense_ms_`` and ``measured_ms_``, and
    ``below_floor_`` (the groups cut below the cap or the multiple) and ``removed_groups_``
    (the groups removed whole: residual blocks), ``rank_floors_`` (the groups held at a
    head's outputs by ``head_rank``: ``{first layer: units}``).
    """

    name = "latency"
    supports_threshold = False

    def __init__(self, target: float | str | None = None, *, runtime: str = "eager", batch_size: int = 64,
                 threads: int | None = None, round_to: int | str = "auto", tolerance: float = 0.05,
                 max_iterations: int = 8, objective: str = "latency", repeats: int = 30,
                 distortion: bool = False, blocks: bool = True, head_rank: bool = True) -> None:
        self.target = None if target is None else parse_target(target)
        self.runtime = choice("runtime", runtime, RUNTIMES)
        self.batch_size = integer("batch_size", batch_size, minimum=1)
        self.threads = None if threads is None else integer("threads", threads, minimum=1)
        if not (round_to == "auto" or isinstance(round_to, int)):
            raise PruneTypeError(f"round_to must be a positive int or 'auto'; got {round_to!r}")
        self.round_to = round_to if round_to == "auto" else integer("round_to", round_to, minimum=1)
        self.tolerance = number("tolerance", tolerance, lo=0.0, hi=1.0)
        self.max_iterations = integer("max_iterations", max_iterations, minimum=1)
        self.objective = choice("objective", objective, OBJECTIVES)
        if self.objective == "flops" and self.target is not None and self.target[0] == "ms":
            raise PruneError(f"objective='flops' spends multiply-accumulates: its target is a fraction of the dense "
                             f"model's MACs in (0, 1], not milliseconds (got {target!r})")
        self.repeats = integer("repeats", repeats, minimum=1)
        self.distortion = boolean("distortion", distortion)
        self.blocks = boolean("blocks", blocks)
        self.head_rank = boolean("head_rank", head_rank)
        self._cost: Any = None
        self._verify: Callable | None = None
        self._loss: Callable | None = None
        self._soft_cap: float | None = None
        self._removable: list[bool] | None = None
        self._strict = self.round_to != "auto"

    def get_config(self) -> dict[str, Any]:
        t = None if self.target is None else (f"{self.target[1]}ms" if self.target[0] == "ms" else self.target[1])
        return {"target": t, "runtime": self.runtime, "batch_size": self.batch_size, "round_to": self.round_to,
                "objective": self.objective, "tolerance": self.tolerance, "distortion": self.distortion,
                "blocks": self.blocks, "head_rank": self.head_rank}

    def __repr__(self) -> str:
        return f"LatencyAllocation({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"

    @property
    def needs_tables(self) -> bool:
        """Whether pruning must bind a cost model (a target was given)."""
        return self.target is not None

    @property
    def relaxes_cap(self) -> bool:
        """Whether the per-group cap is a preference, not a limit: with a target, a group may
        go below it (and below ``round_to="auto"``'s multiple) when nothing else reaches
        the target; the caller then passes the cap to :meth:`bind` instead of applying it."""
        return self.target is not None

    def bind(self, cost: Any, verify: Callable | None, round_to: int, loss: Callable | None = None,
             soft_cap: float | None = None, removable: list[bool] | None = None, strict: bool | None = None) -> None:
        """Attach what one pruning measured: the cost model (``predict(kept)``,
        ``partial(kept, group)``, ``sizes``), the verifier (``verify(keeps) -> (measured ms,
        dense ms)``), the multiple, ``loss(group, kept, new_kept)``: how much accuracy
        suffers when a group shrinks (``None``: the scores' share alone), and the per-group
        cap to keep unless the target needs more (``None``: none), which groups may lose
        every unit (a residual branch removed whole; ``None``: none), and whether the
        multiple was set by the user (then widths stay its multiples; ``None``: from this
        allocation's own ``round_to``)."""
        self._cost, self._verify, self.round_to_, self._loss = cost, verify, round_to, loss
        self._soft_cap, self._removable = soft_cap, removable
        self._strict = self.round_to != "auto" if strict is None else strict

    def select(self, layers: list[Layer], sparsity: float | None, min_keep: int = 1) -> dict[str, torch.Tensor]:
        if self.target is None or self._cost is None:
            if self.target is not None:
                raise PruneError("allocation='latency' with a latency target needs granularity='channel' and "
                                 "example_inputs= (the channel groups are what it measures)")
            if sparsity is None:
                raise PruneError("allocation='latency' needs latency= (a fraction of the dense latency, or '2.5ms') "
                                 "or a sparsity")
            return Global().select(layers, sparsity, min_keep)
        try:
            return self._select(layers, min_keep)
        finally:
            self._cost = self._verify = self._loss = self._soft_cap = self._removable = None  # none stays
            self._strict = self.round_to != "auto"

    def _multiple(self, n: int) -> int:
        """The step of a group of ``n`` units: ``round_to`` as given; chosen automatically,
        halved until the group has at least 4 steps."""
        m = self.round_to_
        while not self._strict and m > 1 and m * 4 > n:
            m //= 2
        return max(1, m)

    # -- the latency path --------------------------------------------------------------------
    def _select(self, layers: list[Layer], min_keep: int) -> dict[str, torch.Tensor]:
        cost = self._cost
        if len(layers) != len(cost.sizes) or any(l.n_units != n for l, n in zip(layers, cost.sizes)):
            raise PruneError("allocation='latency': the groups changed between tracing and allocation")
        orders = [torch.sort(l.scores, stable=True).indices.tolist() for l in layers]
        rank = list(getattr(cost, "rank", None) or [0] * len(layers)) if self.head_rank else None
        steps, wide = group_steps(layers, min_keep, self._multiple, self._strict, self._soft_cap, self._removable,
                                  rank)
        self.rank_floors_ = {l.name: min(r, s[0]) for l, r, s in zip(layers, rank or [], steps) if r}
        self._usual_floor = [s[-1] for s in steps]
        full = [s[0] for s in steps]
        kind, value = self.target
        dense_pred = cost.predict(full)
        self.history_: list[dict[str, Any]] = []
        aim = value * dense_pred if kind == "ratio" else value
        best = None
        blending = False
        allowed = wide  # the steps the search may take: the usual ones only once the usual floor meets the target
        for _ in range(self.max_iterations if self._verify is not None else 1):
            kept = None if blending else self._greedy(layers, orders, steps, aim)
            if kept is not None and cost.predict(kept) > aim and allowed != steps:
                if self._verify is not None and self._usual_meets(layers, orders):
                    allowed = steps  # the prediction (or one slowed measurement) said otherwise
                else:
                    kept = self._greedy(layers, orders, wide, aim, kept)
            bracketed = any(r["ok"] for r in self.history_) and any(not r["ok"] for r in self.history_)
            if bracketed and (blending or disagree(self.history_) or any(r["kept"] == kept for r in self.history_)):
                # the predictions cannot separate what is left (or contradict what was measured):
                # bisect the widths, measured, between the least pruned configuration that met
                # the target and the most pruned miss less pruned than it (measured_search.blend)
                blending = True
                kept = blend(self.history_, layers, allowed, self.tolerance, self._weights(layers))
                if kept is None:
                    break
            keeps = keeps_of(layers, orders, kept)
            pred = cost.predict(kept)
            if self._verify is None:
                if pred > aim:  # unreachable: the usual widths' best, said plainly
                    kept = self._greedy(layers, orders, steps, aim)
                    keeps, pred = keeps_of(layers, orders, kept), cost.predict(kept)
                    warnings.warn(f"allocation='latency' ({self.objective}) cannot reach its target of {aim:.4g}: "
                                  f"the smallest configuration allowed predicts {cost.predict([w[-1] for w in wide]):.4g}; "
                                  f"returned the smallest within the per-group cap and round_to ({pred:.4g})",
                                  stacklevel=4)
                self.history_.append({"aim": aim, "predicted": pred, "kept": kept})
                best = keeps
                self.below_floor_ = [l.name for l, k, f in zip(layers, kept, self._usual_floor) if 0 < k < f]
                self.removed_groups_ = [l.name for l, k in zip(layers, kept) if k == 0]
                if (self.below_floor_ or self.removed_groups_) and pred <= aim:
                    warn_narrow(self.below_floor_, self.removed_groups_, f"{pred:.4g} (predicted)")
                break
            seen = next((r for r in self.history_ if r["kept"] == kept), None)
            measured, dense = (seen["measured_ms"], seen["dense_ms"]) if seen else self._verify(keeps)
            goal = self._goal(dense)
            rec = {"aim": aim, "predicted": pred, "measured_ms": measured, "dense_ms": dense, "target_ms": goal,
                   "kept": kept, "ok": measured <= goal * (1 + self.tolerance)}
            self.history_.append(rec)
            self.dense_ms_ = dense
            if done(rec, self.tolerance):
                break
            if (not any(r["ok"] or r.get("floor") for r in self.history_) and self.max_iterations > 1
                    and self._floor_misses(layers, orders, wide)):
                break  # no allowed configuration is fast enough: no point iterating
            aim = next_aim(self.history_, aim, goal, measured)
        if self._verify is not None:
            ok = [r for r in self.history_ if r["ok"]]
            near = True  # what is returned is the fastest measured, or met the target
            if ok:  # the most accurate that meets the target: least pruned by the greedy's own measure
                pick = self._widen(layers, orders, wide, min(ok, key=lambda r: spread(r["kept"], layers,
                                                                                  self._weights(layers))))
                if any(k == 0 for k in pick["kept"]):  # blocks removed: against widths alone, measured
                    pick = self._against_widths(layers, orders, wide, aim, pick)
                pick = self._confirm(layers, orders, allowed, pick)
            else:  # the fastest measured: a near miss, else none below the usual widths
                pick = min(self.history_, key=lambda r: r["measured_ms"] / r["target_ms"])
                near = pick["measured_ms"] <= pick["target_ms"] * (1 + 2 * self.tolerance)
                if not near:
                    usual = [r for r in self.history_ if all(k >= f for k, f in zip(r["kept"], self._usual_floor))]
                    pick = min(usual or self.history_, key=lambda r: r["measured_ms"])
            best = keeps_of(layers, orders, pick["kept"])
            self.measured_ms_ = pick["measured_ms"]
            floor = next((r for r in self.history_ if r.get("floor")), None)
            narrow = [l.name for l, k, f in zip(layers, pick["kept"], self._usual_floor) if 0 < k < f]
            self.below_floor_ = narrow
            self.removed_groups_ = [l.name for l, k in zip(layers, pick["kept"]) if k == 0]
            warn_pick(pick, bool(ok), floor, near, f"{self.runtime}, batch {self.batch_size}",
                      len(self.history_), narrow, self.removed_groups_)
        return best

    def _usual_meets(self, layers: list[Layer], orders: list[list[int]]) -> bool:
        """Whether the usual floor (every group at its smallest usual width) meets the target,
        measured before the search goes below the usual widths: once, and once more when it
        missed by less than 2× (other work on the machine only ever adds time, so the faster
        of the two counts). Recorded in ``history_``."""
        usual = list(self._usual_floor)
        rec = next((r for r in self.history_ if r["kept"] == usual), None)
        if rec is None:
            rec = self._measure_into({"aim": 0.0, "predicted": self._cost.predict(usual), "kept": usual},
                                     layers, orders)
            self.history_.append(rec)
        if not rec["ok"] and not rec.get("confirmed") and rec["measured_ms"] < 2 * rec["target_ms"]:
            rec["confirmed"] = True
            self._measure_into(rec, layers, orders)
        return bool(rec["ok"])

    def _floor_misses(self, layers: list[Layer], orders: list[list[int]], steps: list[list[int]]) -> bool:
        """Measure the fastest configuration allowed (every group at its smallest width),
        record it in ``history_`` (``"floor": True``), and say whether it misses the target
        too. Each configuration is judged against the target of the dense model timed next
        to it (a ratio target moves with it: on a busy machine one dense model has measured
        3.4 ms in one call and 4.3 ms in the next). The answer ends the search, so a floor
        that missed by less than half the target is measured once more (other work on the
        machine only ever adds time: the better ratio counts)."""
        kept = [s[-1] for s in steps]
        floor = self._measure_into({"aim": 0.0, "predicted": self._cost.predict(kept), "kept": kept, "floor": True},
                                   layers, orders)
        if not floor["ok"] and floor["measured_ms"] < 1.5 * floor["target_ms"]:
            self._measure_into(floor, layers, orders)
        self.history_.append(floor)
        usual = list(self._usual_floor)
        if not floor["ok"] and usual != kept and not any(r["kept"] == usual for r in self.history_):
            # nothing meets it: what is returned stays within the usual widths, measured too
            self.history_.append(self._measure_into({"aim": 0.0, "predicted": self._cost.predict(usual),
                                                     "kept": usual}, layers, orders))
        return not floor["ok"]

    def _measure_into(self, rec: dict[str, Any], layers: list[Layer], orders: list[list[int]]) -> dict[str, Any]:
        """Time ``rec["kept"]`` next to the dense model and record it in ``rec``, judged
        against the target of that dense timing; a record measured before keeps the better
        ratio to its target (other work on the machine only ever adds time)."""
        ms, dense = self._verify(keeps_of(layers, orders, rec["kept"]))
        goal = self._goal(dense)
        if "measured_ms" not in rec or ms / goal < rec["measured_ms"] / rec["target_ms"]:
            rec.update(measured_ms=ms, dense_ms=dense, target_ms=goal, ok=ms <= goal * (1 + self.tolerance))
        return rec

    def _goal(self, dense_ms: float) -> float:
        """The target in milliseconds, the dense model measuring ``dense_ms``."""
        kind, value = self.target
        return value * dense_ms if kind == "ratio" else value

    def _widen(self, layers: list[Layer], orders: list[list[int]], wide: list[list[int]],
               pick: dict[str, Any]) -> dict[str, Any]:
        """``pick`` widened, measured, where it has groups below their usual floor, removed
        whole, or more than ``tolerance`` of the target unspent (``widen_measured``)."""
        spare = pick["measured_ms"] < pick["target_ms"] * (1 - self.tolerance)
        if spare or any(k < f for k, f in zip(pick["kept"], self._usual_floor)):
            pick = widen_measured(pick, wide, self._usual_floor, [l.n_units for l in layers], self._weights(layers),
                                  lambda k: self._record(layers, orders, k), self.max_iterations,
                                  lambda r: self._retime(layers, orders, r), self.tolerance)
        return pick

    def _confirm(self, layers: list[Layer], orders: list[list[int]], steps: list[list[int]],
                 pick: dict[str, Any]) -> dict[str, Any]:
        """``pick`` timed again where it met the target only within the tolerance
        (:func:`~prunekit.allocation.measured_search.confirm`)."""
        return confirm(pick, lambda r: self._retime(layers, orders, r),
                       lambda a: self._record(layers, orders, self._greedy(layers, orders, steps, a), "confirmed"),
                       self.tolerance)

    def _against_widths(self, layers: list[Layer], orders: list[list[int]], wide: list[list[int]], aim: float,
                        pick: dict[str, Any]) -> dict[str, Any]:
        """``pick``, which removed blocks, or the best measured configuration that meets the
        target with every group kept (``without_removal``, widened the same way), or, where
        that one costs more, with the block whose removal cost the most kept: whichever costs
        less accuracy by the greedy's own measure (``total_cost``, where each block removed
        costs more the fewer are left)."""
        weights = self._weights(layers)
        sizes = [l.n_units for l in layers]
        rank = functools.partial(total_cost, sizes=sizes, floors=self._usual_floor, weights=weights,
                                 removable=sum(0 in s for s in wide))
        gone = [g for g, k in enumerate(pick["kept"]) if k == 0]
        costly = max(gone, key=lambda g: weights[g] * width_cost(0, sizes[g], self._usual_floor[g]))
        best = pick
        for keep in (None, {costly}):
            narrow = [[w for w in s if w > 0 or (keep is not None and g not in keep)] for g, s in enumerate(wide)]
            alt = without_removal(self.history_, aim, lambda a, s=narrow: self._greedy(layers, orders, s, a),
                                  lambda k: self._record(layers, orders, k, "unremoved"), rank,
                                  max(2, self.max_iterations // 2), self.tolerance, keep)
            if alt is not None:
                alt = self._widen(layers, orders, narrow, alt)
                best = alt if rank(alt["kept"]) < rank(best["kept"]) else best
            if best is not pick or len(gone) < 2:
                break  # the blocks kept: done; with one removed, keeping it was the first search
        return best

    def _record(self, layers: list[Layer], orders: list[list[int]], kept: list[int], tag: str = "widened") -> dict:
        """``kept`` measured and recorded in ``history_``, marked ``tag`` (the earlier record when it was)."""
        seen = next((r for r in self.history_ if r["kept"] == kept and "measured_ms" in r), None)
        if seen is None:
            seen = self._measure_into({"aim": 0.0, "predicted": self._cost.predict(kept), "kept": list(kept),
                                       tag: True}, layers, orders)
            self.history_.append(seen)
        return seen

    def _retime(self, layers: list[Layer], orders: list[list[int]], rec: dict[str, Any]) -> float:
        """A second timing of ``rec["kept"]``, as a ratio to the target of the dense model
        timed next to it; recorded as ``rec["retimed_ratio"]`` (the record keeps its own)."""
        ms, dense = self._verify(keeps_of(layers, orders, rec["kept"]))
        rec["retimed_ratio"] = ms / self._goal(dense)
        return rec["retimed_ratio"]

    def _weights(self, layers: list[Layer]) -> list[float]:
        return group_weights(self._cost, len(layers))

    def _greedy(self, layers: list[Layer], orders: list[list[int]], steps: list[list[int]], aim: float,
                start: list[int] | None = None) -> list[int]:
        return greedy(layers, orders, steps, aim, self._cost, self._usual_floor, self._weights(layers),
                      self._loss, start)
