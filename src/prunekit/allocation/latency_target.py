"""What a latency target is: a fraction of the dense model's latency or milliseconds
(:func:`parse_target`), the warning for a configuration no faster than dense, the one
for a configuration cut below the usual widths (:func:`warn_narrow`), and those the
measured search gives about what it returns (:func:`warn_pick`)."""

from __future__ import annotations

import re
import warnings
from typing import Any

from ..errors import PruneError
from ..validate import fraction

__all__ = ["SlowerThanDenseWarning", "parse_target", "warn_narrow", "warn_pick"]

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


def warn_narrow(narrow: list[str], removed: list[str], target: str, stacklevel: int = 5) -> None:
    """Warn that reaching ``target`` cut the groups ``narrow`` below their usual widths and
    removed the groups ``removed`` whole (residual blocks), naming up to four of each."""
    def names(xs: list[str]) -> str:
        return f"{', '.join(xs[:4])}{' ...' if len(xs) > 4 else ''}"

    parts = ([f"cut {len(narrow)} group(s) below the per-group cap (max_sparsity) or the round_to multiple "
              f"({names(narrow)})"] if narrow else []) + (
             [f"removed {len(removed)} group(s) whole, residual blocks ({names(removed)})"] if removed else [])
    warnings.warn(f"allocation='latency' {' and '.join(parts)} to reach {target}: the usual widths could not; "
                  "expect a larger accuracy loss than they give", stacklevel=stacklevel)


def warn_pick(pick: dict[str, Any], met: bool, floor: dict[str, Any] | None, near: bool, where: str,
              measured: int, narrow: list[str], removed: list[str]) -> None:
    """The warnings about the configuration the measured search returns (``pick``, a record
    of its history): the target out of reach (``floor``, the fastest configuration allowed,
    measured, missed it; ``near``: ``pick`` is the fastest measured, a near miss, not the
    fastest within the usual widths), the target missed after ``measured`` allocations,
    groups cut below their usual widths or removed, and a configuration no faster than
    dense. ``where``: the runtime and batch, as the messages name them."""
    if not met and floor is not None:
        warnings.warn(
            f"allocation='latency' cannot reach its target of {floor['target_ms']:.4g} ms ({where}): the fastest "
            f"configuration allowed (every group at its smallest width: {floor['kept']} units) measures "
            f"{floor['measured_ms']:.3f} ms, {floor['measured_ms'] / floor['dense_ms']:.2f} of the dense "
            f"{floor['dense_ms']:.3f} ms; returned the fastest measured"
            f"{'' if near else ' within the per-group cap and round_to'} ({pick['measured_ms']:.3f} ms, "
            f"{pick['measured_ms'] / pick['dense_ms']:.2f}). Time the layers do not scale with (pooling at full "
            "resolution, the first layer, per-operation overheads) sets this floor", stacklevel=5)
    elif not met:
        warnings.warn(
            f"allocation='latency' missed its target: {pick['measured_ms']:.3f} ms measured ({where}) for a target "
            f"of {pick['target_ms']:.3f} ms after {measured} measured allocations; min_keep, the per-group cap and "
            "the coupling limit how far the model can shrink", stacklevel=5)
    if narrow or removed:
        warn_narrow(narrow, removed, f"{pick['target_ms']:.3f} ms" if met else
                    f"{pick['measured_ms']:.3f} ms, the nearest it came", stacklevel=6)
    if pick["measured_ms"] >= pick["dense_ms"]:
        warnings.warn(f"the pruned configuration measures {pick['measured_ms']:.3f} ms, no faster than the dense "
                      f"{pick['dense_ms']:.3f} ms ({where})", SlowerThanDenseWarning, stacklevel=5)
