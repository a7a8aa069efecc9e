"""The rules every ``prunekit`` command follows, in one place.

* A failure prints exactly one line, ``error: <what is wrong, naming the option and the
  value>``, on stderr and exits with status 2; ``PRUNEKIT_DEBUG=1`` lets the traceback of
  an unexpected error through instead. Ctrl-C prints ``error: interrupted; nothing
  written`` and exits 130.
* Every command is wrapped by :func:`handles_errors`: a :class:`~prunekit.errors.PruneError`
  it raises is such a failure (its message is the line), and the folders a failure would
  leave above its outputs are removed, so nothing is left on disk.
* Warnings print as ``warning: <message>`` lines on stderr (:func:`warn`), so ``--json``
  output and tables on stdout stay clean.
* Options, sources and input shapes are checked before any work starts
  (:mod:`prunekit.cli.checks`); where outputs go is checked by :mod:`prunekit.cli.output`.

This module imports neither torch nor the rest of prunekit at import time.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from typer.core import TyperGroup

try:  # recent typer carries its own copy of click
    from typer import _click as click
except ImportError:  # older typer runs on click itself
    import click  # type: ignore[no-redef]

EXIT_FAILURE = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "PRUNEKIT_DEBUG"

#: where every command prints its tables and progress lines (stdout)
console = Console()

_NoArgsIsHelp: type[BaseException] = getattr(click.exceptions, "NoArgsIsHelpError", type("_Never", (Exception,), {}))

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.exceptions.ClickException):
    """Bad input or a failed step: printed as one ``error:`` line, exit status 2."""

    exit_code = EXIT_FAILURE


class Interrupted(click.exceptions.ClickException):
    """Ctrl-C: printed as one ``error:`` line, exit status 130."""

    exit_code = EXIT_INTERRUPTED


def one_line(message: str) -> str:
    """``message`` on one line: a multi-line message (an invalid recipe's list of
    problems) is joined with "; ", runs of whitespace become one space."""
    parts = [" ".join(line.split()) for line in str(message).splitlines()]
    parts = [p for p in parts if p]
    text = parts[0] if parts else "failed"
    for p in parts[1:]:
        text += (" " if text.endswith(":") else "; ") + p
    return text


def fail(message: str) -> NoReturn:
    """Stop the command with ``error: message`` (one line) and exit status 2."""
    raise CliError(one_line(message))


def debugging() -> bool:
    """``PRUNEKIT_DEBUG`` is set (to anything but 0/false/no): let tracebacks through."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def describe(e: BaseException) -> str:
    """A one-line description of an unexpected exception."""
    from prunekit.errors import PruneError

    if isinstance(e, PruneError):
        return str(e)
    if isinstance(e, OSError) and e.filename is not None:
        return f"{os.fsdecode(e.filename)!r}: {e.strerror or e}"
    return f"{type(e).__name__}: {e} (set {DEBUG_ENV}=1 to see the traceback)"


def _interrupted_message(command: str | None) -> str:
    if command == "search":
        return "interrupted; the runs finished so far stay in the --results file (run the same command to resume)"
    return "interrupted; nothing written"


def warn(message: str) -> None:
    """Print ``warning: message`` (one line) on stderr."""
    sys.stderr.write(f"warning: {one_line(str(message))}\n")
    sys.stderr.flush()


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    warn(str(message))


def _raw_value(args: Sequence[str], opts: Sequence[str]) -> str | None:
    """The text given on the command line for an option spelled one of ``opts``."""
    for i, arg in enumerate(args):
        for opt in opts:
            if arg == opt and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(opt + "="):
                return arg[len(opt) + 1:]
    return None


def _usage_message(e: click.exceptions.UsageError, args: Sequence[str]) -> str:
    """One line for a usage error, naming the option and the value given."""
    text = e.format_message()
    param = getattr(e, "param", None)
    bad_value = isinstance(e, click.exceptions.BadParameter) and not isinstance(e, click.exceptions.MissingParameter)
    if bad_value and param is not None:
        opts = list(getattr(param, "opts", None) or [])
        name = opts[0] if opts else str(getattr(param, "name", "") or "").upper()
        raw = _raw_value(args, opts) if opts else None
        message = str(e.message)
        text = f"{name} {raw!r}: {message[:1].lower()}{message[1:]}" if raw is not None else f"{name}: {message}"
    text = one_line(text)
    text = text[:1].lower() + text[1:]
    if e.ctx is not None:
        text += f" (see '{e.ctx.command_path} --help')"
    return text


