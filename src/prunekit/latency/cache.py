"""Where latency tables live on disk, and the key that says which machine they describe.

A table is only valid for the machine, runtime, thread count and torch version it was
measured with; :func:`table_key` folds all of them into the file name, so a table measured
elsewhere (or with other threads) is never read. Files are JSON, under
``$PRUNEKIT_LATENCY_DIR``, else ``$XDG_CACHE_HOME/prunekit/latency``, else
``~/.cache/prunekit/latency``, written atomically (a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..cache_paths import user_cache_dir
from ..metrics_timing import cpu_model, usable_cores

__all__ = ["cache_dir", "machine_id", "read_entries", "table_key", "write_entries"]


def cache_dir() -> Path:
    """Folder of the latency tables (it may not exist yet).

    Example:
        >>> cache_dir().name
        'latency'
    """
    return user_cache_dir("PRUNEKIT_LATENCY_DIR", "latency")


def machine_id() -> str:
    """The machine as a table sees it: CPU model, architecture, usable cores."""
    return f"{cpu_model()}|{platform.machine()}|{usable_cores()} cores"


def table_key(runtime: str, threads: int, batch_size: int) -> dict[str, Any]:
    """Everything a measured latency depends on besides the layer itself."""
    ort = None
    if runtime == "onnxruntime":
        try:
            import onnxruntime

            ort = onnxruntime.__version__
        except ImportError:
            ort = None
    # what the runtime does to a model before timing it; a change there makes new tables
    passes = "trace,freeze,optimize_for_inference" if runtime == "torchscript" else None
    return {"machine": machine_id(), "runtime": runtime, "threads": threads, "batch_size": batch_size,
            "torch": torch.__version__, "onnxruntime": ort, "passes": passes}


def _path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{key['runtime']}-t{key['threads']}-b{key['batch_size']}-{digest}.json"


def read_entries(key: dict[str, Any]) -> dict[str, float]:
    """The measured ``{layer configuration: ms}`` for ``key``; empty when none (or unreadable)."""
    path = _path(key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("entries"), dict):
        return {}
    # a figure that is not a positive, finite time (a hand-edited or damaged file) is timed again
    return {str(k): float(v) for k, v in data["entries"].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s sibling ``.lock`` file (POSIX ``flock``), so that
    processes merging into the same table do not drop each other's entries. Where locks are
    not available (no ``fcntl``, or a file system that refuses them) it runs unlocked: the
    cache only saves time, and an entry lost is timed again."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    try:
        fd = os.open(path.with_name(f".{path.name}.lock"), os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_entries(key: dict[str, Any], entries: dict[str, float]) -> Path | None:
    """Merge ``entries`` into the table file of ``key`` atomically, under a lock held across
    the read and the replace; return its path. The cache only saves time: a folder that
    cannot be written is warned about and left alone (``None``)."""
    path = _path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _unwritable(path, e)
        return None
    with _locked(path):
        merged = {**read_entries(key), **entries}
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as e:
            _unwritable(path, e)
            return None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"key": key, "entries": merged}, f, indent=0, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def _unwritable(path: Path, e: OSError) -> None:
    warnings.warn(f"latency tables not cached: {path.parent} cannot be written ({e}); they will be timed again "
                  "next time. Set PRUNEKIT_LATENCY_DIR to a writable folder to keep them", UserWarning, stacklevel=4)
