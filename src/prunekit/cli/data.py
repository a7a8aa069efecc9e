"""Test data named on the command line: ``mnist``, ``digits`` or ``MODULE:FUNCTION``.

``--data mypackage.data:test_set`` imports ``mypackage.data`` (the current folder is
searched first, so a ``data.py`` beside you works as ``--data data:test_set``) and calls
``test_set()`` with no arguments. It must return what :func:`prunekit.train.evaluate`
takes: a ``Dataset`` of ``(x, y)``, an iterable of ``(x, y)`` batches (a ``DataLoader``),
or one ``(x, y)`` pair of tensors. Any failure is one ``error:`` line naming the value.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

from prunekit.cli.common import fail

__all__ = ["BUILTIN", "is_factory", "load_factory"]

BUILTIN = ("mnist", "digits")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_factory(value: str) -> bool:
    """Whether ``value`` has the form ``MODULE:FUNCTION``."""
    return bool(_FACTORY.match(value))


def check_data(option: str, value: str | None) -> None:
    """``value`` is a built-in data set or ``MODULE:FUNCTION`` (None passes)."""
    if value is not None and value not in BUILTIN and not is_factory(value):
        fail(f"{option}: unknown data {value!r}; available: {', '.join(BUILTIN)}, or MODULE:FUNCTION "
             "(a function of yours returning a Dataset, a DataLoader or an (inputs, labels) pair)")


def load_factory(option: str, value: str) -> Any:
    """Import ``MODULE``, call ``FUNCTION()`` and return its data; ``fail`` on any problem."""
    module_name, func_name = value.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to see, in one line
        fail(f"{option} {value!r}: cannot import {module_name!r}: {type(e).__name__}: {e}")
    func = getattr(module, func_name, None)
    if not callable(func):
        fail(f"{option} {value!r}: {module_name!r} has no function {func_name!r}")
    try:
        data = func()
    except Exception as e:  # noqa: BLE001
        fail(f"{option} {value!r}: {func_name}() raised {type(e).__name__}: {e}")
    import torch

    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return tuple(data)
    if isinstance(data, torch.utils.data.Dataset) or hasattr(data, "__iter__"):
        return data
    fail(f"{option} {value!r}: {func_name}() returned {type(data).__name__}; expected a Dataset, a DataLoader "
         "or an (inputs, labels) pair of tensors")
