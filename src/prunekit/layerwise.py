"""Layer-wise (top-down) pruning under an accuracy budget ("层级剪枝").

Layers are visited from the output side (reverse module order). Each layer alone is tried
at increasing sparsities on a copy of the model; the largest sparsity whose accuracy stays
within ``max_drop`` of the dense baseline is applied for real, then the next layer is
visited. The walk stops as soon as the overall prunable-weight sparsity reaches the target.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .api import prune, sparsity as _sparsity
from .errors import PruneError
from .snapshot import ModelSnapshot
from .targets import Target, check_module, find_targets, ignore_patterns
from .validate import fraction, is_number, number

__all__ = ["LayerStep", "LayerwiseReport", "evaluate_accuracy", "prune_layerwise"]


@dataclass(frozen=True)
class LayerStep:
    """What the walk did to one visited layer."""

    name: str
    params: int  # weights in the layer
    sparsity: float  # the layer's zero fraction after this visit (0 kept earlier zeros)
    accuracy: float  # model accuracy after this visit
    removed: int  # weights newly zeroed by this visit
    step: float | None = None  # sparsity requested from pk.prune; None: no step fit the budget


@dataclass
class LayerwiseReport:
    """What :func:`prune_layerwise` returns."""

    baseline_accuracy: float
    final_accuracy: float
    final_sparsity: float
    target_sparsity: float
    reached_target: bool
    max_drop: float
    layers: list[LayerStep] = field(default_factory=list)

    def summary(self) -> str:
        """A plain-text per-layer table, in visiting order (output side first)."""
        width = max([len(l.name) for l in self.layers] + [5])
        lines = [f"{'layer':<{width}}  {'params':>8} {'step':>6} {'sparsity':>9} {'removed':>8} {'accuracy':>9}"]
        for l in self.layers:
            step = "-" if l.step is None else f"{l.step:.3g}"
            lines.append(
                f"{l.name:<{width}}  {l.params:>8} {step:>6} {l.sparsity:>8.2%} {l.removed:>8} {l.accuracy:>8.2%}"
            )
        lines.append(
            f"baseline accuracy {self.baseline_accuracy:.2%}, final {self.final_accuracy:.2%} "
            f"(budget -{self.max_drop:.2%})"
        )
        lines.append(
            f"sparsity {self.final_sparsity:.2%} of target {self.target_sparsity:.2%}: "
            + ("reached" if self.reached_target else "NOT reached")
        )
        return "\n".join(lines)


def _check_args(target_sparsity, evaluate_fn, max_drop, steps) -> tuple[float, float, tuple[float, ...]]:
    target_sparsity = fraction("target_sparsity", target_sparsity)
    max_drop = number("max_drop", max_drop, lo=0.0)
    if not callable(evaluate_fn):
        raise PruneError(f"evaluate_fn must be callable (model -> accuracy), got {type(evaluate_fn).__name__}")
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
        raise PruneError(f"steps={steps!r} must be a sequence of sparsities in (0, 1)")
    steps = tuple(steps)
    if not steps:
        raise PruneError("steps=() is empty; give at least one sparsity in (0, 1)")
    bad = [s for s in steps if not is_number(s) or not 0 < float(s) < 1]
    if bad:
        raise PruneError(f"steps {bad!r} are outside (0, 1)")
    steps = tuple(float(s) for s in steps)
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise PruneError(f"steps={steps!r} must be strictly increasing")
    return target_sparsity, max_drop, steps


def evaluate_accuracy(evaluate_fn: Callable[[nn.Module], float], model: nn.Module) -> float:
    """Call a held-out accuracy function and check what it returns.

    Args:
        evaluate_fn: ``evaluate_fn(model) -> float``.
        model: the model to evaluate.

    Returns:
        The accuracy as a ``float``.

    Raises:
        PruneError: ``evaluate_fn`` returned something other than a finite real number.
    """
    acc = evaluate_fn(model)
    if not is_number(acc) or not math.isfinite(float(acc)):
        raise PruneError(f"evaluate_fn must return a finite accuracy, got {acc!r}")
    return float(acc)


def _zeros(t: Target) -> int:
    with torch.no_grad():
        return t.numel - int(torch.count_nonzero(t.weight))


def _prune_one(model: nn.Module, name: str, all_names: Sequence[str], s: float, criterion, ignore) -> None:
    others = [n for n in all_names if n != name]
    with warnings.catch_warnings():  # a step a small layer cannot reach: its row shows what it reached
        warnings.filterwarnings("ignore", message="asked for sparsity=", category=UserWarning)
        prune(model, s, criterion=criterion, allocation="uniform", ignore=list(ignore) + others)


def _walk(model, targets, names, total, target, floor, baseline, steps, evaluate_fn, criterion, ignore,
          rows: list[LayerStep]) -> float:
    """Visit the layers output side first, appending to ``rows``; returns the sparsity reached."""
    current = _sparsity(model)
    for t in reversed(targets):
        if current >= target:
            break
        n = t.numel
        before = _zeros(t)
        layer_sp = before / n
        # zeros this layer must hold for the overall sparsity to reach the target
        needed = math.ceil(target * total - 1e-9) - (round(current * total) - before)
        exact = needed / n if needed < n else None
        candidates: list[float] = []
        for s in steps:
            if exact is not None and s >= exact:
                candidates.append(exact)
                break
            candidates.append(s)
        candidates = [s for s in candidates if s > layer_sp]

        best: float | None = None
        best_acc = None
        for s in candidates:
            trial = copy.deepcopy(model)
            _prune_one(trial, t.name, names, s, criterion, ignore)
            acc = evaluate_accuracy(evaluate_fn, trial)
            del trial
            if acc >= floor:
                best, best_acc = s, acc
        if best is not None:
            _prune_one(model, t.name, names, best, criterion, ignore)
            acc = best_acc
        else:
            acc = rows[-1].accuracy if rows else baseline
        after = _zeros(t)
        rows.append(LayerStep(t.name, n, after / n, float(acc), after - before, best))
        current = _sparsity(model)

    return current


def prune_layerwise(
    model: nn.Module,
    target_sparsity: float,
    evaluate_fn: Callable[[nn.Module], float],
    *,
    max_drop: float = 0.01,
    steps: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99),
    criterion: str = "magnitude",
    ignore: Iterable[str] | None = (),
) -> LayerwiseReport:
    """Prune ``model`` in place layer by layer, output side first, under an accuracy budget.

    For each prunable layer (reverse module order), every sparsity in ``steps`` above the
    layer's current one is tried on a deep copy, pruning that layer alone
    (``pk.prune(copy, s, criterion=criterion, allocation="uniform", ignore=<other layers>)``);
    the largest one with ``evaluate_fn(copy) >= baseline - max_drop`` is applied to ``model``.
    Once a step would bring the overall sparsity (``pk.sparsity(model)``) to
    ``target_sparsity``, larger steps are replaced by the exact fraction needed, so the last
    layer is pruned only as far as the target asks; the walk then stops. Earlier masks and
    zeros are kept (masks only tighten). If ``evaluate_fn`` (or a pruning step) fails
    part-way, the model is put back exactly as it was (masks, weights and buffers) and a
    ``PruneError`` names the layer and the cause.

    Args:
        model: the module to prune (masked in place).
        target_sparsity: overall fraction of zero prunable weights to reach, in [0, 1).
        evaluate_fn: ``evaluate_fn(model) -> accuracy`` in [0, 1], on held-out data.
        max_drop: allowed accuracy drop below the baseline measured at the start (>= 0).
        steps: strictly increasing per-layer sparsities to try, each in (0, 1).
        criterion: a criterion name or instance accepted by :func:`prunekit.prune`
            (data-free ones, e.g. "magnitude").
        ignore: names or patterns of weights to leave alone.

    Returns:
        A :class:`LayerwiseReport`.
    """
    check_module(model)
    target, max_drop, steps = _check_args(target_sparsity, evaluate_fn, max_drop, steps)
    ignore = ignore_patterns(ignore)
    targets = [t for t in find_targets(model, ignore) if t.numel > 0]
    if not targets:
        raise PruneError(f"{type(model).__name__} has no prunable weights left after ignore={ignore}")
    names = [t.name for t in targets]
    total = sum(t.numel for t in find_targets(model))  # pk.sparsity(model) counts these

    baseline = evaluate_accuracy(evaluate_fn, model)
    rows: list[LayerStep] = []
    snapshot = ModelSnapshot(model)
    try:
        current = _walk(model, targets, names, total, target, baseline - max_drop, baseline, steps,
                        evaluate_fn, criterion, ignore, rows)
        final_acc = evaluate_accuracy(evaluate_fn, model)
    except BaseException as e:  # an interrupt too: never leave the model half-pruned
        snapshot.restore(model)
        if not isinstance(e, Exception):
            raise
        order = [t.name for t in reversed(targets)]
        at = f"at layer {order[len(rows)]!r}" if len(rows) < len(order) else "in the final evaluation"
        done = [r.name for r in rows if r.removed]
        raise PruneError(
            f"prune_layerwise stopped {at} ({type(e).__name__}: {e}); the model was put back as it was, "
            f"masks and weights" + (f", undoing the pruning of {done}" if done else "")
        ) from e
    return LayerwiseReport(
        baseline_accuracy=baseline,
        final_accuracy=final_acc,
        final_sparsity=current,
        target_sparsity=target,
        reached_target=current >= target,
        max_drop=max_drop,
        layers=rows,
    )
