"""Where and when a report was made: date, versions, machine, threads and load.

Timings depend on all of these (see the docs on threads and load), so every report
states them next to the numbers.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys

__all__ = ["environment"]


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def environment() -> dict[str, str]:
    """``{what: value}`` describing this process and machine now, as text for a table.

    Returns:
        date (local time with its UTC offset), prunekit, torch and Python versions, the
        platform, the CPU model, the cores this process may use, torch's intra-op threads,
        ``OMP_NUM_THREADS``/``OMP_WAIT_POLICY`` when set, and the 1/5/15-minute load
        average (a load above the cores makes timings unreliable).

    Example:
        >>> environment()["threads (torch)"]
        '2'
    """
    from .. import __version__

    env: dict[str, str] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "prunekit": __version__,
    }
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch  # type: ignore[no-redef]
        except ImportError:  # pragma: no cover - torch is a dependency
            torch = None
    env["torch"] = getattr(torch, "__version__", "not installed")
    env["Python"] = platform.python_version()
    env["platform"] = platform.platform(terse=True)
    env["CPU"] = _cpu_model()
    cores = _cores()
    env["cores available"] = str(cores)
    if torch is not None:
        env["threads (torch)"] = str(torch.get_num_threads())
    for var in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        if os.environ.get(var):
            env[var] = os.environ[var]
    try:
        one, five, fifteen = os.getloadavg()
        busy = " (busier than the cores: timings unreliable)" if one > cores else ""
        env["load average (1, 5, 15 min)"] = f"{one:.2f}, {five:.2f}, {fifteen:.2f}{busy}"
    except (AttributeError, OSError):
        env["load average (1, 5, 15 min)"] = "not available on this platform"
    return env
