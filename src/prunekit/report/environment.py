"""Where and when a report was made: date, versions, machine, threads and load.

Timings depend on all of these (see the docs on threads and load), so every report
states them next to the numbers.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys

from ..metrics_timing import cpu_model, usable_cores

__all__ = ["environment"]


def environment() -> dict[str, str]:
    """``{what: value}`` describing this process and machine now, as text for a table.

    Returns:
        date (local time with its UTC offset), prunekit, torch and Python versions, the
        platform, the CPU model and the vector instructions torch uses on it, the cores
        this process may use, torch's intra-op threads, ``OMP_NUM_THREADS`` /
        ``OMP_WAIT_POLICY`` when set, and the 1/5/15-minute load
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
    env["CPU"] = cpu_model()
    cores = usable_cores()
    env["cores available"] = str(cores)
    if torch is not None:
        # the vector instructions its CPU kernels use (AVX2, AVX512, ...): bfloat16 and
        # latency figures differ by this more than by the core count
        env["CPU capability (torch)"] = torch.backends.cpu.get_cpu_capability()
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
