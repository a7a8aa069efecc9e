"""What a model costs: parameters, nonzeros, FLOPs, measured latency, bytes on disk, energy.

:func:`measure` returns a frozen :class:`Metrics`; :func:`compare_table` puts two of them
side by side (before / after pruning) as a ``rich`` table.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmul- and conv-type ops,
two FLOPs per multiply-accumulate). Per-module attribution uses forward hooks on every
prunable Linear/Conv module that read the counter's running total before and after the
module runs, so a module called twice is counted twice and names never need matching.
Masks are computed once before counting (:func:`prunekit.masking.cached`), so the mask multiply is
not part of the model's FLOPs (``FlopCounterMode`` would ignore an elementwise ``mul``
anyway). A weight used outside its module's forward (a tied head called through
``F.linear``) is counted, at full density, among the other ops.

This module holds :func:`measure`; the parts it combines live beside it and their public
names are re-exported here: :mod:`prunekit.metrics_count` (example inputs, FLOPs),
:mod:`prunekit.metrics_energy` (bytes and energy), :mod:`prunekit.metrics_timing` (latency,
load average) and :mod:`prunekit.metrics_table` (:class:`Metrics` and its tables).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import PruneError, PruneTypeError
from .metrics_count import check_example_inputs, count_flops, describe_shapes, resize_batch, uncounted
from .metrics_energy import flop_tally, param_tally, stored_sizes
from .metrics_timing import load_average as _load_average  # a global here, so that tests can replace it
from .metrics_timing import RUNTIMES, prepare, time_forward, time_runner, usable_cores, warn_if_busy
from .metrics_table import Metrics as _BaseMetrics
from .targets import check_module, find_targets, out_dim_of, rows_per_output
from .validate import choice, integer

# Defined in the modules beside this one and public here (import them from prunekit.metrics):
from .metrics_energy import ENERGY_PJ_45NM as ENERGY_PJ_45NM
from .metrics_table import compare_table as compare_table
from .metrics_table import format_table_text as format_table_text
from .metrics_timing import BusyMachineWarning as BusyMachineWarning
from .metrics_timing import RUNTIMES as RUNTIMES


@dataclass(frozen=True)
class Metrics(_BaseMetrics):
    """Costs of one model, as measured by :func:`measure` (every field of
    :class:`prunekit.metrics_table.Metrics`, plus how latency was timed).

    ``runtime`` is the runtime the latencies were timed in (:data:`RUNTIMES`);
    ``latency_sweep`` maps each batch size of ``measure(..., batch_sizes=[...])`` to its
    median milliseconds (``None`` without a sweep).
    """

    runtime: str = "eager"
    latency_sweep: dict[int, float] | None = None

    def rows(self) -> list[tuple[str, str]]:
        out = super().rows()
        extra = [("runtime", self.runtime)]
        if self.latency_sweep:
            extra.append(("latency by batch size", ", ".join(f"{b}: {ms:.3f} ms" for b, ms in self.latency_sweep.items())))
        return out[:11] + extra + out[11:]


@dataclass(frozen=True)
class Speedup:
    """How much of a MAC reduction became measured speed (:func:`speedup`).

    Attributes:
        speedup: dense latency ÷ pruned latency.
        mac_reduction: dense effective MACs ÷ pruned effective MACs.
        ratio: ``speedup / mac_reduction``: 1 when time falls exactly as the MACs do;
            below 1 when memory traffic, activations and overheads keep the time up.
        batch_size: the batch the latencies were timed at.
    """

    speedup: float
    mac_reduction: float
    ratio: float
    batch_size: int

    def text(self) -> str:
        return (f"{self.speedup:.2f}x faster at batch {self.batch_size} for {self.mac_reduction:.2f}x fewer MACs: "
                f"speedup ÷ MAC reduction = {self.ratio:.2f}")


def speedup(dense: Metrics, pruned: Metrics) -> Speedup | None:
    """Measured speedup and its ratio to the MAC reduction, from two :func:`measure` records.

    Uses the batch-``batch_size`` latency when both have it at the same batch size, else
    batch 1; ``None`` when latency was not timed in either. Latencies timed in different
    runtimes or thread counts are refused (``PruneError``).

    Example:
        >>> s = speedup(measure(dense, x), measure(small, x))
        >>> print(s.text())
    """
    where = [(getattr(m, "runtime", "eager"), m.threads) for m in (dense, pruned)]
    if where[0] != where[1] and (dense.latency_ms_b1 or dense.latency_ms_batch):
        raise PruneError(f"the two latencies were timed in {where[0][0]} on {where[0][1]} thread(s) and in "
                         f"{where[1][0]} on {where[1][1]}: a speedup compares one runtime and thread count; "
                         "measure both with the same runtime= and threads=")
    for field, batch in (("latency_ms_batch", pruned.batch_size), ("latency_ms_b1", 1)):
        if field == "latency_ms_batch" and dense.batch_size != pruned.batch_size:
            continue  # timed at different batch sizes: not a speedup
        a, b = getattr(dense, field), getattr(pruned, field)
        if a and b and pruned.flops_effective > 0:
            sp, red = a / b, dense.flops_effective / pruned.flops_effective
            return Speedup(sp, red, sp / red if red > 0 else float("nan"), batch)
    return None


def _check_dense_storage(model: nn.Module) -> None:
    """Refuse weights that are not tensors (``torch.ao`` quantized packed parameters): their
    parameters, FLOPs and energy would read zero. (CSR layers are counted by what they store.)"""
    odd = [f"{k} ({type(v).__name__})" for k, v in model.state_dict().items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise PruneTypeError(
            f"pk.measure counts tensor weights; {type(model).__name__} stores {', '.join(odd[:4])}"
            f"{' ...' if len(odd) > 4 else ''}: quantized packed storage it would count as zero parameters, FLOPs "
            "and energy. Measure the model before quantization; prunekit.deploy.advise times the deployed forms")


_SEQUENCE_FIRST = (nn.RNNBase, nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


@contextlib.contextmanager
def _sequence_first_watch(model: nn.Module, inputs: tuple[torch.Tensor, ...]):
    """Yields the names of sequence-first modules (``batch_first=False``) that saw a
    sequence of length 1 while the inputs' dim 0 was longer: what cutting the inputs to
    batch 1 does when dim 0 is time, not batch."""
    cut: list[str] = []
    if not any(t.dim() and t.shape[0] > 1 for t in inputs):
        yield cut
        return
    names = {id(m): n for n, m in model.named_modules()}

    def pre(mod: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[0] == 1 and names[id(mod)] not in cut:
            cut.append(names[id(mod)] or type(mod).__name__)

    hooks = [m.register_forward_pre_hook(pre) for m in model.modules()
             if isinstance(m, _SEQUENCE_FIRST) and not getattr(m, "batch_first", False)]
    try:
        yield cut
    finally:
        for h in hooks:
            h.remove()


def measure(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    batch_size: int = 64,
    latency: bool = True,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
    runtime: str = "eager",
    batch_sizes: Sequence[int] | None = None,
) -> Metrics:
    """Count, time and size ``model``; leave it exactly as it was.

    Latency is wall-clock time: when the 1-minute load average exceeds the usable cores
    (other processes compete for them) a :class:`BusyMachineWarning` says the latency
    figures are unreliable; ``Metrics.loadavg`` and ``Metrics.cores`` record both. Before
    the first timing, glibc is asked to keep freed memory in the process
    (:func:`prunekit.metrics_timing.steady_heap`: process-wide, opt out with
    ``PRUNEKIT_KEEP_FREED_MEMORY=0``); otherwise the same model could time 1.7 times slower
    in one preparation than in the next.

    Energy is an *estimate*, not a measurement: effective multiply-accumulates times the
    45 nm per-operation energies of :data:`ENERGY_PJ_45NM` (Horowitz, ISSCC 2014) at the
    weights' dtype, plus every parameter read once from DRAM (``memory_uj``: dense storage,
    which is what a masked or committed PyTorch model holds; ``memory_uj_sparse_storage``:
    only nonzero prunable weights, index overhead ignored), plus the inputs and outputs of
    Linear/Conv layers read or written once in SRAM (writes priced as reads).
    ``energy_uj = compute_uj + memory_uj``.

    Args:
        model: the model, masked or not. Measured in eval mode; its modes are restored.
            A masked model's latency includes recomputing ``original * mask`` each
            forward; commit or compact first to time what would ship.
        example_inputs: a tensor with a batch dimension, or a tuple of them. The first
            sample gives batch 1; samples are repeated along dim 0 to reach ``batch_size``.
        batch_size: the larger batch timed for ``latency_ms_batch``.
        latency: time the forward pass (median of ``repeats`` after ``warmup`` runs).
        warmup: untimed forward passes before timing.
        repeats: timed forward passes; the median is reported.
        threads: torch intra-op threads during the call; restored afterwards (and the
            ONNX Runtime session's threads).
        runtime: where the forward pass is timed: ``"eager"`` (PyTorch as is),
            ``"torchscript"`` (traced, frozen, optimized for inference), ``"compile"`` (``torch.compile``,
            compiled before timing) or ``"onnxruntime"`` (exported with ``torch.onnx``,
            run on the CPU provider). Counts and sizes do not depend on it.
        batch_sizes: also time these batch sizes (a sweep), in ``Metrics.latency_sweep``.

    Returns:
        A :class:`Metrics`.

    Example:
        >>> m = measure(nn.Linear(784, 300), torch.randn(8, 784), latency=False)
        >>> m.flops_dense
        470400
    """
    check_module(model)
    _check_dense_storage(model)
    inputs = check_example_inputs(example_inputs)
    integer("batch_size", batch_size, minimum=1)
    integer("warmup", warmup, minimum=0)
    integer("repeats", repeats, minimum=1)
    if threads is not None:
        integer("threads", threads, minimum=1)
    choice("runtime", runtime, RUNTIMES)
    if batch_sizes is not None:
        if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence) or not batch_sizes:
            raise PruneError(f"batch_sizes must be a non-empty list of batch sizes such as [1, 8, 64]; got {batch_sizes!r}")
        batch_sizes = [integer("batch_sizes[]", b, minimum=1) for b in batch_sizes]

    targets = find_targets(model)
    modules = list({id(m): m for t in targets for m in t.users(model)}.values())  # tied weights: every user
    modes = {m: m.training for m in model.modules()}
    old_threads = torch.get_num_threads()
    lat_b1 = lat_batch = sweep = None
    load, cores = _load_average(), usable_cores()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        model.eval()
        one = resize_batch(inputs, 1)
        try:
            fixed: dict[int, int] = {}
            with _sequence_first_watch(model, inputs) as cut:
                total, per_flops, per_acts = count_flops(model, one, modules, fixed)
        except Exception as e:  # any failure here means these inputs do not fit this model
            given, ran = describe_shapes(inputs), describe_shapes(one)
            at = "" if given == ran else f" at batch 1 (shape {ran}, cut from {given}: FLOPs are counted per sample)"
            raise PruneError(
                f"example inputs of shape {given} could not run through {type(model).__name__}{at}: "
                f"{type(e).__name__}: {e}"
            ) from e
        if cut:
            warnings.warn(
                f"sequence-first module(s) {', '.join(cut[:3])}{' ...' if len(cut) > 3 else ''} (batch_first=False) "
                f"ran on sequences of length 1: pk.measure takes dim 0 of the inputs as the batch and cut the inputs of "
                f"shape {describe_shapes(inputs)} to 1 along it, so the FLOPs and energy are for one step, and 'batch N' "
                "latencies time sequences of N steps. Give the model batch-first inputs (batch_first=True, or "
                "transpose inside forward)", UserWarning, stacklevel=2)
        missing = uncounted(model, per_flops, per_acts)
        if missing:
            warnings.warn(
                f"torch's FLOP counter counted nothing for {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} "
                "(a kernel it has no formula for): flops_dense, flops_effective and the energy estimate leave "
                "them out", UserWarning, stacklevel=3)
        if latency:
            warn_if_busy(load, cores, stacklevel=2)
            if runtime == "eager":
                lat_b1 = time_forward(model, one, warmup, repeats)
                lat_batch = time_forward(model, resize_batch(inputs, batch_size), warmup, repeats)
            else:
                lat_b1 = _time_in(model, one, runtime, warmup, repeats)
                lat_batch = _time_in(model, resize_batch(inputs, batch_size), runtime, warmup, repeats)
            if batch_sizes:
                sweep = {b: _time_in(model, resize_batch(inputs, b), runtime, warmup, repeats) for b in batch_sizes}
        n_threads = torch.get_num_threads()
    finally:
        for m, mode in modes.items():
            m.training = mode
        torch.set_num_threads(old_threads)

    params, nonzero, dense_pj, sparse_pj = param_tally(model, targets)
    effective, compute_pj, sram_pj = flop_tally(model, targets, total, per_flops, per_acts, inputs[0], fixed)
    prunable = sum(t.numel for t in targets)
    with torch.no_grad():
        prunable_nz = sum(int(torch.count_nonzero(t.weight)) for t in targets)
    size_bytes, size_compressed = stored_sizes(model)
    compute_uj = compute_pj / 1e6
    memory_uj = (dense_pj + sram_pj) / 1e6
    return Metrics(
        params=params,
        nonzero_params=nonzero,
        prunable_params=prunable,
        prunable_nonzero=prunable_nz,
        sparsity=1.0 - prunable_nz / prunable if prunable else 0.0,
        zero_fraction_all=1.0 - nonzero / params if params else 0.0,
        flops_dense=total,
        flops_effective=int(round(effective)),
        latency_ms_b1=lat_b1,
        latency_ms_batch=lat_batch,
        batch_size=batch_size,
        size_bytes=size_bytes,
        size_bytes_compressed=size_compressed,
        energy_uj=compute_uj + memory_uj,
        compute_uj=compute_uj,
        memory_uj=memory_uj,
        memory_uj_sparse_storage=(sparse_pj + sram_pj) / 1e6,
        threads=n_threads,
        loadavg=load,
        cores=cores,
        speed_note=_speed_note(targets),
        runtime=runtime,
        latency_sweep=sweep,
    )


def _time_in(model: nn.Module, inputs: tuple[torch.Tensor, ...], runtime: str, warmup: int, repeats: int) -> float:
    try:
        run = prepare(model, inputs, runtime, torch.get_num_threads())
    except ImportError:
        raise
    except Exception as e:
        raise PruneError(f"{type(model).__name__} could not be prepared for runtime={runtime!r}: "
                         f"{type(e).__name__}: {str(e)[:300]}") from e
    return time_runner(run, inputs, warmup, repeats)


def _speed_note(targets) -> str | None:
    """Say, and warn, when zeros will not make the model faster."""
    rows = constant = zeros = total = 0
    cuts: list[int] = []  # per layer: zeros in whole input columns
    with torch.no_grad():
        for t in targets:
            w = t.weight.detach()
            total += w.numel()
            nz = int(torch.count_nonzero(w))
            zeros += w.numel() - nz
            if w.dim() >= 2 and w.numel() and t.units:
                dead = ~rows_per_output(t.module, w).ne(0).any(1)
                w = w.movedim(out_dim_of(t.module), 0)
                bias = getattr(t.module, "bias", None) if t.param == "weight" else None
                if isinstance(bias, torch.Tensor) and bias.shape == dead.shape:
                    constant += int((dead & bias.ne(0)).sum())  # a constant output: compact keeps it
                    dead &= bias.eq(0)
                rows += int(dead.sum())
                zeros -= int(dead.sum()) * (w.numel() // w.shape[0])
                if getattr(t.module, "groups", 1) == 1 and w.shape[0]:
                    # whole input columns of zeros: once some output channel is gone, the inputs of
                    # pruned channels, which compact slices out with them (dead rows left out here)
                    cols = w[~dead].reshape(int((~dead).sum()), w.shape[1], -1)
                    gone = ~cols.ne(0).any(2).any(0) if cols.shape[0] else torch.zeros(w.shape[1], dtype=torch.bool)
                    cuts.append(int(gone.sum()) * cols.shape[0] * cols.shape[2])
    if rows:  # no output channel is gone: zero columns are scattered zeros (a model input's too)
        zeros -= sum(cuts)
    notes = []
    if rows:
        notes.append(f"{rows} output channels are all zero but still computed: pk.compact(model, example_inputs) removes them")
    if constant:
        notes.append(f"{constant} output channels have all-zero weights but a nonzero bias: they output a constant, "
                     "which pk.compact keeps (pruning with granularity='channel' removes filter and bias together)")
    if total and zeros / total > 0.01:
        notes.append(
            f"{zeros / total:.0%} of the prunable weights are scattered zeros, which dense kernels multiply like any "
            "other weight: latency and dense FLOPs do not drop (flops_effective is what a sparse kernel could reach); "
            "prune with granularity='channel' and pk.compact for speed"
        )
    if not notes:
        return None
    note = "; ".join(notes)
    warnings.warn(note, UserWarning, stacklevel=3)
    return note

