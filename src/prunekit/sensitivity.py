"""Sensitivity analysis, and an allocation that spends a pruning budget where it hurts least.

:func:`sensitivity` prunes each prunable layer (or, with ``granularity="channel"``, each
coupled channel group) *alone*, on a deep copy of the model, at a series of sparsities, and
records the held-out accuracy of every copy: one accuracy-vs-sparsity curve per layer.

:class:`SensitivityAllocation` turns those curves into per-layer sparsities that meet a
global target: starting from nothing pruned, it repeatedly raises the sparsity of the layer
whose (interpolated) accuracy loss per removed parameter, or per removed FLOP, is smallest,
until the budget is met, then removes each layer's lowest-scoring units.

Example:
    >>> report = sensitivity(model, lambda m: evaluate(m, test_data))
    >>> print(report.summary())
    >>> pk.prune(model, 0.8, allocation=SensitivityAllocation(report))

This module measures the curves (:func:`sensitivity`); :class:`SensitivityReport` and
:class:`SensitivityAllocation` live in :mod:`prunekit.sensitivity_allocation` and are
re-exported here.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .allocation import Allocation, Layer, protected_scores, prune_lowest
from .api import Pruner
from .errors import PruneError, PruneTypeError
from .layerwise import evaluate_accuracy
from .sensitivity_allocation import BUDGETS, SensitivityAllocation, SensitivityReport  # noqa: F401  (public here too)
from .targets import check_module, find_targets, ignore_patterns
from .validate import choice, is_number

__all__ = ["GRANULARITIES", "SensitivityAllocation", "SensitivityReport", "sensitivity"]

#: Granularities :func:`sensitivity` sweeps (N:M has one fixed sparsity: nothing to sweep).
GRANULARITIES = ("unstructured", "block", "channel", "head")


class _Probe(Allocation):
    """Records the layers the pruner sees; removes nothing new."""

    def __init__(self) -> None:
        self.layers: list[tuple[str, int]] = []

    def select(self, layers: list[Layer], sparsity: float, min_keep: int = 1) -> dict[str, torch.Tensor]:
        self.layers = [(l.name, l.numel) for l in layers]
        return {l.name: l.scores > float("-inf") for l in layers}


class _Only(Allocation):
    """Prunes one layer to the requested sparsity, leaves the others as they are."""

    whole_model = False

    def __init__(self, layer: str) -> None:
        self.layer = layer

    def select(self, layers: list[Layer], sparsity: float, min_keep: int = 1) -> dict[str, torch.Tensor]:
        out = {}
        for l in layers:
            budget = sparsity * l.numel if l.name == self.layer else 0.0
            out[l.name] = prune_lowest(protected_scores(l, l.scores, min_keep), l.sizes(), budget)
        return out


@contextlib.contextmanager
def _quiet_about_earlier_masks() -> Iterator[None]:
    """Silence pk.prune's "already ... zeros under earlier masks" warning for the internal
    copies: :func:`sensitivity` says once which points it left out for that reason."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the pruned layers were already", category=UserWarning)
        yield


def _check_sparsities(sparsities: object) -> tuple[float, ...]:
    if isinstance(sparsities, (str, bytes)) or not isinstance(sparsities, Iterable):
        raise PruneTypeError(f"sparsities={sparsities!r} must be a sequence of numbers in (0, 1)")
    values = tuple(sparsities)
    if not values:
        raise PruneError("sparsities=() is empty; give at least one sparsity in (0, 1)")
    bad = [s for s in values if not is_number(s) or not (0 < float(s) < 1)]
    if bad:
        raise PruneError(f"sparsities {bad!r} are outside (0, 1)")
    out = tuple(float(s) for s in values)
    if any(b <= a for a, b in zip(out, out[1:])):
        raise PruneError(f"sparsities={out!r} must be strictly increasing")
    return out


