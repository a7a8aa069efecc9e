"""Progress bars that name the stage and show an ETA, on stderr (stdout stays clean for
tables and ``--json``).

One :class:`StageProgress` display holds an optional overall line ("run digits-quick",
"compare: 7 methods × 1 seed") and one line per stage ("stage 2/5 finetune 1 epoch"),
each with a bar, steps done out of the total, elapsed time and the time remaining::

    run digits-quick             ━━━━━━━━━━━╸━━━━━━━━━━  53/100            0:00:02 ETA 0:00:02
    stage 4/5 finetune 1 epoch   ━━━━━━━━━━━━━━━━━━━━━━━  23/ 50 loss 0.31  0:00:01 ETA 0:00:01

A stage is also a :func:`prunekit.train.fit` callback (``callbacks=[stage]``): every
optimizer step advances it and shows the loss. The display is drawn only when stderr is a
terminal; in a log file or a pipe it prints nothing.

This module imports neither torch nor the rest of prunekit.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

__all__ = ["Stage", "StageProgress", "console"]


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def console() -> Any:
    """The console progress is drawn on: stderr (tests replace this function)."""
    from rich.console import Console

    return Console(stderr=True)


class Stage:
    """One line of a :class:`StageProgress`; returned by :meth:`StageProgress.stage`.

    Call :meth:`advance` (or pass it to ``fit`` as a callback) as work is done, and
    :meth:`finish` at the end (leaving the stage as a block does it too)."""

    def __init__(self, owner: StageProgress, task: Any, total: int | None) -> None:
        self._owner, self._task, self.total, self.done = owner, task, total, 0

    def advance(self, steps: int = 1, info: str | None = None) -> None:
        """``steps`` more done; ``info`` (e.g. "loss 0.31") is shown after the count."""
        self.done += steps
        self._owner._advance(self._task, steps, info)

    def finish(self, info: str | None = None) -> None:
        """Mark the stage complete (an unfinished remainder also advances the overall line)."""
        left = (self.total - self.done) if self.total is not None else 0
        if left > 0:
            self.advance(left, info)
        self._owner._finish(self._task, info)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finish()

    # -- the fit() callback protocol -------------------------------------------------------
    def on_step_end(self, step: int, model: Any, loss: float | None = None) -> None:
        self.advance(1, None if loss is None else f"loss {loss:.4f}")


class StageProgress:
    """A progress display: an optional overall line and one line per stage.

    Args:
        enabled: False draws nothing (the stages still count, so code need not branch).
        title: the overall line's text; with ``total`` (the steps of all stages together)
            its bar and ETA cover the whole command.
        total: the steps of all stages together, or None (no overall bar).
        keep: leave a finished stage's line on screen (False: remove it, for commands
            with many stages, such as ``compare`` and ``search``).

    Example:
        >>> with StageProgress(title="run digits-quick", total=100) as bars:
        ...     with bars.stage("stage 1/2 finetune", total=50) as s:
        ...         fit(model, data, epochs=1, callbacks=[s], progress=False)
    """

    def __init__(self, enabled: bool = True, *, title: str | None = None, total: int | None = None,
                 keep: bool = True) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = console()
        self.enabled = bool(enabled) and self.console.is_terminal
        self.keep = keep
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.enabled,
            # Lines printed on stdout while the bars are drawn go above them when stdout is
            # the same terminal; piped stdout is left alone (it never reaches the terminal).
            redirect_stdout=_isatty(sys.stdout),
            redirect_stderr=True,
        )
        self._overall = self._progress.add_task(title, total=total, info="") if title is not None else None

    def __enter__(self) -> StageProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def stage(self, name: str, total: int | None = None) -> Stage:
        """A new line named ``name`` (e.g. "stage 2/5 finetune"), of ``total`` steps (None:
        a bar without a known length)."""
        task = self._progress.add_task(name, total=total, info="")
        return Stage(self, task, total)

    def __call__(self, name: str, total: int | None = None) -> Stage:
        """:meth:`stage`, so that the display can be passed where a function is expected
        (``compare(progress=...)``)."""
        return self.stage(name, total)

    def _advance(self, task: Any, steps: int, info: str | None) -> None:
        fields = {} if info is None else {"info": info}
        self._progress.update(task, advance=steps, **fields)
        if self._overall is not None:
            self._progress.update(self._overall, advance=steps)

    def _finish(self, task: Any, info: str | None) -> None:
        t = self._progress.tasks[[x.id for x in self._progress.tasks].index(task)]
        if t.total is None:
            self._progress.update(task, total=t.completed or 1, completed=t.completed or 1)
        if info is not None:
            self._progress.update(task, info=info)
        self._progress.stop_task(task)
        if not self.keep:
            self._progress.remove_task(task)


def fit_with_progress(name: str, model: Any, data: Any, *, epochs: int = 1, batch_size: int = 128,
                      enabled: bool = True, **fit_args: Any) -> dict[str, Any]:
    """:func:`prunekit.train.fit` with one progress line named ``name`` (with the epochs
    appended) showing the steps, the loss and the ETA; returns fit's history."""
    from prunekit.train import fit

    total = epochs * -(-len(data) // batch_size)
    label = f"{name}, {epochs} epoch{'s' * (epochs != 1)}"
    with StageProgress(enabled) as bars, bars.stage(label, max(total, 1)) as stage:
        return fit(model, data, epochs=epochs, batch_size=batch_size, progress=False,
                   callbacks=[*fit_args.pop("callbacks", ()), stage], **fit_args)
