"""Training callbacks that prune on a schedule.

They work with :func:`prunekit.train.fit` (``callbacks=[...]``) and from a plain loop:
call ``cb.on_step_end(step, model, loss)`` after each optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .api import Pruner
from .schedules import Schedule, make


class PruningCallback:
    """Prune ``model`` whenever ``schedule`` says so, to the sparsity it gives for the step.

    Each pruning is a :class:`prunekit.Pruner` fit; masks only ever tighten (earlier zeros
    stay), so a gradual schedule grows the sparsity step by step while training goes on.

    Args:
        schedule: a :class:`prunekit.schedules.Schedule` or a name (with ``schedule_args``).
        data: calibration batches for data-driven criteria.
        loss_fn: loss for gradient-based criteria.
        example_inputs: passed to the pruner (used by channel granularity).
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
        **pruner_args: Any,
    ) -> None:
        self.schedule = make(schedule, **(schedule_args or {}))
        self.data = data
        self.loss_fn = loss_fn
        self.example_inputs = example_inputs
        self.pruner_args = pruner_args
        self.history: list[tuple[int, float]] = []
        if "sparsity" in pruner_args or "threshold" in pruner_args:
            raise TypeError("the schedule sets the sparsity; do not pass sparsity= or threshold=")
        Pruner(0.5, **pruner_args)._resolve()  # fail now, not at the first pruning step

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
