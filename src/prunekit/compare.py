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

This module holds the loop that trains and measures every method; what a comparison is
(:class:`Recipe`, :class:`Row`, the method names, :func:`format_rows`,
:func:`planned_steps`) lives in :mod:`prunekit.compare_recipe` and is re-exported here.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from . import regularizers
from .api import prune, sparsity as measured_sparsity
from .callbacks import LRScheduler, PruningCallback
from .compare_recipe import DENSE, METHODS, Recipe, Row, degenerate_schedules
from .compare_recipe import DECAYS, format_rows, planned_steps  # noqa: F401  (defined there; public here too)
from .errors import PruneError, PruneTypeError, unknown
from .metrics import measure
from .schedules import Iterative, ScheduleWarning
from .train import evaluate, fit, make_optimizer, set_seed
from .validate import integer

__all__ = ["DENSE", "METHODS", "Recipe", "Row", "ShuffledBatches", "compare", "format_rows", "planned_steps"]


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
        self.batch_size = integer("batch_size", batch_size, minimum=1)
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


def _tensors(data: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, TensorDataset) and len(data.tensors) >= 2:
        return data.tensors[0], data.tensors[1]
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data[0], data[1]
    raise PruneTypeError(
        f"{name} must be a TensorDataset of (x, y) or an (x, y) pair of tensors, got {type(data).__name__}"
    )


_WARM = False  # set once this process has run one untimed training step (_Run.warm_up)


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

    def warm_up(self) -> None:
        """One untimed training step on a copy, so that the process's first-call costs (lazy
        imports, allocator, kernels) are not charged to the first method timed."""
        global _WARM
        if _WARM:
            return
        n = min(len(self.y), self.recipe.batch_size)
        model = copy.deepcopy(self.init)
        fit(model, [(self.x[:n], self.y[:n])], epochs=1, optimizer=make_optimizer(model, self.recipe.optimizer, 0.0, 0.0),
            progress=False)
        _WARM = True

    def method(self, name: str) -> tuple[nn.Module, dict[str, Any], float]:
        """Run one method; returns the final model, details and seconds spent."""
        r = self.recipe
        _, ft = r.phases
        self.warm_up()
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
    for message in degenerate_schedules(recipe, names, per_epoch):
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
