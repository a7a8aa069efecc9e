"""Argument checks of :func:`prunekit.report.write_report`: each error names the argument
and the bad value, and is raised before anything is written."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import PruneError, PruneTypeError
from .sections import COST_PANELS, SIZE_KEYS, real


def _rows(name: str, rows: object, what: str) -> list[Mapping[str, Any]]:
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
        raise PruneTypeError(f"{name} must be a list of dict rows ({what}), got {type(rows).__name__}")
    out = list(rows)
    for i, r in enumerate(out):
        if not isinstance(r, Mapping):
            raise PruneTypeError(f"{name}[{i}] must be a dict with keys {what}; got {r!r}"[:300])
    if not out:
        raise PruneError(f"{name}=[] has no rows; give None to leave it out")
    return out


def check_tradeoff(rows: object) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(_rows("tradeoff", rows, "sparsity, accuracy, method")):
        missing = [k for k in ("sparsity", "accuracy", "method") if k not in r]
        if missing:
            raise PruneError(f"tradeoff[{i}] lacks {missing}: {dict(r)!r}")
        if not real(r["sparsity"]) or not 0 <= float(r["sparsity"]) <= 1:
            raise PruneError(f"tradeoff[{i}]['sparsity']={r['sparsity']!r} is not a number in [0, 1]")
        if not real(r["accuracy"]):
            raise PruneError(f"tradeoff[{i}]['accuracy']={r['accuracy']!r} is not a finite number")
        if not isinstance(r["method"], str) or not r["method"]:
            raise PruneError(f"tradeoff[{i}]['method']={r['method']!r} must be a non-empty string")
        for key in [*SIZE_KEYS, *(k for k, _ in COST_PANELS)]:
            if key in r and (not real(r[key]) or float(r[key]) <= 0):
                raise PruneError(f"tradeoff[{i}][{key!r}]={r[key]!r} must be a positive number")
        out.append(dict(r))
    return out


def check_stages(rows: object) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(_rows("stages", rows, "stage, accuracy")):
        if not isinstance(r.get("stage"), str) or not r["stage"]:
            raise PruneError(f"stages[{i}]['stage']={r.get('stage')!r} must be a non-empty string (e.g. 'prune')")
        if not real(r.get("accuracy")):
            raise PruneError(f"stages[{i}]['accuracy']={r.get('accuracy')!r} is not a finite number")
        sp = r.get("sparsity")
        if sp is not None and (not real(sp) or not 0 <= float(sp) <= 1):
            raise PruneError(f"stages[{i}]['sparsity']={sp!r} is not a number in [0, 1]")
        if r.get("loss") is not None and not real(r["loss"]):
            raise PruneError(f"stages[{i}]['loss']={r['loss']!r} is not a finite number")
        out.append(dict(r))
    return out


def check_mapping(name: str, value: object, *, str_values: bool = False) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise PruneTypeError(f"{name} must be a dict with str keys or None, got {value!r}"[:300])
    if str_values and not all(isinstance(v, str) for v in value.values()):
        bad = next(k for k, v in value.items() if not isinstance(v, str))
        raise PruneTypeError(f"{name}[{bad!r}]={value[bad]!r} must be a str")
    return dict(value)


def check_path(path: object) -> Path:
    try:
        p = Path(os.fspath(path))  # type: ignore[arg-type]
    except TypeError as e:
        raise PruneTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}: {path!r}") from e
    if p.suffix.lower() not in (".html", ".htm"):
        raise PruneError(f"path={str(p)!r} must end in .html or .htm (the Markdown summary goes next to it as .md)")
    if p.is_dir():
        raise PruneError(f"path={str(p)!r} is a folder; give the report file's name, e.g. {str(p / 'report.html')!r}")
    return p
