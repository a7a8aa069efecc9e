"""Compare pruning schedules on one model, one data set and one epoch budget.

:func:`compare` trains the same initial model with every method below, on the same data in
the same order, for the same total number of epochs, and reports test accuracy, the
sparsity actually reached, the epochs used and the wall time of each.

Every method has two phases, the same length for all: a *training* phase of
``train_epochs`` epochs (Adam or SGD at ``lr``) and a *fine-tuning* phase of
``epochs - train_epochs`` epochs with the masks fixed (``finetune_lr`` decayed to zero
with a cosine by default). By default ``train_epochs = round(4/7 · epochs)``: 4 + 3 for a
7-epoch budget.

==============  ===========================================================================
method          training phase  →  fine-tuning phase
==============  ===========================================================================
``dense``       dense  →  dense (no pruning: the reference at the same budget)
``oneshot``     dense  →  prune once to the target, fine-tune
``iterative``   dense  →  k = fine-tune epochs rounds of (prune → 1 epoch of fine-tuning),
                each round removing the same fraction of what is left
                (:class:`~prunekit.schedules.Iterative`)
``gradual``     Zhu & Gupta ramp from 0 to the target during training
                (:class:`~prunekit.schedules.Gradual` through
                :class:`~prunekit.callbacks.PruningCallback`)  →  fine-tune
``l1``          L1 penalty (:mod:`prunekit.regularizers`)  →  magnitude threshold at the
                target, fine-tune without the penalty
``l2``          L2 penalty  →  the same threshold and fine-tuning
``combined``    L1 penalty and the gradual ramp together  →  fine-tune
==============  ===========================================================================

Pruning uses :func:`prunekit.prune` with ``criterion`` and ``allocation`` of the
:class:`Recipe`; the "threshold" of ``l1``/``l2`` is the magnitude cut that removes exactly
``sparsity`` of the weights. The dense training phase is computed once and shared by
``dense``, ``oneshot`` and ``iterative`` (each row's time includes it). The ``dense`` row,
the reference of every other, is always run and reported (first), unless ``baseline=False``.

A short budget can make a schedule degenerate into one-shot pruning: ``gradual`` and
``combined`` when the training phase has fewer optimizer steps than ``gradual_frequency``
(or room for only one pruning), ``iterative`` with a single fine-tuning epoch (one round).
:func:`compare` then warns with a :class:`prunekit.schedules.ScheduleWarning` naming the
method, the steps and the frequency, and the epochs or frequency that avoid it.

Example:
    >>> from prunekit import datasets, zoo
    >>> from prunekit.compare import Recipe, compare, format_rows
    >>> rows = compare(lambda: zoo.create("lenet300100", in_features=64),
    ...                datasets.load_digits("train"), datasets.load_digits("test"),
    ...                Recipe(sparsity=0.9, epochs=4))
    >>> print(format_rows(rows))
"""

from __future__ import annotations

import copy
import itertools
import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from . import regularizers
from .api import Pruner, prune, sparsity as measured_sparsity
from .callbacks import LRScheduler, PruningCallback, check_int
from .errors import PruneError, PruneTypeError, unknown
from .metrics import measure
from .schedules import Gradual, Iterative, ScheduleWarning
from .train import OPTIMIZERS, evaluate, fit, make_optimizer, set_seed

__all__ = ["DENSE", "METHODS", "Recipe", "Row", "ShuffledBatches", "compare", "format_rows", "planned_steps"]

DENSE = "dense"
METHODS = ("oneshot", "iterative", "gradual", "l1", "l2", "combined")
DECAYS = ("cosine", "constant")


