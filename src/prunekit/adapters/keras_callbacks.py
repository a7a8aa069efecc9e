"""Keras 3 callbacks: :class:`MaskEnforcer` (re-apply masks after every batch) and
:class:`PruningCallback` (prune on a :mod:`prunekit.schedules` schedule inside ``model.fit``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import PruneTypeError
from ..granularity import NM, make as make_granularity
from ..schedules import Schedule, make as make_schedule
from .common import resolve
from .keras_base import keras, ops, variable
from .keras_masks import checked_mask, trust_stored_zeros, zero_slots
from .keras_prune import prune
from .keras_scores import check_criterion
from .keras_wrapper import wrappers

__all__ = ["MaskEnforcer", "PruningCallback"]


class MaskEnforcer(keras.callbacks.Callback):
    """Re-applies masks after every training batch, so pruned weights stay exactly zero
    whatever updates them (momentum and Adam moments keep pushing them).

    Masks recorded by :func:`prunekit.keras.prune` are already re-applied by Keras after
    every optimizer step; this callback also covers updates that bypass the optimizer and
    masks that were never recorded.

    Args:
        masks: ``{"layer/kernel": 0/1 array}``, e.g. ``prune(...).masks``.
    """

    def __init__(self, masks: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__()
        self.masks = {k: checked_mask(k, m) for k, m in (masks or {}).items()}  # 0/1 only, refused here
        self._tensors: list[tuple[Any, Any]] | None = None

    def _enforce(self) -> None:
        if not self.masks or self._tensors == []:
            return
        model = self.model  # on JAX, reading it syncs the training state into the variables
        if self._tensors is None:  # backend tensors once per mask set, not per batch
            # A PruneWrapper keeps its zeros itself: its masks multiply the weights in the
            # forward pass (masked weights get no gradient) and pruning zeroes their optimizer
            # slots (keras_masks.zero_slots), so nothing moves them; no per-batch work.
            inside = wrappers(model)
            todo = {k: m for k, m in self.masks.items() if k.rpartition("/")[0] not in inside}
            pairs = [(var, checked_mask(k, m, var)) for k, m in todo.items() for var in (variable(model, k),)]
            self._tensors = [(v, ops.cast(ops.convert_to_tensor(m), v.dtype)) for v, m in pairs]
        for var, m in self._tensors:
            var.assign(ops.multiply(var, m))

    def _refresh_slots(self) -> None:
        # On PyTorch, masked positions of Adam's second moments hold SECOND_MOMENT_FILL, not
        # 0 (its CPU square root is slow on zeros and subnormals): written when a mask is
        # applied, again here for an optimizer built since, and every epoch, before decay
        # brings them near subnormal values.
        if not self.masks or keras.backend.backend() != "torch":
            return
        model = self.model
        inside = wrappers(model)
        for key, m in self.masks.items():
            name, _, attr = key.rpartition("/")
            if name in inside and attr in inside[name].masked:
                zero_slots(model, variable(model, key), m, gradient_masked=True)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._tensors = None  # the callback may be reused with another model
        self._enforce()
        self._refresh_slots()
        # Wrapped weights: masked in storage now, so the training steps (TensorFlow, JAX)
        # mask their gradients only, until train end.
        trust_stored_zeros(self.model, True)

    def on_train_end(self, logs: dict | None = None) -> None:
        trust_stored_zeros(self.model, False)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._refresh_slots()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._enforce()


class PruningCallback(MaskEnforcer):
    """Prune during ``model.fit`` on a schedule, and keep the zeros after every batch.

    The step is counted in training batches seen by this callback (0 at its first batch),
    so a schedule's ``begin``/``end`` are relative to when pruning starts; ``step`` can be
    set to resume. Each re-pruning keeps every earlier zero.

    Args:
        schedule: a :mod:`prunekit.schedules` schedule (``Gradual(0.9, end=400, frequency=40)``)
            or its config dict with a ``"name"`` key.
        criterion, granularity, allocation, ignore, data, loss, min_keep, seed: as in
            :func:`prunekit.keras.prune`; checked here (a :class:`~prunekit.errors.PruneError`
            before ``fit`` starts), as is ``data`` for a criterion that needs it.
        masks: masks to start from (e.g. an earlier one-shot pruning).

    Attributes:
        step: the next training step. ``sparsity_``: the last sparsity reached.
        result_: the last :class:`~prunekit.keras.KerasPruneResult` (with its coverage).
    """

    def __init__(
        self,
        schedule: Schedule | Mapping[str, Any],
        *,
        criterion: str = "magnitude",
        granularity: str = "unstructured",
        allocation: str = "global",
        ignore: Iterable[str] = (),
        data: Any = None,
        loss: Any = None,
        min_keep: int = 1,
        seed: int = 0,
        masks: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__(masks)
        if isinstance(schedule, Mapping):
            cfg = dict(schedule)
            schedule = make_schedule(cfg.pop("name", None), **cfg)
        if not callable(schedule):
            raise PruneTypeError(f"schedule must be a prunekit Schedule or its config dict, got {type(schedule).__name__}")
        self.schedule = schedule
        # checked now, with prune's errors, not at the first pruning step after fit has trained
        gran = "channel" if isinstance(granularity, str) and granularity == "neuron" else granularity
        nm = isinstance(make_granularity(gran), NM)
        cfg = resolve(None if nm else 0.0, criterion, gran, allocation, min_keep, where="prunekit.keras")
        check_criterion(cfg.criterion, data)
        self.criterion, self.granularity, self.allocation = criterion, granularity, allocation
        self.ignore = tuple(ignore) if not isinstance(ignore, str) else (ignore,)
        self.data, self.loss, self.min_keep, self.seed = data, loss, min_keep, seed
        self.step = 0
        self.sparsity_ = 0.0
        self.result_: Any = None
        self._target = 0.0

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        now, target = self.schedule(self.step)
        if now and target > self._target:
            result = prune(
                self.model, target, criterion=self.criterion, granularity=self.granularity,
                allocation=self.allocation, ignore=self.ignore, data=self.data, loss=self.loss,
                masks=self.masks, min_keep=self.min_keep, seed=self.seed,
            )
            self.masks = {**self.masks, **result.masks}
            self._tensors = None
            self._target, self.sparsity_, self.result_ = target, result.sparsity, result

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._enforce()
        self.step += 1

    def get_config(self) -> dict[str, Any]:
        """JSON-able arguments (not data or masks); ``PruningCallback(**config)`` rebuilds it."""
        sched = {"name": getattr(self.schedule, "name", type(self.schedule).__name__), **self.schedule.get_config()}
        return {"schedule": sched, "criterion": self.criterion, "granularity": self.granularity,
                "allocation": self.allocation, "ignore": list(self.ignore), "min_keep": self.min_keep, "seed": self.seed}
