"""Shared helpers for the benchmark scripts: environment record, timing summaries, JSON, tables."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# Running a script straight from a checkout (no editable install) should still find the package.
try:
    import prunekit  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the environment was set up
    sys.path.insert(0, str(ROOT / "src"))


def environment() -> dict[str, Any]:
    """What a timing depends on: versions, CPU, threads, wait policy, load and when it was taken."""
    import torch

    from prunekit.metrics_timing import cpu_model

    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),  # prunekit.metrics_timing's, also the latency tables' machine key
        # the vector instructions torch's CPU kernels use here (AVX2, AVX512, ...): timings and
        # bfloat16 speed differ by this more than by anything else on the same core count
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of an empty sequence")
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median and spread of a list of timings (seconds)."""
    return {
        "n": len(times),
        "median": statistics.median(times),
        "p10": percentile(times, 10),
        "p90": percentile(times, 90),
        "min": min(times),
    }


def write_json(name: str, data: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """Write ``data`` to ``<out_dir>/<name>.json`` atomically (temp file + ``os.replace``)."""
    out = Path(out_dir) if out_dir is not None else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a table with rich when available, else as aligned plain text."""
    cells = [[str(c) for c in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
        print(title)
        print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
        for r in cells:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        return
    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in cells:
        table.add_row(*r)
    # A fixed wide console: piped output would otherwise be squeezed to 80 columns.
    Console(width=160).print(table)
