"""Timing a forward pass, and how busy the machine was while it ran.

Part of :mod:`prunekit.metrics` (which re-exports :class:`BusyMachineWarning` and
:func:`usable_cores`; import them from there).
"""

from __future__ import annotations

import os
import platform
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


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


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


_STEADY_HEAP: bool | None = None


def steady_heap() -> bool:
    """Ask the C library to keep freed memory in the process before anything is timed.

    With glibc's default, adaptive settings, a freed activation of a few MB is sometimes kept
    and sometimes handed back to the OS and faulted in again on the next call, depending on
    how the heap happens to be laid out. The same frozen TorchScript MNISTNet (batch 256, 2
    threads) then timed 51-56 ms in one preparation and 87-94 ms in the next, its
    convolutions and ReLUs twice to four times slower, and a speedup read off such a pair
    was 1.7 times too high. Raising glibc's trim and mmap thresholds to 1 GiB (``mallopt``,
    as ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_`` would) keeps every run in the
    faster, steady regime of a long-running server.

    The setting is process-wide and stays: memory the process frees is reused rather than
    returned to the OS, so its resident size stays near its peak. Set the environment
    variable ``PRUNEKIT_KEEP_FREED_MEMORY=0`` to leave the allocator alone. Elsewhere than
    glibc (macOS, Windows, musl) nothing is changed.

    Returns:
        whether the thresholds are in place (called once; later calls return the answer).
    """
    global _STEADY_HEAP
    if _STEADY_HEAP is None:
        _STEADY_HEAP = False
        if os.environ.get("PRUNEKIT_KEEP_FREED_MEMORY", "1") != "0" and _glibc():
            import ctypes

            try:
                libc = ctypes.CDLL("libc.so.6")
                m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
                _STEADY_HEAP = bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(
                    libc.mallopt(m_mmap_threshold, 1 << 30))
            except (OSError, AttributeError):
                _STEADY_HEAP = False
    return _STEADY_HEAP


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (AttributeError, ValueError, OSError):
        return False


def time_forward(model: nn.Module, inputs: tuple[torch.Tensor, ...], warmup: int, repeats: int) -> float:
    """Median milliseconds of ``repeats`` forward passes after ``warmup`` untimed ones."""
    steady_heap()
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


# --- runtimes ---------------------------------------------------------------------------------

#: Runtimes a forward pass can be timed in: PyTorch eager, ``torch.compile`` (inductor),
#: TorchScript (``torch.jit.trace``, ``torch.jit.freeze``, ``torch.jit.optimize_for_inference``),
#: ONNX Runtime (CPU).
RUNTIMES = ("eager", "compile", "torchscript", "onnxruntime")
_ORT_HINT = "pip install prunekit[export] (onnx, onnxscript, onnxruntime)"
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "torch._dynamo", "onnxscript", "onnx_ir")


class Runner:
    """A model prepared for one runtime: call it with the inputs it was prepared with.

    Attributes:
        runtime: one of :data:`RUNTIMES`.
        fn: ``fn(*inputs)`` runs one forward pass (no gradient).
    """

    def __init__(self, runtime: str, fn) -> None:
        self.runtime = runtime
        self.fn = fn

    def __call__(self, *inputs: torch.Tensor):
        return self.fn(*inputs)


def ort_session(model_bytes: bytes, threads: int):
    """An ONNX Runtime CPU session on a serialized model, with ``threads`` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(f"runtime='onnxruntime' needs onnxruntime: {_ORT_HINT}") from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Idle worker threads would spin after each run and steal the cores from whatever runs next
    # (the other model of an interleaved timing, another process).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def ort_runner(session) -> Runner:
    """A :class:`Runner` around an ONNX Runtime session (inputs in the session's order)."""
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: torch.Tensor):
        return session.run(None, {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)})

    return Runner("onnxruntime", run)


