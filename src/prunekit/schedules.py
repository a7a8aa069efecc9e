"""Schedules: when pruning happens and how much, as pure functions of an explicit step.

Every schedule answers ``schedule(step) -> (prune_now, sparsity)`` and
``schedule.sparsity_at(step)``; nothing is stored between calls, so the training loop owns
the step counter (and checkpoints it). ``get_config()`` returns the constructor
arguments and ``type(s).from_config(s.get_config()) == s``; ``make(name, **kwargs)`` builds
any registered schedule by name.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from .errors import PruneError, PruneTypeError
from .registry import build, register, set_base


def _fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise PruneTypeError(f"{name} must be a finite number, got {value!r}")
    if not 0 <= float(value) < 1:
        raise PruneError(f"{name}={value!r} is outside [0, 1)")
    return float(value)


def _step(name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise PruneError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class Schedule:
    """Base class. Subclasses are frozen dataclasses implementing :meth:`sparsity_at` and
    :meth:`should_prune`."""

    name: ClassVar[str] = ""

    def sparsity_at(self, step: int) -> float:
        raise NotImplementedError

    def should_prune(self, step: int) -> bool:
        raise NotImplementedError

    def __call__(self, step: int) -> tuple[bool, float]:
        step = _step("step", step)
        return self.should_prune(step), self.sparsity_at(step)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments; ``from_config`` accepts exactly this dict."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Schedule:
        return cls(**config)

    @property
    def final_step(self) -> int:
        """The last step at which the schedule prunes."""
        raise NotImplementedError


@register("schedule", "oneshot")
@dataclass(frozen=True)
class OneShot(Schedule):
    """Prune once, to ``sparsity``, at ``step`` (0: before training or fine-tuning)."""

    sparsity: float
    step: int = 0

    def __post_init__(self) -> None:
        _fraction("sparsity", self.sparsity)
        _step("step", self.step)

    def sparsity_at(self, step: int) -> float:
        return self.sparsity if step >= self.step else 0.0

    def should_prune(self, step: int) -> bool:
        return step == self.step

    @property
    def final_step(self) -> int:
        return self.step


@register("schedule", "iterative")
@dataclass(frozen=True)
class Iterative(Schedule):
    """``rounds`` pruning steps to the final target, ``every`` steps apart starting at
    ``begin``, with fine-tuning in between. Each round removes the same fraction of the
    weights still alive, so round r reaches 1 − (1 − sparsity)^(r / rounds) (Han et al. 2015;
    the lottery-ticket procedure)."""

    sparsity: float
    rounds: int = 3
    every: int = 1000
    begin: int = 0

    def __post_init__(self) -> None:
        _fraction("sparsity", self.sparsity)
        _step("rounds", self.rounds, 1)
        _step("every", self.every, 1)
        _step("begin", self.begin)

    def _round(self, step: int) -> int:
        if step < self.begin:
            return 0
        return min(self.rounds, (step - self.begin) // self.every + 1)

    def sparsity_at(self, step: int) -> float:
        r = self._round(step)
        return 1.0 - (1.0 - self.sparsity) ** (r / self.rounds) if r else 0.0

    def should_prune(self, step: int) -> bool:
        k = step - self.begin
        return k >= 0 and k % self.every == 0 and k // self.every < self.rounds

    @property
    def final_step(self) -> int:
        return self.begin + (self.rounds - 1) * self.every


@register("schedule", "gradual")
@dataclass(frozen=True)
class Gradual(Schedule):
    """Zhu & Gupta (2017), "To prune, or not to prune": sparsity ramps from ``initial`` at
    ``begin`` to ``sparsity`` at ``end`` as s_t = s_f + (s_i − s_f)(1 − (t − begin)/(end − begin))^power,
    pruning every ``frequency`` steps (power 3 is their cubic schedule; 1 is linear)."""

    sparsity: float
    begin: int = 0
    end: int = 1000
    frequency: int = 100
    initial: float = 0.0
    power: float = 3.0

    def __post_init__(self) -> None:
        _fraction("sparsity", self.sparsity)
        _fraction("initial", self.initial)
        _step("begin", self.begin)
        _step("end", self.end)
        _step("frequency", self.frequency, 1)
        if self.end <= self.begin:
            raise PruneError(f"end={self.end} must be after begin={self.begin}")
        if self.initial > self.sparsity:
            raise PruneError(f"initial={self.initial} is above the final sparsity={self.sparsity}")
        if isinstance(self.power, bool) or not isinstance(self.power, numbers.Real) or self.power <= 0:
            raise PruneError(f"power must be a positive number, got {self.power!r}")

    def sparsity_at(self, step: int) -> float:
        if step < self.begin:
            return 0.0
        t = min(step, self.end)
        frac = (t - self.begin) / (self.end - self.begin)
        return self.sparsity + (self.initial - self.sparsity) * (1.0 - frac) ** self.power

    def should_prune(self, step: int) -> bool:
        if step < self.begin or step > self.end:
            return False
        return (step - self.begin) % self.frequency == 0 or step == self.end

    @property
    def final_step(self) -> int:
        return self.end


def make(spec: str | Schedule, **kwargs: Any) -> Schedule:
    """Build a schedule from a registered name (``"oneshot"``, ``"iterative"``,
    ``"gradual"``) and its arguments, or pass an instance through.

    Example:
        >>> make("gradual", sparsity=0.9, begin=0, end=1000, frequency=100)(500)
        (True, 0.7875)
    """
    return build("schedule", spec, **kwargs)


set_base("schedule", Schedule)
