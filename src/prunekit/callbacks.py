"""Training callbacks: prune on a schedule, stop on an accuracy floor, decay the lr.

They work with :func:`prunekit.train.fit` (``callbacks=[...]``) and from a plain loop:
call ``cb.on_step_end(step, model, loss)`` after each optimizer step (and
``cb.on_epoch_end(epoch, model, logs)`` after each epoch where the callback uses it).

* :class:`PruningCallback`: prune whenever a :mod:`prunekit.schedules` schedule says so.
* :class:`AccuracyFloor`: evaluate on held-out data every epoch (or every N steps) and ask
  ``fit`` to stop once accuracy falls below a floor.
* :class:`LRScheduler`: step a ``torch.optim.lr_scheduler`` scheduler.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .api import Pruner
from .errors import PruneError, PruneTypeError
from .schedules import Gradual, Iterative, Schedule, ScheduleWarning, make
from .train import device_of, evaluate
from .validate import choice, fraction, integer


class PruningCallback:
    """Prune ``model`` whenever ``schedule`` says so, to the sparsity it gives for the step.

    Each pruning is a :class:`prunekit.Pruner` fit; masks only ever tighten (earlier zeros
    stay), so a gradual schedule grows the sparsity step by step while training goes on.

    Args:
        schedule: a :class:`prunekit.schedules.Schedule` or a name (with ``schedule_args``).
        data: calibration batches for data-driven criteria.
        loss_fn: loss for gradient-based criteria.
        example_inputs: passed to the pruner (used by channel granularity).
        steps: optimizer steps the run will take, when known. The schedule is then checked
            against it: a gradual ramp whose window holds fewer steps of the run than its
            frequency, or a gradual or iterative schedule that prunes only once (or never)
            within the run, warns with a :class:`prunekit.schedules.ScheduleWarning` naming
            the steps, the frequency and what to change. (A schedule that degenerates
            whatever the run length already warned when it was built.)
        pruner_args: any other :class:`prunekit.Pruner` argument (criterion, granularity,
            allocation, ignore, ...).

    Example:
        >>> cb = PruningCallback(Gradual(0.9, end=400, frequency=50), criterion="magnitude")
        >>> fit(model, train, epochs=2, callbacks=[cb])
    """

    def __init__(
        self,
        schedule: Schedule | str,
        *,
        data: Iterable | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        example_inputs: Any = None,
        schedule_args: dict[str, Any] | None = None,
        steps: int | None = None,
        **pruner_args: Any,
    ) -> None:
        self.schedule = make(schedule, **(schedule_args or {}))
        self.steps = None if steps is None else check_int("steps", steps, 0)
        self.data = data
        self.loss_fn = loss_fn
        self.example_inputs = example_inputs
        self.pruner_args = pruner_args
        self.history: list[tuple[int, float]] = []
        if "sparsity" in pruner_args or "threshold" in pruner_args:
            raise TypeError("the schedule sets the sparsity; do not pass sparsity= or threshold=")
        self._check_targets()  # fail now, not at a pruning step halfway through training
        if self.steps is not None and self.schedule.degeneracy() is None:
            self.schedule.check(self.steps, stacklevel=2)

    def _check_targets(self) -> None:
        """Resolve the pruner at the schedule's first and last targets (an N:M pattern, for
        one, takes only its own sparsity: a ramp toward it fails at its first step)."""
        steps = self.schedule.pruning_steps()
        checks = {s: float(self.schedule.sparsity_at(s)) for s in steps[:1] + steps[-1:]}
        checks = {s: t for s, t in checks.items() if t > 0} or {0: 0.5}
        for step, target in checks.items():
            try:
                Pruner(target, **self.pruner_args).resolve()
            except PruneError as e:
                raise PruneError(f"{type(self.schedule).__name__} prunes to sparsity {target:.4g} at step {step}, "
                                 f"which these pruner arguments refuse: {e}") from e

    def on_train_begin(self, model: nn.Module) -> None:
        """Prune at step 0 if the schedule starts there (pruning before training)."""
        self._maybe_prune(0, model)

    def on_step_end(self, step: int, model: nn.Module, loss: float | None = None) -> None:
        """``step`` is the 0-based index of the optimizer step just taken."""
        self._maybe_prune(step + 1, model)

    def _maybe_prune(self, step: int, model: nn.Module) -> None:
        now, target = self.schedule(step)
        if not now or target <= 0 or (self.history and self.history[-1][0] == step):
            return
        Pruner(target, **self.pruner_args).fit(
            model, data=self.data, loss_fn=self.loss_fn, example_inputs=self.example_inputs
        )
        self.history.append((step, target))

    def state_dict(self) -> dict[str, Any]:
        """Schedule config and pruning history, for checkpoints."""
        return {"schedule": type(self.schedule).name, "config": self.schedule.get_config(), "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the pruning history saved by :meth:`state_dict` (the schedule is pure)."""
        self.history = [(int(s), float(t)) for s, t in state["history"]]


