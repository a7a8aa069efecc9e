"""Checks of user-given option values, with one wording for every message.

Each function returns the value (converted: ``float`` for numbers) or raises a
:class:`PruneError` that names the option, what it accepts and what was given::

    sparsity must be a number in [0, 1); got 1.5
    batch_size must be an integer >= 1; got 0
    keep_masks must be True or False; got 'yes'

A wrong type raises :class:`PruneTypeError` (also a ``TypeError``) where the value is not
even of the accepted kind; a value of the right kind out of range raises
:class:`PruneError`. ``bool`` is never accepted as a number.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

from .errors import PruneError, PruneTypeError


def _fail(name: str, requirement: str, value: object, hint: str, type_error: bool = False) -> PruneError:
    cls = PruneTypeError if type_error else PruneError
    return cls(f"{name} must be {requirement}{f' ({hint})' if hint else ''}; got {value!r}")


def is_number(value: object) -> bool:
    """A real, finite-or-not number that is not a ``bool``."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def number(
    name: str,
    value: object,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    hint: str = "",
) -> float:
    """A real number within ``[lo, hi]`` (ends open where asked; ``None``: unbounded)."""
    if lo is None and hi is None:
        requirement = "a finite number"
    elif hi is None:
        requirement = f"a number {'>' if lo_open else '>='} {lo:g}"
    elif lo is None:
        requirement = f"a number {'<' if hi_open else '<='} {hi:g}"
    else:
        requirement = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if not is_number(value):
        raise _fail(name, requirement, value, hint, type_error=True)
    v = float(value)  # type: ignore[arg-type]
    ok = math.isfinite(v)
    if lo is not None:
        ok = ok and (v > lo if lo_open else v >= lo)
    if hi is not None:
        ok = ok and (v < hi if hi_open else v <= hi)
    if not ok:
        raise _fail(name, requirement, value, hint)
    return v


def fraction(name: str, value: object, *, one: bool = False, zero: bool = True, hint: str = "") -> float:
    """A number in ``[0, 1)`` (``one=True``: ``[0, 1]``; ``zero=False``: open at 0)."""
    return number(name, value, lo=0.0, hi=1.0, lo_open=not zero, hi_open=not one, hint=hint)


def integer(name: str, value: object, *, minimum: int | None = None, maximum: int | None = None, hint: str = "") -> int:
    """An ``int`` (not a ``bool``) within ``[minimum, maximum]``."""
    if minimum is not None and maximum is not None:
        requirement = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        requirement = f"an integer >= {minimum}"
    elif maximum is not None:
        requirement = f"an integer <= {maximum}"
    else:
        requirement = "an integer"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(name, requirement, value, hint, type_error=True)
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise _fail(name, requirement, value, hint)
    return v


def boolean(name: str, value: object) -> bool:
    """``True`` or ``False`` exactly (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise _fail(name, "True or False", value, "", type_error=True)
    return value


def choice(name: str, value: object, accepted: Iterable[str], *, hint: str = "") -> str:
    """One of ``accepted`` (listed in the message, in the order given)."""
    names = tuple(accepted)
    if not isinstance(value, str) or value not in names:
        raise _fail(name, f"one of {', '.join(map(repr, names))}", value, hint, type_error=not isinstance(value, str))
    return value
