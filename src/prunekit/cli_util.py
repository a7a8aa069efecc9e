"""The rules every ``prunekit`` command follows, and the checks that run before its work.

* A failure prints exactly one line, ``error: <what is wrong, naming the option and the
  value>``, on stderr and exits with status 2; ``PRUNEKIT_DEBUG=1`` lets the traceback of
  an unexpected error through instead. Ctrl-C prints ``error: interrupted; nothing
  written`` and exits 130.
* Warnings print as ``warning: <message>`` lines on stderr (:func:`warn`), so ``--json``
  output and tables on stdout stay clean.
* Options, sources and input shapes are checked before any work starts; where outputs go
  is checked by :mod:`prunekit.cli_output`.

This module imports neither torch nor the rest of prunekit at import time.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

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
MNIST_INPUT = [1, 1, 28, 28]


#: where every command prints its tables and progress lines (stdout)
console = Console()

_NoArgsIsHelp: type[BaseException] = getattr(click.exceptions, "NoArgsIsHelpError", type("_Never", (Exception,), {}))


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


# --- option checks --------------------------------------------------------------------------


def count(n: int) -> str:
    """How commands print a count: ``235200`` -> ``'235,200'``."""
    return f"{int(n):,}"


def pct(fraction: float) -> str:
    """How commands print a percentage (the style of ``prunekit measure`` and the report):
    ``0.9234`` -> ``'92.34 %'``."""
    return f"{fraction * 100:.2f} %"


def check_min(option: str, value: int | None, lo: int, example: str = "") -> None:
    """An integer option is >= ``lo`` (None passes)."""
    if value is not None and not value >= lo:
        fail(f"{option}: {value!r} is too small (expected an integer >= {lo}{', e.g. ' + example if example else ''})")


def check_positive(option: str, value: float | None, example: str) -> None:
    """A number option is > 0 (None passes)."""
    if value is not None and not value > 0:
        fail(f"{option}: {value!r} is not allowed (expected a number > 0, e.g. {example})")


def check_fraction(option: str, value: float | None, meaning: str) -> None:
    """``value`` in [0, 1) (None passes); ``meaning`` says what the number is."""
    if value is not None and not 0 <= value < 1:
        fail(f"{option}: {value!r} is outside [0, 1) ({meaning}, e.g. 0.9)")


def check_name(option: str, value: str | None, accepted: Sequence[str], extra: str = "", *, kind: str = "") -> None:
    """``value`` is one of the ``accepted`` names (None passes); the error lists them (then
    ``extra``) and calls the value a ``kind`` (default: the option's name)."""
    if value is not None and value not in accepted:
        fail(f"{option}: unknown {kind or option.lstrip('-')} {value!r}; available: {', '.join(accepted)}{extra}")


def parse_names(option: str, text: str, accepted: Sequence[str], *, kind: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; every name must be one of ``accepted``, and at least one given."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        fail(f"{option}: {text!r} names no {kind} (expected comma-separated names from: {', '.join(accepted)})")
    for name in names:
        check_name(option, name, accepted, kind=kind)
    return names


def parse_ints(option: str, text: str, lo: int, example: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; every value must be an integer >= ``lo``."""
    expected = f"expected comma-separated integers >= {lo}, e.g. {example}"
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            v = int(part)
        except ValueError:
            fail(f"{option}: {part!r} is not an integer ({expected})")
        if v < lo:
            fail(f"{option}: {part} is too small ({expected})")
        values.append(v)
    if not values:
        fail(f"{option}: {text!r} holds no number ({expected})")
    return values


def parse_fractions(option: str, text: str) -> list[float]:
    """``"0.5,0.9"`` -> ``[0.5, 0.9]``; every value must be a number in [0, 1)."""
    expected = "expected comma-separated numbers in [0, 1), e.g. 0.5,0.9"
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            fail(f"{option}: {part!r} is not a number ({expected})")
        if not 0 <= v < 1:
            fail(f"{option}: {part} is outside [0, 1) ({expected})")
        values.append(v)
    if not values:
        fail(f"{option}: {text!r} holds no number ({expected})")
    return values


def parse_shape(text: str) -> list[int]:
    """``"1,1,28,28"`` (or ``1x1x28x28``) -> ``[1, 1, 28, 28]``."""
    try:
        shape = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        shape = []
    if not shape or any(s < 1 for s in shape):
        fail(f"--input-shape {text!r} must be positive integers separated by commas, batch first, e.g. 1,1,28,28")
    return shape


def check_input_fits(model: Any, shape: Sequence[int], where: str, classes: int | None = None) -> None:
    """Run ``model`` once on zeros of ``shape``; fail naming ``where`` when it does not fit
    (or, with ``classes``, does not give that many outputs). The model is left as it was."""
    import torch

    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(*shape))
    except Exception as e:
        fail(f"{where}: inputs of shape {tuple(shape)} do not run through {type(model).__name__}: "
             f"{type(e).__name__}: {one_line(str(e))}")
    finally:
        for m, mode in modes.items():
            m.training = mode
    if classes is not None and not (isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] == classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        fail(f"{where}: {type(model).__name__} gives outputs of shape {got} for inputs {tuple(shape)}; "
             f"a {classes}-class classifier is needed")


def set_threads(threads: int) -> None:
    """Check --threads and give torch that many intra-op threads (imports torch)."""
    check_min("--threads", threads, 1, "2")
    import torch

    torch.set_num_threads(threads)


# --- sources ---------------------------------------------------------------------------------


def load_source(source: str) -> Any:
    """A zoo model (mnistnet with its trained weights) or a folder written by ``pk.save``."""
    import prunekit as pk
    from prunekit import zoo

    if os.path.isdir(source):
        try:
            return pk.load(source)
        except pk.PruneError as e:
            fail(f"SOURCE {source!r}: {e}")
    if os.path.exists(source):
        fail(f"SOURCE {source!r} is a file; give a zoo model ({', '.join(zoo.available())}) "
             "or a folder written by pk.save / prunekit prune")
    if source in zoo.available():
        return zoo.create(source, pretrained=source == "mnistnet")
    fail(f"SOURCE {source!r} is neither a saved folder nor a zoo model ({', '.join(zoo.available())})")


def check_prune_options(sparsity: float | None, criterion: str, granularity: str, allocation: str,
                        threshold: float | None = None) -> None:
    """--sparsity, --criterion, --granularity and --allocation, before anything is loaded
    (``threshold``: ``prunekit prune --threshold``, which stands in for --sparsity)."""
    import prunekit as pk
    from prunekit.granularity import NM, make

    check_fraction("--sparsity", sparsity, "the fraction of prunable weights to remove")
    check_name("--criterion", criterion, pk.available("criterion"))
    check_name("--allocation", allocation, pk.available("allocation"))
    try:
        g = make(granularity)
    except pk.PruneError as e:
        nm = " (or N:M such as 2:4)" if str(e).startswith("unknown") else ""
        fail(f"--granularity: {e}{nm}")
    if sparsity is None and threshold is None and not isinstance(g, NM):
        fail(f"--sparsity is needed with --granularity {granularity} (e.g. --sparsity 0.9); "
             "only N:M granularities such as 2:4 fix the sparsity themselves")


def spec_metadata(folder: Path) -> dict[str, Any]:
    """The ``metadata`` a saved folder's spec records (empty if none or unreadable)."""
    try:
        spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    meta = spec.get("metadata") if isinstance(spec, dict) else None
    return meta if isinstance(meta, dict) else {}


def spec_input_shape(folder: Path) -> list[int] | None:
    """The ``input_shape`` recorded in a saved folder's spec, if any."""
    shape = spec_metadata(folder).get("input_shape")
    return shape if isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape) else None


def spec_data(folder: Path) -> dict[str, Any] | None:
    """The data set a saved folder records (``{"name": "digits", "flatten": True}``), if any."""
    data = spec_metadata(folder).get("data")
    return data if isinstance(data, dict) and isinstance(data.get("name"), str) else None


def check_mnist_fits(model: Any, source: str, classes: int | None = 10) -> None:
    """The model takes MNIST images (1, 1, 28, 28) and gives ``classes`` scores."""
    shape = spec_input_shape(Path(source)) if os.path.isdir(source) else None
    where = f"SOURCE {source!r} is not an MNIST model" + (f" (it was saved for inputs {shape})" if shape else "")
    check_input_fits(model, MNIST_INPUT, where, classes=classes)


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout, nothing else."""
    click.echo(json.dumps(data, indent=2))
