"""The settings and results of :func:`prunekit.compare.compare`: :class:`Recipe`, :class:`Row`,
the methods' names, the schedules' degeneracy check, the step count and the text table.

Part of :mod:`prunekit.compare` (which re-exports these names; import them from there):
what a comparison is, apart from the loop that trains it.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .api import Pruner
from .errors import PruneError, unknown
from .schedules import Gradual, ScheduleWarning
from .train import OPTIMIZERS
from .validate import fraction, integer, number

__all__ = ["DECAYS", "DENSE", "METHODS", "Recipe", "Row", "degenerate_schedules", "format_rows", "planned_steps"]

DENSE = "dense"
METHODS = ("oneshot", "iterative", "gradual", "l1", "l2", "combined")
DECAYS = ("cosine", "constant")


@dataclass(frozen=True)
class Recipe:
    """Budget and settings shared by every method of :func:`prunekit.compare.compare`.

    The defaults are those chosen on MNIST's validation split for LeNet-300-100 at 99 %
    and 7 epochs (``benchmarks/schedules_mnist.py``); they are a starting point elsewhere.

    Args:
        sparsity: target fraction of prunable weights removed, in ``[0, 1)``.
        epochs: total epoch budget of every method, an int >= 2.
        train_epochs: epochs of the training phase, ``1 .. epochs - 1``; None:
            ``round(4/7 · epochs)``. The rest is fine-tuning.
        batch_size: mini-batch size.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum 0.9), for both phases.
        lr: learning rate of the training phase (constant).
        finetune_lr: learning rate at the start of the fine-tuning phase.
        decay: ``"cosine"`` (fine-tuning lr decays to 0 over the phase) or ``"constant"``.
        criterion: pruning criterion (magnitude-based methods need no data).
        allocation: how the target is split over layers (``"global"``, ``"lamp"``, ...).
        gradual_begin: where the gradual ramp starts, as a fraction of the training phase.
        gradual_end: where it reaches the target, as a fraction of the training phase.
        gradual_frequency: optimizer steps between two prunings of the ramp.
        gradual_power: exponent of the ramp (3: Zhu & Gupta's cubic).
        l1_strength: lambda of the L1 penalty (``l1`` and ``combined``).
        l2_strength: lambda of the L2 penalty (``l2``).
    """

    sparsity: float = 0.99
    epochs: int = 7
    train_epochs: int | None = None
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 3e-3
    finetune_lr: float = 1e-2
    decay: str = "cosine"
    criterion: str = "magnitude"
    allocation: str = "lamp"
    gradual_begin: float = 0.0
    gradual_end: float = 1.0
    gradual_frequency: int = 25
    gradual_power: float = 3.0
    l1_strength: float = 3e-4
    l2_strength: float = 1e-3

    def __post_init__(self) -> None:
        fraction("sparsity", self.sparsity)
        epochs = integer("epochs", self.epochs, minimum=2)
        if self.train_epochs is not None:
            t = integer("train_epochs", self.train_epochs, minimum=1)
            if t >= epochs:
                raise PruneError(
                    f"train_epochs={t} leaves no fine-tuning in epochs={epochs}; use 1 .. {epochs - 1}"
                )
        integer("batch_size", self.batch_size, minimum=1)
        if self.optimizer not in OPTIMIZERS:
            raise unknown("optimizer", self.optimizer, OPTIMIZERS)
        if self.decay not in DECAYS:
            raise unknown("decay", self.decay, DECAYS)
        for name in ("lr", "finetune_lr", "l1_strength", "l2_strength", "gradual_power"):
            number(name, getattr(self, name), lo=0.0, lo_open=True)
        fraction("gradual_begin", self.gradual_begin, one=True)
        fraction("gradual_end", self.gradual_end, one=True, zero=False)
        if self.gradual_begin >= self.gradual_end:
            raise PruneError(f"gradual_begin={self.gradual_begin!r} must be before gradual_end={self.gradual_end!r}")
        integer("gradual_frequency", self.gradual_frequency, minimum=1)
        Pruner(0.5, criterion=self.criterion, allocation=self.allocation).resolve()  # fail before training

    @property
    def phases(self) -> tuple[int, int]:
        """``(training epochs, fine-tuning epochs)``; they add up to ``epochs``."""
        return _phases(self.epochs, self.train_epochs)

    def ramp_bounds(self, steps: int) -> tuple[int, int]:
        """``(begin, end)`` of the gradual ramp in a training phase of ``steps`` optimizer steps."""
        begin = int(self.gradual_begin * steps)
        return begin, max(begin + 1, int(round(self.gradual_end * steps)))

    def gradual_schedule(self, steps: int) -> Gradual:
        """The ramp of ``gradual`` and ``combined`` over a training phase of ``steps``
        optimizer steps. Built without warning: :func:`~prunekit.compare.compare` checks it
        and warns in its own terms (epochs, ``gradual_frequency``)."""
        begin, end = self.ramp_bounds(steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ScheduleWarning)
            return Gradual(self.sparsity, begin=begin, end=end, frequency=self.gradual_frequency,
                           power=self.gradual_power)


def _phases(epochs: int, train_epochs: int | None) -> tuple[int, int]:
    t = train_epochs if train_epochs is not None else round(4 * epochs / 7)
    t = min(max(1, t), epochs - 1)
    return t, epochs - t


def degenerate_schedules(recipe: Recipe, names: Sequence[str], per_epoch: int) -> list[str]:
    """Warnings for the methods whose schedule collapses into one pruning step with this
    recipe and ``per_epoch`` optimizer steps per epoch (one message per problem)."""
    t, ft = recipe.phases
    messages = []
    ramp = [m for m in ("gradual", "combined") if m in names]
    steps = t * per_epoch
    found = recipe.gradual_schedule(steps).degeneracy(steps) if ramp else None
    if found is not None:
        begin, end = recipe.ramp_bounds(steps)
        window, freq = end - begin, recipe.gradual_frequency

        def wide_enough(train: int) -> bool:
            b, e = recipe.ramp_bounds(train * per_epoch)
            return e - b >= 4 * freq

        need = next(x for x in itertools.count(t + 1) if wide_enough(x))
        if recipe.train_epochs is None:
            total = next(e for e in itertools.count(recipe.epochs + 1) if _phases(e, None)[0] >= need)
            more = f"epochs >= {total}, i.e. a training phase of >= {need} epochs"
        else:
            more = f"train_epochs >= {need} and epochs >= {need + ft}"
        fixes = [f"more epochs ({more}, for a ramp of 4 or more prunings)"]
        if window >= 2:
            fixes.append(f"gradual_frequency <= {max(1, window // 4)}")
        how = (f"fewer than gradual_frequency={freq}" if window < freq
               else f"room for one pruning at gradual_frequency={freq}")
        when = ", ".join(f"step {x}" for x in found.pruning_steps) or "no step"
        methods = " and ".join(repr(m) for m in ramp)
        messages.append(
            f"{methods} degenerate{'s' if len(ramp) == 1 else ''} to one-shot pruning: the training phase has "
            f"{steps} optimizer step{'s' if steps != 1 else ''} ({t} epoch{'s' if t > 1 else ''} of {per_epoch} "
            f"batch{'es' if per_epoch != 1 else ''}), so the gradual ramp's window has {window} "
            f"step{'s' if window != 1 else ''}, {how}; it prunes only at {when} of {steps}, like 'oneshot'. "
            f"Use {' or '.join(fixes)}."
        )
    if "iterative" in names and ft < 2 and recipe.sparsity > 0:
        if recipe.train_epochs is None:
            total = next(e for e in itertools.count(recipe.epochs + 1) if _phases(e, None)[1] >= 2)
            fix = f"epochs >= {total}"
        else:
            fix = f"epochs >= {recipe.train_epochs + 2} with train_epochs={recipe.train_epochs}"
            if recipe.epochs - 2 >= 1:
                fix += f", or train_epochs <= {recipe.epochs - 2}"
        messages.append(
            f"'iterative' degenerates to one-shot pruning: it prunes once per fine-tuning epoch and the "
            f"fine-tuning phase has {ft} epoch ({per_epoch} optimizer step{'s' if per_epoch != 1 else ''}), so it "
            f"prunes once, like "
            f"'oneshot'. Give it at least 2 fine-tuning epochs: {fix}."
        )
    return messages


@dataclass
class Row:
    """One method's result. ``accuracy`` is on the test data, ``val_accuracy`` on the
    validation data when :func:`~prunekit.compare.compare` got some; ``sparsity`` is measured on the final
    model (:func:`prunekit.sparsity`); ``epochs`` = ``train_epochs + finetune_epochs``."""

    method: str
    accuracy: float
    sparsity: float
    epochs: int
    train_epochs: int
    finetune_epochs: int
    seconds: float
    val_accuracy: float | None = None
    seed: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    #: parameters, nonzero parameters and effective FLOPs (zeros skipped) of the final model
    params: int | None = None
    nonzero_params: int | None = None
    flops_effective: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def planned_steps(recipe: Recipe, methods: Iterable[str], n_train: int, seeds: int = 1,
                  baseline: bool = True) -> int:
    """The optimizer steps :func:`~prunekit.compare.compare` takes for ``methods`` on
    ``n_train`` examples and ``seeds`` seeds (the dense training phase counted once per
    seed), for a progress bar of the whole comparison."""
    names = [methods] if isinstance(methods, str) else list(methods)
    if baseline and DENSE not in names:
        names.insert(0, DENSE)
    t, ft = recipe.phases
    per_epoch = math.ceil(n_train / recipe.batch_size)
    shared = any(n in (DENSE, "oneshot", "iterative") for n in names)
    own = sum(n in ("gradual", "l1", "l2", "combined") for n in names)
    return seeds * per_epoch * (t * (int(shared) + own) + ft * len(names))


def format_rows(rows: Sequence[Row]) -> str:
    """A plain-text table: per method, mean ± std over seeds of accuracy, the difference to
    the ``dense`` row's mean in points (when there is a dense row), and the sparsity,
    epochs (training + fine-tuning) and mean wall time."""
    if not rows:
        raise PruneError("no rows to format")
    by: dict[str, list[Row]] = {}
    for r in rows:
        by.setdefault(r.method, []).append(r)
    has_val = all(r.val_accuracy is not None for r in rows)
    dense = by.get(DENSE)
    dense_mean = 100 * sum(r.accuracy for r in dense) / len(dense) if dense else None
    head = f"{'method':<10} {'test acc %':>14} " + (f"{'Δ dense pt':>10} " if dense else "")
    head += f"{'val acc %':>10} " if has_val else ""
    lines = [head + f"{'sparsity %':>10} {'epochs':>7} {'seconds':>8}"]
    for name, rs in by.items():
        accs = [100 * r.accuracy for r in rs]
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
        line = f"{name:<10} {mean:>7.2f} ± {std:4.2f} "
        if dense_mean is not None:
            line += f"{'—' if name == DENSE else f'{mean - dense_mean:+.2f}':>10} "
        if has_val:
            line += f"{100 * sum(r.val_accuracy for r in rs) / len(rs):>10.2f} "  # type: ignore[misc]
        sp = 100 * sum(r.sparsity for r in rs) / len(rs)
        line += f"{sp:>10.2f} {f'{rs[0].train_epochs}+{rs[0].finetune_epochs}':>7} "
        line += f"{sum(r.seconds for r in rs) / len(rs):>8.1f}"
        lines.append(line)
    return "\n".join(lines)
