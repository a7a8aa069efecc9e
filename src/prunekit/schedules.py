"""Schedules: when pruning happens and how much, as pure functions of an explicit step.

Every schedule answers ``schedule(step) -> (prune_now, sparsity)`` and
``schedule.sparsity_at(step)``; nothing is stored between calls, so the training loop owns
the step counter (and checkpoints it). ``get_config()`` returns the constructor
arguments and ``type(s).from_config(s.get_config()) == s``; ``make(name, **kwargs)`` builds
any registered schedule by name.

A schedule *degenerates* when it prunes fewer times than its kind promises: a gradual
ramp whose pruning window is shorter than its ``frequency``, or a gradual or iterative
schedule with a single pruning step, is one-shot pruning under another name. Building
such a schedule warns with a :class:`ScheduleWarning` that names the schedule, its steps
and frequency, and what to change. Whether a schedule degenerates within a run of a given
number of optimizer steps is known only where that number is: :meth:`Schedule.degeneracy`
and :meth:`Schedule.check` take it (``PruningCallback(..., steps=n)`` and
:func:`prunekit.compare.compare` use them).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from .errors import PruneError
from .registry import build, register, set_base
from .registry import from_config as registry_from_config
from .validate import fraction, integer, number


class ScheduleWarning(UserWarning):
    """A pruning schedule degenerates: its gradual ramp or iterative rounds collapse into a
    single pruning step (one-shot pruning under another name), or it never prunes within
    the steps of the run. The message names the schedule, the steps and the frequency, and
    what to change."""


@dataclass(frozen=True)
class Degeneracy:
    """Why a schedule degenerates, from :meth:`Schedule.degeneracy`.

    Attributes:
        problem: what the schedule does instead of what its kind promises.
        advice: what to change (more steps, a smaller frequency, more rounds).
        pruning_steps: the steps at which it prunes to a positive sparsity.
    """

    problem: str
    advice: str
    pruning_steps: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.problem}. {self.advice}."


def _steps(n: int) -> str:
    """``"1 step"`` / ``"5 steps"``."""
    return f"{n} step{'' if n == 1 else 's'}"


def _prunings(schedule: Schedule, steps: Iterable[int]) -> str:
    """``"once (step 10 -> 0.9)"`` / ``"2 times (...)"`` / ``"never"``."""
    steps = list(steps)
    if not steps:
        return "never"
    what = ", ".join(f"step {t} -> {schedule.sparsity_at(t):.4g}" for t in steps)
    return f"{'once' if len(steps) == 1 else f'{len(steps)} times'} ({what})"


class Schedule:
    """Base class. Subclasses are frozen dataclasses implementing :meth:`sparsity_at`,
    :meth:`should_prune` and :attr:`final_step` (and :meth:`degeneracy` where a setting can
    make them degenerate)."""

    name: ClassVar[str] = ""

    def sparsity_at(self, step: int) -> float:
        raise NotImplementedError

    def should_prune(self, step: int) -> bool:
        raise NotImplementedError

    def __call__(self, step: int) -> tuple[bool, float]:
        step = integer("step", step, minimum=0)
        return self.should_prune(step), self.sparsity_at(step)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments; ``from_config`` accepts exactly this dict."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Schedule:
        """Rebuild a schedule from :meth:`get_config` output (a bad key names what it takes)."""
        return registry_from_config("schedule", cls, config)

    @property
    def final_step(self) -> int:
        """The last step at which the schedule prunes."""
        raise NotImplementedError

    def _candidate_steps(self, last: int) -> Iterator[int]:
        """Steps up to ``last`` that may prune (a superset of those that do)."""
        return iter(range(0, last + 1))

    def pruning_steps(self, steps: int | None = None) -> list[int]:
        """The steps at which the schedule prunes to a positive sparsity, in order.

        Args:
            steps: optimizer steps of the run; only the steps such a run reaches count
                (0 .. ``steps``, numbered as :class:`prunekit.callbacks.PruningCallback`
                does: step 0 is before the first optimizer step). None: the whole schedule.
        """
        last = self.final_step if steps is None else min(self.final_step, integer("steps", steps, minimum=0))
        return [t for t in self._candidate_steps(last) if self.should_prune(t) and self.sparsity_at(t) > 0]

    def degeneracy(self, steps: int | None = None) -> Degeneracy | None:
        """Why the schedule degenerates (with ``steps``: in a run of that many optimizer
        steps), or None when it does not. The base class never degenerates."""
        return None

    def check(self, steps: int | None = None, *, stacklevel: int = 1) -> Degeneracy | None:
        """Warn with a :class:`ScheduleWarning` if the schedule degenerates (see
        :meth:`degeneracy`); returns the reason, or None.

        Args:
            steps: optimizer steps of the run, when known.
            stacklevel: frames above the caller of ``check`` the warning points at.
        """
        found = self.degeneracy(steps)
        if found is not None:
            warnings.warn(str(found), ScheduleWarning, stacklevel=stacklevel + 1)
        return found


@register("schedule", "oneshot")
@dataclass(frozen=True)
class OneShot(Schedule):
    """Prune once, to ``sparsity``, at ``step`` (0: before training or fine-tuning)."""

    sparsity: float
    step: int = 0

    def __post_init__(self) -> None:
        fraction("sparsity", self.sparsity)
        integer("step", self.step, minimum=0)

    def sparsity_at(self, step: int) -> float:
        return self.sparsity if step >= self.step else 0.0

    def should_prune(self, step: int) -> bool:
        return step == self.step

    @property
    def final_step(self) -> int:
        return self.step

    def _candidate_steps(self, last: int) -> Iterator[int]:
        return iter([self.step] if self.step <= last else [])

    def degeneracy(self, steps: int | None = None) -> Degeneracy | None:
        """A one-shot schedule degenerates only in a run too short to reach its ``step``."""
        if steps is None or self.sparsity == 0 or self.pruning_steps(steps):
            return None
        return Degeneracy(
            f"oneshot schedule {self!r} never prunes in a run of {_steps(steps)}: it prunes at step {self.step}",
            f"Run at least {self.step} steps (more epochs) or use step <= {steps}",
            (),
        )


@register("schedule", "iterative")
@dataclass(frozen=True)
class Iterative(Schedule):
    """``rounds`` pruning steps to the final target, ``every`` steps apart starting at
    ``begin``, with fine-tuning in between. Each round removes the same fraction of the
    weights still alive, so round r reaches 1 − (1 − sparsity)^(r / rounds) (Han et al. 2015;
    the lottery-ticket procedure).

    ``rounds=1`` is one-shot pruning: building it warns with a :class:`ScheduleWarning`."""

    sparsity: float
    rounds: int = 3
    every: int = 1000
    begin: int = 0

    def __post_init__(self) -> None:
        fraction("sparsity", self.sparsity)
        integer("rounds", self.rounds, minimum=1)
        integer("every", self.every, minimum=1)
        integer("begin", self.begin, minimum=0)
        self.check(stacklevel=3)

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

    def _candidate_steps(self, last: int) -> Iterator[int]:
        return iter(range(self.begin, last + 1, self.every))

    def degeneracy(self, steps: int | None = None) -> Degeneracy | None:
        """Degenerate when it prunes at most once: ``rounds=1``, or a run of ``steps`` that
        ends before the second round."""
        if self.sparsity == 0:
            return None
        events = self.pruning_steps(steps)
        if len(events) >= 2:
            return None
        pruned = _prunings(self, events)
        if self.rounds == 1:
            return Degeneracy(
                f"iterative schedule {self!r} prunes {pruned}: with rounds=1 it is one-shot pruning",
                "Use rounds >= 2 (or the oneshot schedule)",
                tuple(events),
            )
        room = (steps or 0) - self.begin  # steps is not None here: rounds >= 2 prune twice otherwise
        smaller = f" or every <= {room // (self.rounds - 1)}" if room >= self.rounds - 1 else ""
        return Degeneracy(
            f"iterative schedule {self!r} prunes {pruned} in a run of {_steps(steps or 0)}: its rounds are "
            f"every={self.every} steps apart from step {self.begin}, so only {len(events)} of its "
            f"{self.rounds} rounds fall{'s' if len(events) == 1 else ''} in the run",
            f"Run at least {self.final_step} steps (more epochs){smaller}",
            tuple(events),
        )


@register("schedule", "gradual")
@dataclass(frozen=True)
class Gradual(Schedule):
    """Zhu & Gupta (2017), "To prune, or not to prune": sparsity ramps from ``initial`` at
    ``begin`` to ``sparsity`` at ``end`` as s_t = s_f + (s_i − s_f)(1 − (t − begin)/(end − begin))^power,
    pruning every ``frequency`` steps (power 3 is their cubic schedule; 1 is linear).

    A window ``end - begin`` shorter than ``frequency``, or with room for a single pruning,
    is one-shot pruning rather than a ramp: building it warns with a :class:`ScheduleWarning`
    that names the window, the frequency and the values that give a ramp."""

    sparsity: float
    begin: int = 0
    end: int = 1000
    frequency: int = 100
    initial: float = 0.0
    power: float = 3.0

    def __post_init__(self) -> None:
        fraction("sparsity", self.sparsity)
        fraction("initial", self.initial)
        integer("begin", self.begin, minimum=0)
        integer("end", self.end, minimum=0)
        integer("frequency", self.frequency, minimum=1)
        if self.end <= self.begin:
            raise PruneError(f"end={self.end} must be after begin={self.begin}")
        if self.initial > self.sparsity:
            raise PruneError(f"initial={self.initial} is above the final sparsity={self.sparsity}")
        number("power", self.power, lo=0.0, lo_open=True)
        self.check(stacklevel=3)

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

    def _candidate_steps(self, last: int) -> Iterator[int]:
        yield from range(self.begin, last + 1, self.frequency)
        if self.end <= last and (self.end - self.begin) % self.frequency:
            yield self.end

    def degeneracy(self, steps: int | None = None) -> Degeneracy | None:
        """Degenerate when the pruning window (``begin`` .. ``end``, cut at ``steps`` when
        given) holds fewer steps than ``frequency``, or when the ramp prunes at most once."""
        if self.sparsity == 0:
            return None
        last = self.end if steps is None else min(self.end, integer("steps", steps, minimum=0))
        window = max(0, last - self.begin)
        events = self.pruning_steps(steps)
        if window >= self.frequency and len(events) >= 2:
            return None
        run = "" if steps is None else f" in a run of {_steps(steps)}"
        if window < self.frequency:
            why = f"has {_steps(window)}, fewer than frequency={self.frequency}"
        else:
            why = f"has {_steps(window)}, room for only one pruning at frequency={self.frequency}"
        if not events:
            what = "so it never prunes"
        else:
            what = f"so it prunes {_prunings(self, events)}: " + ("one-shot pruning, not a ramp" if len(events) == 1
                                                                  else "no ramp")
        problem = (f"gradual schedule {self!r} degenerates{run}: its pruning window (step {self.begin} to "
                   f"{last}) {why}, {what}")
        fixes = []
        if window // 4 >= 1:
            fixes.append(f"a smaller frequency (<= {window // 4})")
        if steps is not None and steps < self.end:
            fixes.insert(0, f"more steps (at least {self.end}: more epochs)")
        else:
            fixes.append(f"a longer window (end - begin >= {4 * self.frequency}: more steps, more epochs)")
        return Degeneracy(problem, "Use " + " or ".join(fixes), tuple(events))


@contextlib.contextmanager
def printed_warnings(emit: Callable[[str], None], category: type[Warning] = ScheduleWarning) -> Iterator[None]:
    """Within the block, pass every warning of ``category`` to ``emit`` (one line each, as
    it happens) instead of the usual display; other warnings are shown as usual.

    Example:
        >>> with printed_warnings(lambda m: print("warning:", m)):
        ...     Gradual(0.9, end=10, frequency=25)
        warning: gradual schedule Gradual(...) degenerates: ...
    """
    with warnings.catch_warnings():
        warnings.simplefilter("always", category)
        shown = warnings.showwarning

        def show(message: Warning | str, cat: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
            if issubclass(cat, category):
                emit(" ".join(str(message).split()))
            else:
                shown(message, cat, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def make(spec: str | Schedule, **kwargs: Any) -> Schedule:
    """Build a schedule from a registered name (``"oneshot"``, ``"iterative"``,
    ``"gradual"``) and its arguments, or pass an instance through.

    Example:
        >>> make("gradual", sparsity=0.9, begin=0, end=1000, frequency=100)(500)
        (True, 0.7875)
    """
    return build("schedule", spec, **kwargs)


set_base("schedule", Schedule)
