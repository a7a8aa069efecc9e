"""Timing a forward pass, and how busy the machine was while it ran.

Part of :mod:`prunekit.metrics` (which re-exports :class:`BusyMachineWarning` and
:func:`usable_cores`; import them from there).
"""

from __future__ import annotations

import os
import statistics
import time
import warnings

import torch
from torch import nn


class BusyMachineWarning(UserWarning):
    """The machine was busier than its cores while latency was timed."""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS does not report one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def warn_if_busy(load: float | None, cores: int, stacklevel: int = 2) -> None:
    """Warn with a :class:`BusyMachineWarning` when ``load`` exceeds ``cores``."""
    if load is not None and load > cores:
        warnings.warn(
            f"the 1-minute load average is {load:.2f} on {cores} usable CPU cores: other work competes for "
            "them, so the latency figures are unreliable (measure again on an idle machine)",
            BusyMachineWarning, stacklevel=stacklevel + 1,
        )


def time_forward(model: nn.Module, inputs: tuple[torch.Tensor, ...], warmup: int, repeats: int) -> float:
    """Median milliseconds of ``repeats`` forward passes after ``warmup`` untimed ones."""
    sync = torch.cuda.synchronize if any(t.is_cuda for t in inputs) else (lambda: None)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(*inputs)
        sync()
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(*inputs)
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3
