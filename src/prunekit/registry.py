"""One registry per plugin kind: ``register()``, ``get()``, ``available()``.

Adding a criterion, granularity or allocation means writing one class and decorating it
with ``@register("criterion", "name")``; nothing else is edited, and the contract tests
in ``tests/contract`` pick it up automatically.
"""

from __future__ import annotations

import inspect

from collections.abc import Callable
from typing import Any, TypeVar

from .errors import PruneError, PruneTypeError, unknown

KINDS = ("criterion", "granularity", "allocation", "schedule", "regularizer")
_REGISTRIES: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}

T = TypeVar("T", bound=type)


def _check_kind(kind: str) -> dict[str, type]:
    if kind not in _REGISTRIES:
        raise unknown("registry kind", kind, KINDS)
    return _REGISTRIES[kind]


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator that files ``cls`` under ``kind``/``name``.

    Example:
        >>> @register("criterion", "my_score")
        ... class MyScore(Criterion): ...
    """
    table = _check_kind(kind)

    def deco(cls: T) -> T:
        if name in table and table[name] is not cls:
            raise ValueError(f"{kind} {name!r} is already registered by {table[name].__qualname__}")
        table[name] = cls
        cls.name = name
        return cls

    return deco


def get(kind: str, name: str) -> type:
    """Return the class registered as ``kind``/``name``; unknown names list what exists."""
    table = _check_kind(kind)
    if not isinstance(name, str):
        raise PruneTypeError(f"{kind} must be a name (str), got {type(name).__name__}: {name!r}")
    if name not in table:
        raise unknown(kind, name, table)
    return table[name]


def available(kind: str) -> list[str]:
    """Sorted names registered under ``kind``."""
    return sorted(_check_kind(kind))


def create(kind: str, spec: Any, **kwargs: Any) -> Any:
    """Instantiate ``spec``: a registered name, or pass through an existing instance."""
    if isinstance(spec, str):
        return get(kind, spec)(**kwargs)
    base = _BASES.get(kind)
    if base is not None and isinstance(spec, base):
        return spec
    accepted = f"a name from {available(kind)}" + (f" or a {base.__name__} instance" if base else "")
    raise PruneTypeError(f"{kind} must be {accepted}; got {type(spec).__name__}: {spec!r}")


def build(kind: str, spec: Any, **kwargs: Any) -> Any:
    """Like :func:`create`, for factories that take arguments: an instance passes through
    (extra arguments are an error), a name is built with ``kwargs``, and a bad argument
    becomes a :class:`PruneTypeError` naming the kind and the name."""
    base = _BASES.get(kind)
    if base is not None and isinstance(spec, base):
        if kwargs:
            raise PruneError(f"give either a {base.__name__} instance or a name with arguments, not both")
        return spec
    try:
        return create(kind, spec, **kwargs)
    except TypeError as e:
        if isinstance(e, PruneError):
            raise
        cls = _REGISTRIES[kind].get(spec) if isinstance(spec, str) else None
        raise PruneTypeError(f"{kind} {spec!r}: {e}{accepted_arguments(cls)}") from e


def from_config(kind: str, cls: type, config: dict[str, Any]) -> Any:
    """``cls(**config)``, a bad key or value a :class:`PruneTypeError` naming the kind, the
    class and the arguments it takes (what ``Schedule.from_config`` and
    ``Regularizer.from_config`` call)."""
    if not isinstance(config, dict):
        raise PruneTypeError(f"{kind} {cls.__name__}: config must be a dict, got {type(config).__name__}")
    try:
        return cls(**config)
    except TypeError as e:
        if isinstance(e, PruneError):
            raise
        raise PruneTypeError(f"{kind} {cls.__name__}: {e}{accepted_arguments(cls)}") from e


def accepted_arguments(cls: type | None) -> str:
    """``"; it takes a, b, c"`` from ``cls``'s constructor (empty when unknown)."""
    if cls is None:
        return ""
    try:
        names = [n for n, p in inspect.signature(cls).parameters.items()
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError):
        return ""
    return f"; it takes {', '.join(names)}" if names else "; it takes no arguments"


_BASES: dict[str, type] = {}


def set_base(kind: str, base: type) -> None:
    """Declare the base class whose instances ``create`` accepts as-is."""
    _check_kind(kind)
    _BASES[kind] = base
