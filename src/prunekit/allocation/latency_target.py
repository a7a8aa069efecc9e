"""What a latency target is: a fraction of the dense model's latency or milliseconds
(:func:`parse_target`), the warning for a configuration no faster than dense, and the one
for a configuration cut below the usual widths (:func:`warn_narrow`)."""

from __future__ import annotations

import re
import warnings

from ..errors import PruneError
from ..validate import fraction

__all__ = ["SlowerThanDenseWarning", "parse_target", "warn_narrow"]

_MS = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*ms\s*$")


class SlowerThanDenseWarning(UserWarning):
    """A pruned configuration measured no faster than the dense model."""


def parse_target(value: object) -> tuple[str, float]:
    """``("ratio", r)`` for a float in (0, 1] (a fraction of the dense latency) or
    ``("ms", t)`` for a string such as ``"2.5ms"`` (milliseconds).

    Example:
        >>> parse_target(0.5), parse_target("3ms")
        (('ratio', 0.5), ('ms', 3.0))
    """
    if isinstance(value, str):
        m = _MS.match(value)
        if not m or float(m.group(1)) <= 0:
            raise PruneError(f"latency target must be a fraction of the dense latency in (0, 1] or milliseconds "
                             f"such as '2.5ms'; got {value!r}")
        return "ms", float(m.group(1))
    return "ratio", fraction("latency target", value, one=True, zero=False,
                             hint="a fraction of the dense latency, or milliseconds such as '2.5ms'")


def warn_narrow(narrow: list[str], removed: list[str], target: str) -> None:
    """Warn that reaching ``target`` cut the groups ``narrow`` below their usual widths and
    removed the groups ``removed`` whole (residual blocks), naming up to four of each."""
    def names(xs: list[str]) -> str:
        return f"{', '.join(xs[:4])}{' ...' if len(xs) > 4 else ''}"

    parts = ([f"cut {len(narrow)} group(s) below the per-group cap (max_sparsity) or the round_to multiple "
              f"({names(narrow)})"] if narrow else []) + (
             [f"removed {len(removed)} group(s) whole, residual blocks ({names(removed)})"] if removed else [])
    warnings.warn(f"allocation='latency' {' and '.join(parts)} to reach {target}: the usual widths could not; "
                  "expect a larger accuracy loss than they give", stacklevel=5)
