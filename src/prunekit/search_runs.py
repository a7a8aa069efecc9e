"""The runs file of :func:`prunekit.search.search`: what each run line records about how it
was made (the model and a digest of the data beside the settings), which recorded runs a
search may reuse, and appending a run safely after an interrupted write."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

__all__ = ["ZooModel", "append_run", "data_digest", "end_cut_line", "model_name", "reusable_runs"]


@dataclass(frozen=True)
class ZooModel:
    """A picklable ``model_fn``: a fresh ``prunekit.zoo`` model per seed."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, seed: int) -> nn.Module:
        from . import zoo

        torch.manual_seed(seed)
        return zoo.create(self.name, **self.kwargs)


def end_cut_line(path: Path) -> None:
    """End a last line cut short by an interruption, so that the next run gets a line of its own."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


def append_run(path: Path, run: dict[str, Any]) -> None:
    """Append one finished run as a JSON line, flushed to disk."""
    with open(path, "a") as fh:
        fh.write(json.dumps(run) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def reusable_runs(path: Path, context: dict[str, Any], wanted: set[tuple[str, int, int]]) -> dict[tuple, dict[str, Any]]:
    """The runs of ``path`` this search can reuse (its settings, seeds and folds, made with
    the same ``context``); warns once naming what the others were made with."""
    done, other, seen = {}, 0, {}
    for line in filter(str.strip, path.read_text().splitlines()):
        try:
            r = dict(json.loads(line))
        except (ValueError, TypeError):
            continue  # a line cut short by an interruption: that run is redone
        diff = {k: r.get(k, "unrecorded") for k, v in context.items() if r.get(k, "unrecorded") != v}
        for k, v in diff.items():
            seen.setdefault(k, set()).add(str(v))
        if diff or (r.get("key"), r.get("fold"), r.get("seed")) not in wanted:
            other += 1
        else:
            done[(r["key"], r["fold"], r["seed"])] = r
    if other:
        made = "; ".join(f"{k}={', '.join(sorted(v))} (this search: {context[k]})" for k, v in seen.items())
        warnings.warn(f"{path}: {other} recorded runs are not reused or counted: they belong to other seeds, folds "
                      f"or settings{', or were made with ' + made if made else ''}", UserWarning, stacklevel=3)
    return done


def model_name(model_fn: Any) -> str:
    """What builds the models, as recorded beside each run: a zoo name and its arguments, or
    the function's qualified name."""
    if isinstance(model_fn, ZooModel):
        return model_fn.name + (f" {json.dumps(model_fn.kwargs, sort_keys=True, default=str)}" if model_fn.kwargs else "")
    f = getattr(model_fn, "func", model_fn)  # functools.partial
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__name__)}"


def data_digest(data: TensorDataset) -> str:
    """A short digest of the data's tensors (shapes and values), recorded beside each run."""
    h = hashlib.sha256()
    for t in data.tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)} {t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()[:16]
