"""Reading a traced call's arguments."""

from __future__ import annotations

from typing import Any


def arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    """Argument ``i`` of a call, given positionally or as keyword ``name``."""
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)