def check_int(name: str, value: object, minimum: int) -> int:
    """An integer argument checked against a lower bound (:func:`prunekit.validate.integer`).

    Args:
        name: the argument's name, for the error message.
        value: the value given (a ``bool`` is refused; any ``numbers.Integral`` is accepted).
        minimum: the smallest value allowed.

    Returns:
        ``value`` as an ``int``.

    Raises:
        PruneTypeError: ``value`` is not an integer.
        PruneError: ``value`` is below ``minimum``.
    """
    return integer(name, value, minimum=minimum)


class AccuracyFloor:
    """Evaluate on held-out data while training and stop once accuracy falls below a floor.

    Every epoch (or every ``every`` optimizer steps) the model's top-1 accuracy on ``data``
    is measured with :func:`prunekit.train.evaluate`. When it is below ``floor`` for more
    than ``patience`` evaluations in a row, the callback sets ``stop_training``;
    :func:`prunekit.train.fit` then ends the run after the current step (the epoch is
    closed and ``on_epoch_end`` still called) and reports ``history["stopped"] = True``.

    Typical use: pruning during training (a :class:`PruningCallback` placed *before* this
    one in ``callbacks``) with a guard that ends the run as soon as the sparser model is no
    longer good enough, instead of spending the rest of the budget on it.

    Args:
        data: held-out data, in any form :func:`prunekit.train.evaluate` accepts (a Dataset,
            a re-iterable of ``(x, y)`` batches, or one ``(x, y)`` pair of tensors).
        floor: the lowest acceptable accuracy, a number in ``[0, 1]``.
        patience: evaluations below the floor tolerated in a row before stopping, an
            int >= 0 (0: stop at the first one).
        every: evaluate every ``every`` optimizer steps instead of at each epoch end;
            None (the default) evaluates once per epoch.
        batch_size: evaluation batch size when ``data`` is a Dataset.

    Attributes:
        history: ``(steps done, accuracy)`` of every evaluation.
        stop_training: True once the floor has been crossed ``patience + 1`` times in a row.
        stopped_step: steps done when the run was stopped (None while running).
        stopped_epoch: 0-based epoch in which the run was stopped (None while running).

    Example:
        >>> floor = AccuracyFloor(val, floor=0.95, patience=1)
        >>> history = fit(model, train, epochs=10, callbacks=[pruning, floor])
        >>> if history["stopped"]:
        ...     print(f"stopped in epoch {floor.stopped_epoch}: {floor.last_accuracy:.2%}")
    """

    def __init__(
        self,
        data: Any,
        floor: float,
        *,
        patience: int = 0,
        every: int | None = None,
        batch_size: int = 1000,
    ) -> None:
        if data is None:
            raise PruneTypeError("data must be held-out (x, y) data to evaluate on, got None")
        self.floor = fraction("floor", floor, one=True, hint="an accuracy")
        self.data = data
        self.patience = check_int("patience", patience, 0)
        self.every = None if every is None else check_int("every", every, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.history: list[tuple[int, float]] = []
        self.bad = 0
        self.stop_training = False
        self.stopped_step: int | None = None
        self.stopped_epoch: int | None = None

    def _check(self, steps: int, model: nn.Module) -> None:
        acc = evaluate(model, self.data, batch_size=self.batch_size, device=device_of(model))
        self.history.append((steps, acc))
        self.bad = self.bad + 1 if acc < self.floor else 0
        if self.bad > self.patience and not self.stop_training:
            self.stop_training = True
            self.stopped_step = steps

    def on_step_end(self, step: int, model: nn.Module, loss: float | None = None) -> None:
        """With ``every``: evaluate after every ``every``-th step."""
        if self.every is not None and not self.stop_training and (step + 1) % self.every == 0:
            self._check(step + 1, model)

    def on_epoch_end(self, epoch: int, model: nn.Module, logs: dict[str, Any]) -> None:
        """Without ``every``: evaluate at the end of each epoch. Records the stopping epoch."""
        if self.every is None and not self.stop_training:
            self._check(int(logs["steps"]), model)
        if self.stop_training and self.stopped_epoch is None:
            self.stopped_epoch = epoch

    @property
    def last_accuracy(self) -> float | None:
        """Accuracy of the latest evaluation (None before the first)."""
        return self.history[-1][1] if self.history else None

    def state_dict(self) -> dict[str, Any]:
        """Evaluations so far, the count below the floor and whether the run was stopped."""
        return {
            "floor": self.floor,
            "patience": self.patience,
            "every": self.every,
            "history": list(self.history),
            "bad": self.bad,
            "stop_training": self.stop_training,
            "stopped_step": self.stopped_step,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; a stopped run stays stopped on resume."""
        self.history = [(int(s), float(a)) for s, a in state["history"]]
        self.bad = int(state["bad"])
        self.stop_training = bool(state["stop_training"])
        self.stopped_step = state["stopped_step"]
        self.stopped_epoch = state["stopped_epoch"]


class LRScheduler:
    """Step a ``torch.optim.lr_scheduler`` scheduler from :func:`prunekit.train.fit`.

    ``fit`` builds its own optimizer unless it is given one; to decay the learning rate,
    build the optimizer, wrap a scheduler over it here, and pass both to ``fit``.

    Args:
        scheduler: any ``torch.optim.lr_scheduler.LRScheduler`` (``CosineAnnealingLR``,
            ``LambdaLR``, ...), already attached to the optimizer passed to ``fit``.
        interval: ``"step"`` (call ``scheduler.step()`` after every optimizer step) or
            ``"epoch"`` (after every epoch).

    Example:
        >>> opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        >>> cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(train_batches))
        >>> fit(model, train_batches, epochs=epochs, optimizer=opt, callbacks=[LRScheduler(cos)])
    """

    INTERVALS = ("step", "epoch")

    def __init__(self, scheduler: Any, *, interval: str = "step") -> None:
        if not callable(getattr(scheduler, "step", None)) or not hasattr(scheduler, "state_dict"):
            raise PruneTypeError(
                f"scheduler must be a torch.optim.lr_scheduler scheduler, got {type(scheduler).__name__}"
            )
        choice("interval", interval, self.INTERVALS)
        self.scheduler = scheduler
        self.interval = interval

    def on_step_end(self, step: int, model: nn.Module, loss: float | None = None) -> None:
        if self.interval == "step":
            self.scheduler.step()

    def on_epoch_end(self, epoch: int, model: nn.Module, logs: dict[str, Any]) -> None:
        if self.interval == "epoch":
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's own state (its step count and current learning rates)."""
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def warmup_cosine(optimizer: torch.optim.Optimizer, total: int, warmup: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler for :class:`LRScheduler` (``interval="step"``): the learning rate rises
    linearly over the first ``warmup`` steps, then follows a cosine from the optimizer's
    rate to 0 at step ``total``.

    Example:
        >>> opt = torch.optim.Adam(model.parameters(), lr=3e-4)
        >>> fit(model, batches, optimizer=opt, callbacks=[LRScheduler(warmup_cosine(opt, steps, steps // 20))])
    """
    total = integer("total", total, minimum=1)
    warmup = integer("warmup", warmup, minimum=0)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def training_schedule(name: str, sparsity: float, steps: int) -> Schedule:
    """The schedule :func:`prune_on_schedule` follows over a run of ``steps`` optimizer
    steps: ``"gradual"`` (Zhu & Gupta ramp over the first 3/4 of the steps, about 15 prunings
    when there are enough steps) or ``"iterative"`` (3 rounds at 0, 1/3 and 2/3 of the
    steps). Building it does not warn; call ``.degeneracy(steps)`` to check it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScheduleWarning)
        if name == "gradual":
            return Gradual(sparsity, begin=0, end=max(1, (3 * steps) // 4), frequency=max(1, steps // 20))
        if name == "iterative":
            return Iterative(sparsity, rounds=3, every=max(1, steps // 3), begin=0)
    raise PruneError(f"schedule {name!r} is not one of ['gradual', 'iterative']")


def degenerate_training(name: str, sparsity: float, epochs: int, per_epoch: int,
                        epochs_name: str = "epochs") -> str | None:
    """The warning for :func:`prune_on_schedule` with schedule ``name`` over ``epochs`` of
    ``per_epoch`` optimizer steps, when that schedule prunes only once (or never); None
    when it does not degenerate. ``epochs_name`` is how the caller calls its epochs."""
    if name not in ("gradual", "iterative") or not sparsity:
        return None
    total = epochs * per_epoch
    found = training_schedule(name, sparsity, total).degeneracy(total)
    if found is None:
        return None
    need = next((e for e in range(epochs + 1, epochs + 1000)
                 if training_schedule(name, sparsity, e * per_epoch).degeneracy(e * per_epoch) is None), None)
    advice = f"{epochs_name} >= {need}" if need is not None else f"more {epochs_name}"
    return (f"{found.problem} ({epochs_name}={epochs}, {per_epoch} optimizer step{'' if per_epoch == 1 else 's'} each). "
            f"Use {advice}, or the oneshot schedule.")


def prune_on_schedule(
    model: nn.Module,
    train: Any,
    sparsity: float | None,
    *,
    schedule: str = "oneshot",
    epochs: int = 0,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    calib: Iterable | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    example_inputs: Any = None,
    progress: bool = False,
    **pruner_args: Any,
):
    """Prune ``model`` to ``sparsity`` once ("oneshot", then train ``epochs``), or while
    training ``epochs`` ("gradual": Zhu & Gupta ramp over the first 3/4 of the steps;
    "iterative": 3 rounds at 0, 1/3 and 2/3 of the steps). Returns the last PruneResult.

    A "gradual" or "iterative" run too short for its schedule (fewer than 3 optimizer
    steps for "gradual", none for "iterative") prunes only once, like "oneshot": it warns
    with a :class:`prunekit.schedules.ScheduleWarning` naming the steps, the frequency
    and the epochs needed."""
    from . import api
    from .train import fit

    if schedule == "oneshot":
        res = api.prune(model, sparsity, data=calib, loss_fn=loss_fn, example_inputs=example_inputs, **pruner_args)
        if epochs:
            fit(model, train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
        return res
    if pruner_args.get("threshold") is not None:
        raise PruneError(f"schedule {schedule!r} needs a sparsity, not a threshold")
    integer("epochs", epochs, minimum=1,
            hint=f"schedule {schedule!r} prunes while training; use the oneshot schedule to prune without training")
    per_epoch = math.ceil(len(train) / batch_size)
    sched = training_schedule(schedule, sparsity, epochs * per_epoch)
    message = degenerate_training(schedule, sparsity, epochs, per_epoch)
    if message is not None:
        warnings.warn(message, ScheduleWarning, stacklevel=2)
    pruner_args = {k: v for k, v in pruner_args.items() if k != "threshold"}
    cb = PruningCallback(sched, data=calib, loss_fn=loss_fn, example_inputs=example_inputs, **pruner_args)
    fit(model, train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress, callbacks=[cb])
    # Reaches the target if the run ended before the schedule did (masks only tighten, so
    # it is a no-op otherwise) and gives the caller a PruneResult.
    return api.prune(model, sparsity, data=calib, loss_fn=loss_fn, example_inputs=example_inputs, **pruner_args)