class ShuffledBatches:
    """``(x, y)`` mini-batches sliced from two tensors, reshuffled on every pass.

    The order of pass ``k`` depends only on ``seed`` and ``k``, so two copies advanced by
    the same number of passes yield the same batches. Slicing tensors skips the per-example
    indexing and collation of a ``DataLoader``: an epoch of LeNet-300-100 on MNIST takes
    about a third of the time.

    Args:
        x: inputs, first dimension the examples.
        y: labels, as many as ``x``.
        batch_size: examples per batch, an int >= 1 (the last batch may be smaller).
        seed: seed of the shuffling.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 0) -> None:
        if len(x) != len(y) or len(y) == 0:
            raise PruneError(f"x and y must hold the same number (> 0) of examples, got {len(x)} and {len(y)}")
        self.x, self.y = x, y
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = int(seed)
        self.passes = 0

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.passes)
        self.passes += 1
        order = torch.randperm(len(self.y), generator=gen)
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            yield self.x[idx], self.y[idx]


def _number(name: str, value: object, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise PruneTypeError(f"{name} must be a finite number, got {type(value).__name__}: {value!r}")
    v = float(value)
    if v > hi or v < lo or (lo_open and v == lo):
        raise PruneError(f"{name}={value!r} is outside {'(' if lo_open else '['}{lo:g}, {hi:g}]")
    return v


@dataclass(frozen=True)
class Recipe:
    """Budget and settings shared by every method of :func:`compare`.

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
        if _number("sparsity", self.sparsity, 0.0, math.inf) >= 1:
            raise PruneError(f"sparsity={self.sparsity!r} is outside [0, 1)")
        epochs = check_int("epochs", self.epochs, 2)
        if self.train_epochs is not None:
            t = check_int("train_epochs", self.train_epochs, 1)
            if t >= epochs:
                raise PruneError(
                    f"train_epochs={t} leaves no fine-tuning in epochs={epochs}; use 1 .. {epochs - 1}"
                )
        check_int("batch_size", self.batch_size, 1)
        if self.optimizer not in OPTIMIZERS:
            raise unknown("optimizer", self.optimizer, OPTIMIZERS)
        if self.decay not in DECAYS:
            raise unknown("decay", self.decay, DECAYS)
        for name in ("lr", "finetune_lr", "l1_strength", "l2_strength", "gradual_power"):
            _number(name, getattr(self, name), 0.0, math.inf, lo_open=True)
        _number("gradual_begin", self.gradual_begin, 0.0, 1.0)
        _number("gradual_end", self.gradual_end, 0.0, 1.0, lo_open=True)
        if self.gradual_begin >= self.gradual_end:
            raise PruneError(f"gradual_begin={self.gradual_begin!r} must be before gradual_end={self.gradual_end!r}")
        check_int("gradual_frequency", self.gradual_frequency, 1)
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
        optimizer steps. Built without warning: :func:`compare` checks it and warns in its
        own terms (epochs, ``gradual_frequency``)."""
        begin, end = self.ramp_bounds(steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ScheduleWarning)
            return Gradual(self.sparsity, begin=begin, end=end, frequency=self.gradual_frequency,
                           power=self.gradual_power)


def _phases(epochs: int, train_epochs: int | None) -> tuple[int, int]:
    t = train_epochs if train_epochs is not None else round(4 * epochs / 7)
    t = min(max(1, t), epochs - 1)
    return t, epochs - t


def _degenerate_schedules(recipe: Recipe, names: Sequence[str], per_epoch: int) -> list[str]:
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
    validation data when :func:`compare` got some; ``sparsity`` is measured on the final
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


def _tensors(data: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, TensorDataset) and len(data.tensors) >= 2:
        return data.tensors[0], data.tensors[1]
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data[0], data[1]
    raise PruneTypeError(
        f"{name} must be a TensorDataset of (x, y) or an (x, y) pair of tensors, got {type(data).__name__}"
    )


class _Run:
    """One seed of :func:`compare`: the shared data order, init and dense phase."""

    def __init__(self, model_fn: Callable[[], nn.Module], train: Any, recipe: Recipe, seed: int,
                 progress: Callable[[str, int], Any] | None = None) -> None:
        self.recipe, self.seed, self.progress = recipe, seed, progress
        self.label = ""  # the method running, for the progress bars
        self.x, self.y = _tensors(train, "train")
        set_seed(seed)
        self.init = model_fn()
        if not isinstance(self.init, nn.Module):
            raise PruneTypeError(f"model_fn must return a torch.nn.Module, got {type(self.init).__name__}")
        self.dense_phase: tuple[nn.Module, ShuffledBatches, float] | None = None

    def batches(self) -> ShuffledBatches:
        return ShuffledBatches(self.x, self.y, self.recipe.batch_size, seed=self.seed)

    def _fit(self, model: nn.Module, data: ShuffledBatches, epochs: int, lr: float, decay: str,
             loss_fn: Any = None, callbacks: Sequence[Any] = (), phase: str = "fine-tuning") -> None:
        opt = make_optimizer(model, self.recipe.optimizer, lr, 0.0)
        cbs = list(callbacks)
        if decay == "cosine":
            cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(data))
            cbs.append(LRScheduler(cos))
        bar = None
        if self.progress is not None:
            bar = self.progress(f"seed {self.seed} · {self.label} · {phase} {epochs} epoch{'s' * (epochs != 1)}",
                                epochs * len(data))
            cbs.append(bar)
        fit(model, data, epochs=epochs, optimizer=opt, loss_fn=loss_fn, progress=False, callbacks=cbs)
        finish = getattr(bar, "finish", None)
        if callable(finish):
            finish()

    def train_phase(self, loss: str | None = None, ramp: bool = False) -> tuple[nn.Module, ShuffledBatches]:
        """The training phase: dense, or with a penalty and/or the gradual ramp."""
        r = self.recipe
        model, data = copy.deepcopy(self.init), self.batches()
        t, _ = r.phases
        loss_fn = None
        if loss is not None:
            strength = r.l1_strength if loss == "l1" else r.l2_strength
            loss_fn = regularizers.make(loss, strength=strength).wrap(F.cross_entropy, model)
        cbs = []
        if ramp:  # a ramp too short for its frequency was reported by compare() already
            schedule = r.gradual_schedule(t * len(data))
            cbs.append(PruningCallback(schedule, criterion=r.criterion, allocation=r.allocation))
        self._fit(model, data, t, r.lr, "constant", loss_fn, cbs, phase="training")
        return model, data

    def dense(self) -> tuple[nn.Module, ShuffledBatches, float]:
        if self.dense_phase is None:
            self.label = "dense (shared)" if self.label != DENSE else DENSE
            start = time.perf_counter()
            model, data = self.train_phase()
            self.dense_phase = (model, data, time.perf_counter() - start)
        model, data, seconds = self.dense_phase
        # A shallow copy of the batches shares the tensors and continues at the same pass.
        return copy.deepcopy(model), copy.copy(data), seconds

    def method(self, name: str) -> tuple[nn.Module, dict[str, Any], float]:
        """Run one method; returns the final model, details and seconds spent."""
        r = self.recipe
        _, ft = r.phases
        start = time.perf_counter()
        shared = 0.0
        self.label = name
        detail: dict[str, Any] = {}
        cbs: list[Any] = []
        if name in (DENSE, "oneshot", "iterative"):
            model, data, shared = self.dense()
            self.label = name
            start = time.perf_counter()  # the dense phase is counted once, in `shared`
        elif name == "gradual":
            model, data = self.train_phase(ramp=True)
        elif name in ("l1", "l2"):
            model, data = self.train_phase(loss=name)
        elif name == "combined":
            model, data = self.train_phase(loss="l1", ramp=True)
        else:
            raise unknown("method", name, (DENSE, *METHODS))
        if name == "iterative":
            with warnings.catch_warnings():  # a single round was reported by compare() already
                warnings.simplefilter("ignore", ScheduleWarning)
                schedule = Iterative(r.sparsity, rounds=ft, every=len(data), begin=0)
            cbs.append(PruningCallback(schedule, criterion=r.criterion, allocation=r.allocation))
            detail["rounds"] = ft
        elif name != DENSE:
            detail["sparsity_before_cut"] = before = measured_sparsity(model)
            if before < r.sparsity - 1e-6:  # the ramps reach the target by themselves
                prune(model, r.sparsity, criterion=r.criterion, allocation=r.allocation)
        self._fit(model, data, ft, r.finetune_lr, r.decay, callbacks=cbs)
        return model, detail, time.perf_counter() - start + shared


def compare(
    model_fn: Callable[[], nn.Module],
    train: Any,
    test: Any,
    recipe: Recipe | None = None,
    *,
    methods: Iterable[str] = (DENSE, *METHODS),
    val: Any = None,
    seeds: Iterable[int] = (0,),
    log: Callable[[str], None] | None = None,
    baseline: bool = True,
    progress: Callable[[str, int], Any] | None = None,
) -> list[Row]:
    """Run every method on the same model, data and epoch budget; one :class:`Row` each.

    Before training, every schedule is checked against the budget: a ``gradual`` or
    ``combined`` ramp whose window holds fewer optimizer steps than ``gradual_frequency``
    (or a single pruning), or ``iterative`` with one fine-tuning epoch, is one-shot pruning
    under another name and warns with a :class:`prunekit.schedules.ScheduleWarning` that
    names the method, the steps, the frequency and the epochs or frequency to use.

    Args:
        model_fn: builds a fresh model; called once per seed after seeding, and every
            method starts from a copy of that model.
        train: training data, a ``TensorDataset`` of ``(x, y)`` or an ``(x, y)`` pair.
        test: data the reported ``accuracy`` is measured on (anything
            :func:`prunekit.train.evaluate` accepts).
        recipe: budget and settings (default :class:`Recipe()`: 99 %, 7 epochs).
        methods: names from ``("dense",) + METHODS``, in the order of the rows.
        baseline: add ``"dense"`` (first) when ``methods`` lacks it, so that every result
            has its unpruned reference, trained and evaluated the same way.
        val: optional validation data (``val_accuracy``); choose settings on it, not on test.
        seeds: one run of every method per seed (the seed fixes init and data order).
        log: called with one line per finished method, e.g. ``print``.
        progress: called at the start of every training or fine-tuning phase with its
            name ("seed 0 · gradual · training 4 epochs") and its optimizer steps; returns
            a :func:`prunekit.train.fit` callback, e.g. a stage of
            :class:`prunekit.progress.StageProgress` (its ``finish()`` is called at the
            end). :func:`planned_steps` gives the steps of the whole comparison.

    Returns:
        Rows in seed-major, then ``methods`` order.

    Example:
        >>> rows = compare(lambda: zoo.create("lenet300100"), train, test,
        ...                Recipe(sparsity=0.99, epochs=7), methods=("dense", "gradual"))
    """
    recipe = recipe if recipe is not None else Recipe()
    if not isinstance(recipe, Recipe):
        raise PruneTypeError(f"recipe must be a prunekit.compare.Recipe, got {type(recipe).__name__}")
    if not callable(model_fn):
        raise PruneTypeError(f"model_fn must be callable (returning a model), got {type(model_fn).__name__}")
    names = [methods] if isinstance(methods, str) else list(methods)
    for n in names:
        if n not in (DENSE, *METHODS):
            raise unknown("method", n, (DENSE, *METHODS))
    if not names:
        raise PruneError("methods is empty; choose from " + ", ".join((DENSE, *METHODS)))
    if baseline and DENSE not in names:
        names.insert(0, DENSE)
    if progress is not None and not callable(progress):
        raise PruneTypeError(f"progress must be callable (name, steps) -> fit callback, got {type(progress).__name__}")
    seed_list = [seeds] if isinstance(seeds, int) else list(seeds)
    rows: list[Row] = []
    t, ft = recipe.phases
    per_epoch = math.ceil(len(_tensors(train, "train")[1]) / recipe.batch_size)
    for message in _degenerate_schedules(recipe, names, per_epoch):
        warnings.warn(message, ScheduleWarning, stacklevel=2)
    for seed in seed_list:
        run = _Run(model_fn, train, recipe, seed, progress)
        for n in names:
            model, detail, seconds = run.method(n)
            with warnings.catch_warnings():  # the speed note is about latency, not measured here
                warnings.simplefilter("ignore", UserWarning)
                cost = measure(model, run.x[:1], latency=False)
            row = Row(
                method=n,
                accuracy=evaluate(model, test),
                sparsity=measured_sparsity(model),
                epochs=t + ft,
                train_epochs=t,
                finetune_epochs=ft,
                seconds=seconds,
                val_accuracy=evaluate(model, val) if val is not None else None,
                seed=seed,
                detail=detail,
                params=cost.params,
                nonzero_params=cost.nonzero_params,
                flops_effective=cost.flops_effective,
            )
            rows.append(row)
            if log is not None:
                v = "" if row.val_accuracy is None else f" val {row.val_accuracy:.4f}"
                log(f"[seed {seed}] {n:<9} test {row.accuracy:.4f}{v} sparsity {row.sparsity:.4f} "
                    f"epochs {t}+{ft} {seconds:.1f}s")
    return rows


def planned_steps(recipe: Recipe, methods: Iterable[str], n_train: int, seeds: int = 1,
                  baseline: bool = True) -> int:
    """The optimizer steps :func:`compare` takes for ``methods`` on ``n_train`` examples
    and ``seeds`` seeds (the dense training phase counted once per seed), for a progress
    bar of the whole comparison."""
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