def _module_flops(model: nn.Module, example_inputs: Any) -> dict[str, tuple[int, int, list[str]]]:
    """Dense FLOPs of each prunable module at batch 1, by module name, as ``(FLOPs, FLOPs
    that read no weight, names of the weights priced at that module's density)``.

    A module's density is over all its prunable weights (an LSTM has ``weight_ih_l0``,
    ``weight_hh_l0``, ...; attention has ``in_proj_weight``). A module that never runs on
    its own (``nn.MultiheadAttention``'s ``out_proj``, whose weight its parent reads) joins
    the weights of the innermost counted module above it. A tied weight is priced in
    every module that uses it."""
    from .metrics import check_example_inputs, count_flops, resize_batch

    inputs = resize_batch(check_example_inputs(example_inputs), 1)
    module_names = {id(m): n for n, m in model.named_modules()}
    weights: dict[str, list[str]] = {}
    for t in find_targets(model):
        for m in t.users(model):
            weights.setdefault(module_names[id(m)], []).append(t.name)
    modules = {n: model.get_submodule(n) for n in weights}
    fixed: dict[int, int] = {}
    _, per, _ = count_flops(model, inputs, list(modules.values()), fixed)
    ran = {n: per.get(id(m), 0) for n, m in modules.items()}
    out = {n: (f, min(fixed.get(id(modules[n]), 0), f), list(weights[n])) for n, f in ran.items() if f}
    for n in (n for n, f in ran.items() if not f):
        parent = max((c for c in out if c == "" or n.startswith(c + ".")), key=len, default=None)
        if parent is not None:
            out[parent][2].extend(weights[n])
    return out


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    mname, _, pname = name.rpartition(".")
    return getattr(model.get_submodule(mname), pname)


def _effective_flops(model: nn.Module, flops: dict[str, tuple[int, int, list[str]]]) -> dict[str, float]:
    """Each module's FLOPs × the density of its prunable weights (what a sparse kernel would
    compute). An attention module's scores and weighted values read no weight: they shrink
    only with the rows of ``in_proj_weight`` removed whole (pruned heads)."""
    out = {}
    with torch.no_grad():
        for name, (f, core, names) in flops.items():
            ws = [_weight(model, n) for n in names]
            density = sum(int(torch.count_nonzero(w)) for w in ws) / max(1, sum(w.numel() for w in ws))
            proj = [w for n, w in zip(names, ws) if n.endswith("in_proj_weight") and w.dim() == 2]
            kept_core = core * (float(proj[0].ne(0).any(1).float().mean()) if proj else 1.0)
            out[name] = (f - core) * density + kept_core
    return out


def _pruned_fraction(pruner: Pruner, name: str) -> float:
    """Fraction of layer (or group) ``name`` removed, as the pruner reports it."""
    rep = pruner.report_
    if rep.groups is not None:
        g = next(g for g in rep.groups if g.name == name)
        return g.pruned_units / max(1, g.units)
    return next(l.sparsity for l in rep.layers if l.name == name)


