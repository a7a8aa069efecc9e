"""Errors raised for bad user input.

Every prunekit error derives from ``ValueError`` or ``TypeError`` so that callers who
already catch those keep working; catch :class:`PruneError` to catch only ours.
"""

from __future__ import annotations

from collections.abc import Iterable


class PruneError(ValueError):
    """A value given to prunekit is not acceptable; the message names it and what is."""


class PruneTypeError(PruneError, TypeError):
    """An argument has the wrong type; the message names the type given and those accepted."""


def unknown(kind: str, value: object, accepted: Iterable[str]) -> PruneError:
    """Build the error for an unknown registry name, listing what exists."""
    names = ", ".join(repr(a) for a in sorted(accepted))
    return PruneError(f"unknown {kind} {value!r}; available: {names}")