class Group(TyperGroup):
    """The ``prunekit`` command group: applies the failure rules of this module to every
    command, whether it runs from the console script or typer's test runner."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, typer.Exit, typer.Abort, BrokenPipeError):
            raise
        except KeyboardInterrupt as e:
            raise Interrupted(_interrupted_message(ctx.invoked_subcommand)) from e
        except Exception as e:
            if interrupted_cause(e):  # Ctrl-C turned into another error (an import that failed half-way)
                raise Interrupted(_interrupted_message(ctx.invoked_subcommand)) from e
            if debugging():
                raise
            raise CliError(one_line(describe(e))) from e

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        code = self._run(list(sys.argv[1:] if args is None else args), prog_name, complete_var, **extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(self, args: list[str], prog_name: str | None, complete_var: str | None, **extra: Any) -> int:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            return rv if isinstance(rv, int) else 0
        except _NoArgsIsHelp as e:
            click.echo(e.ctx.get_help())  # type: ignore[attr-defined]
            return 0
        except click.exceptions.UsageError as e:
            message, code = _usage_message(e, args), EXIT_FAILURE
        except click.exceptions.ClickException as e:
            message, code = one_line(e.format_message()), e.exit_code
        except typer.Abort:
            message, code = "aborted; nothing written", EXIT_FAILURE
        except KeyboardInterrupt:  # Ctrl-C while the command line is parsed
            message, code = _interrupted_message(None), EXIT_INTERRUPTED
        sys.stderr.write(f"error: {message}\n")
        return code


# --- the decorator every command wears ------------------------------------------------------


def is_prune_error(e: BaseException) -> bool:
    """``e`` is a :class:`~prunekit.errors.PruneError` (bad input that prunekit refused).
    Tells without importing prunekit.errors (and with it torch): if that module was never
    imported, nothing can have raised one."""
    errors = sys.modules.get("prunekit.errors")
    return errors is not None and isinstance(e, errors.PruneError)


@contextmanager
def expected_errors(*types: type[Exception], prefix: str = "") -> Iterator[None]:
    """Within the block, a ``PruneError`` (or one of ``types``) is the user's to see:
    ``error: <prefix><its message>``, exit status 2. Anything else passes on to
    :class:`Group`, which reports it as unexpected."""
    try:
        yield
    except click.exceptions.ClickException:
        raise
    except Exception as e:
        if not (is_prune_error(e) or isinstance(e, types)) or interrupted_cause(e):
            raise  # an interrupt that became, say, a missing-extra error is reported as the interrupt
        fail(f"{prefix}{e}")


def interrupted_cause(e: BaseException) -> bool:
    """Whether a ``KeyboardInterrupt`` lies in ``e``'s chain of causes and contexts (Ctrl-C
    during a lazy import can surface as an ``ImportError``, and then as a missing extra)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


@contextmanager
def new_parents_removed_on_failure(path: Path) -> Iterator[None]:
    """On any failure (Ctrl-C included), remove the folders above ``path`` that did not
    exist before and are still empty."""
    missing = [p for p in path.absolute().parents if not p.exists()]
    try:
        yield
    except BaseException:
        for p in missing:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break
        raise


def handles_errors(fn: F | None = None, *, outputs: Sequence[str] = ()) -> Any:
    """Wrap a command in the failure rules: the ``PruneError`` it raises becomes one
    ``error:`` line and exit status 2 (see :func:`expected_errors`), and on any failure,
    Ctrl-C included, the folders created above the paths given to the options named in
    ``outputs`` (parameter names, e.g. ``"out"``) are removed again if still empty. Use as
    ``@handles_errors`` or ``@handles_errors(outputs=("out",))``; typer sees the command's
    own signature and docstring."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            with ExitStack() as stack:
                for name in outputs:
                    if kwargs.get(name) is not None:
                        stack.enter_context(new_parents_removed_on_failure(Path(kwargs[name])))
                with expected_errors():
                    return command(*args, **kwargs)

        return run  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


# --- common options and output -------------------------------------------------------------


def threads_option() -> Any:
    """``--threads`` of every command that runs torch (checked by
    :func:`prunekit.cli.checks.set_threads`)."""
    return typer.Option(None, help="torch threads (default: OMP_NUM_THREADS when set, else torch's own: the machine's cores).")


def typed_command(ctx: typer.Context) -> str:
    """The running command (``ctx``, the command's context) as the user gave it:
    ``prunekit``, the subcommand names, then the arguments and options taken from the
    command line (defaults left out), shell-quoted."""
    names, c = [], ctx
    while c.parent is not None:
        names.insert(0, c.info_name or "")
        c = c.parent
    parts = ["prunekit", *names]
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name)
        if source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[p.name]
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if p.param_type_name == "argument":
            parts += [str(v) for v in values]
        elif getattr(p, "is_flag", False):
            parts.append(p.opts[0] if value or not p.secondary_opts else p.secondary_opts[0])
        else:
            for v in values:
                parts += [p.opts[0], str(v)]
    return shlex.join(parts)


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout, nothing else."""
    click.echo(json.dumps(data, indent=2))