def _onnx_bytes(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> bytes:
    import contextlib
    import logging

    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError as e:
        raise ImportError(f"runtime='onnxruntime' exports with torch.onnx (dynamo=True): {_ORT_HINT}") from e
    levels = {n: logging.getLogger(n).level for n in _NOISY_LOGGERS}
    try:
        for n in _NOISY_LOGGERS:
            logging.getLogger(n).setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, inputs, None, dynamo=True, verbose=False)
        return program.model_proto.SerializeToString()
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def prepare(model: nn.Module, inputs: tuple[torch.Tensor, ...], runtime: str, threads: int | None = None) -> Runner:
    """``model`` ready to run on ``inputs`` in ``runtime``; ``model`` itself is not changed.

    Masks are part of the model as PyTorch runs it; a traced or exported copy folds them
    into the weights (commit or compact first to time what would ship in every runtime).

    Args:
        model: the model, in eval mode.
        inputs: example inputs with the batch size to be timed (TorchScript and ONNX
            Runtime specialize on their shapes).
        runtime: one of :data:`RUNTIMES`.
        threads: intra-op threads of the ONNX Runtime session (default: torch's).

    Raises:
        ImportError: ``onnxruntime`` / ``onnxscript`` missing for ``runtime="onnxruntime"``.
    """
    if runtime == "eager":
        return Runner("eager", model)
    if runtime == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(torch.jit.trace(model, inputs, check_trace=False))
            # what PyTorch's docs prescribe for deployment: conv-BN folding, prepacked oneDNN
            # convolutions and linears on CPU (MNISTNet, batch 64, one thread: 6.0 ms against
            # 17.9 ms frozen only, docs/latency.md)
            traced = torch.jit.optimize_for_inference(traced)
        return Runner("torchscript", traced)
    if runtime == "compile":
        # Models of one class share dynamo's cache of their forward; past its recompile limit
        # (8) a new width or shape silently runs eager. Each model starts from an empty cache.
        torch.compiler.reset()
        compiled = torch.compile(model, dynamic=False)
        with torch.inference_mode():
            compiled(*inputs)  # compile now, not inside the timed loop
        return Runner("compile", compiled)
    if runtime == "onnxruntime":
        import copy

        dup = copy.deepcopy(model).eval()
        session = ort_session(_onnx_bytes(dup, inputs), threads or torch.get_num_threads())
        return ort_runner(session)
    raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")


def time_runner(run, inputs: tuple[torch.Tensor, ...], warmup: int, repeats: int, statistic: str = "median") -> float:
    """Median (or, ``statistic="min"``, fastest) milliseconds of ``repeats`` calls of
    ``run(*inputs)`` after ``warmup`` untimed ones. Other work on the machine only ever adds
    time, so the fastest run is the steadiest estimate of what a kernel costs; the median is
    what a user sees."""
    steady_heap()
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            run(*inputs)
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(*inputs)
            times.append(time.perf_counter() - t0)
    return (min(times) if statistic == "min" else statistics.median(times)) * 1e3


def time_interleaved(runs: list, inputs: list[tuple[torch.Tensor, ...]], warmup: int, repeats: int) -> list[float]:
    """Median milliseconds of each ``runs[i](*inputs[i])``, timed in turn (round-robin), so
    that a change in the machine's load falls on every model alike; each timed call follows
    an untimed one of the same model (see :func:`time_ratio`)."""
    return [statistics.median(t) * 1e3 for t in _rounds(runs, inputs, warmup, repeats)]


def time_ratio(run, reference, inputs: tuple[torch.Tensor, ...], warmup: int, repeats: int) -> tuple[float, float]:
    """``(ms of run, ms of reference)``, timed in turn: the reference's median, and ``run``'s
    as the median of the per-round ratios times it. A round's two runs share the machine's
    load of that moment, so the ratio is steadier than two medians on a busy machine.

    In each round, a model's timed call follows an untimed call of the same model: right
    after the other model, its weights and activations are out of the caches and the
    runtime's threads asleep, which is not how a served model runs. Timed cold, a MNISTNet
    with 75 % of its channels removed measured 3.8 ms in ONNX Runtime (batch 256, one
    thread) where it runs in 3.1 ms back to back, while the dense model's 23 ms hardly
    moved: the speedup read 6.0× instead of 7.2×."""
    a, b = _rounds([run, reference], [inputs, inputs], warmup, repeats)
    ref = statistics.median(b)
    return statistics.median(x / y for x, y in zip(a, b)) * ref * 1e3, ref * 1e3


def _rounds(runs: list, inputs: list[tuple[torch.Tensor, ...]], warmup: int, repeats: int) -> list[list[float]]:
    steady_heap()
    times: list[list[float]] = [[] for _ in runs]
    with torch.inference_mode():
        for _ in range(warmup):
            for run, x in zip(runs, inputs):
                run(*x)
        for _ in range(repeats):
            for i, (run, x) in enumerate(zip(runs, inputs)):
                run(*x)  # warm again after the other models (see time_ratio)
                t0 = time.perf_counter()
                run(*x)
                times[i].append(time.perf_counter() - t0)
    return times