def sensitivity(
    model: nn.Module,
    evaluate_fn: Callable[[nn.Module], float],
    *,
    sparsities: Sequence[float] = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
    criterion: Any = "magnitude",
    granularity: str = "unstructured",
    example_inputs: Any = None,
    ignore: Iterable[str] | None = (),
    data: Iterable | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
) -> SensitivityReport:
    """Measure how much accuracy each layer loses when it alone is pruned.

    For every prunable layer (or coupled channel group) and every sparsity, a deep copy of
    ``model`` is pruned with ``pk.prune``'s scoring, that layer only, and evaluated. ``model``
    itself is never changed. Cost: ``layers × len(sparsities)`` copies and evaluations.

    Args:
        model: the trained model.
        evaluate_fn: ``evaluate_fn(model) -> accuracy`` on held-out data (higher is better).
        sparsities: strictly increasing fractions in (0, 1) to try on every layer.
        criterion: a criterion name or instance, as for :func:`prunekit.prune`.
        granularity: one of :data:`GRANULARITIES`; "channel" and "head" prune coupled
            groups and need ``example_inputs``.
        example_inputs: a batch the model accepts; also used to count FLOPs per layer,
            which ``SensitivityAllocation(report, budget="flops")`` needs.
        ignore: names or patterns of weights to leave alone (and not analyse).
        data: calibration batches for data-driven criteria.
        loss_fn: ``loss_fn(outputs, labels)`` for gradient-based criteria.

    Returns:
        A :class:`SensitivityReport`.
    """
    check_module(model)
    values = _check_sparsities(sparsities)
    if not callable(evaluate_fn):
        raise PruneTypeError(f"evaluate_fn must be callable (model -> accuracy), got {type(evaluate_fn).__name__}")
    choice("granularity", granularity, GRANULARITIES, hint="for sensitivity analysis")
    if granularity in ("channel", "head") and example_inputs is None:
        raise PruneError(f"granularity={granularity!r} needs example_inputs= to trace the coupled channel groups")
    ignore = ignore_patterns(ignore)
    options = dict(criterion=criterion, granularity=granularity, ignore=ignore, max_sparsity=1.0)

    work = copy.deepcopy(model)
    baseline = evaluate_accuracy(evaluate_fn, work)
    probe = _Probe()
    with _quiet_about_earlier_masks():
        first = Pruner(0.0, allocation=probe, **options).fit(work, data, loss_fn, example_inputs)
    module_flops = _module_flops(work, example_inputs) if example_inputs is not None else None
    base_flops = _effective_flops(work, module_flops) if module_flops is not None else {}
    del work

    curves: dict[str, list[tuple[float, float]]] = {}
    per_sparsity: dict[str, float] = {}
    touched: dict[str, dict[str, float]] = {}
    already: dict[str, tuple[float, list[float]]] = {}
    for name, _ in probe.layers:
        points = []
        now = _pruned_fraction(first, name)  # removed by earlier masks
        below = [s for s in values if s <= now + 1e-9]
        if below:  # pruning only adds zeros: these points would measure the layer as it is
            already[name] = (now, below)
        for s in values:
            if s in below:
                continue
            trial = copy.deepcopy(model)
            with _quiet_about_earlier_masks():
                pruner = Pruner(s, allocation=_Only(name), **options).fit(trial, data, loss_fn, example_inputs)
            points.append((s, evaluate_accuracy(evaluate_fn, trial)))
            if module_flops is not None and s == values[-1]:
                now = _effective_flops(trial, module_flops)
                touched[name] = {m: f for m, f in base_flops.items() if now[m] < f}
                gone = sum(base_flops[m] - now[m] for m in touched[name])
                frac = _pruned_fraction(pruner, name) - _pruned_fraction(first, name)
                per_sparsity[name] = gone / frac if frac > 0 else 0.0
            del trial, pruner
        curves[name] = points
    if already:
        shown = "; ".join(f"{n} is {now:.2%} pruned: {', '.join(f'{s:g}' for s in below)} not measured"
                          for n, (now, below) in list(already.items())[:5])
        warnings.warn(
            f"the model already holds masks: {len(already)} layer(s) are pruned beyond some of the sparsities asked for, "
            f"and pruning only adds zeros, so those points are left out of their curves ({shown}"
            f"{'; ...' if len(already) > 5 else ''}). To measure from dense, run sensitivity on a copy taken "
            "before pruning", UserWarning, stacklevel=2)
    crit_name = criterion if isinstance(criterion, str) else getattr(criterion, "name", type(criterion).__name__)
    return SensitivityReport(
        baseline=baseline,
        curves=curves,
        sizes=dict(probe.layers),
        criterion=str(crit_name),
        granularity=granularity,
        flops=per_sparsity if module_flops is not None else None,
        flops_modules=touched if module_flops is not None else None,
    )

