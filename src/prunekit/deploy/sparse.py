"""Run sparse ``nn.Linear`` layers on sparse kernels, where that was measured to be faster.

Unstructured zeros make nothing faster on dense kernels. A ``torch.sparse`` CSR weight
skips them, but its kernels carry a fixed cost per call (tens of microseconds on a CPU)
and use the cache less well than dense GEMM, so whether CSR wins depends on the layer's
shape, its sparsity, the batch size and the machine. :func:`sparsify` therefore does not
guess: it times every candidate layer both ways on this machine, on the inputs the layer
really receives, and swaps in :class:`SparseLinear` only where CSR was measured faster at
the batch size the model will be deployed with.

On CUDA, a layer whose weight follows 2:4 (``pattern="2:4"``) is also timed on NVIDIA's
semi-structured kernels (:class:`SemiStructuredLinear`, float16/bfloat16), which beat dense
GEMM only at large token counts (on an H200, 1.3-1.4x at 32,768 tokens and slower below
8,192); the faster of CSR and 2:4 is taken when it beats dense by ``min_speedup``.

The CSR product is ``torch.sparse.addmm(bias[:, None], W_csr, x.T).T``: of the forms
tried with torch 2.13 on CPU at LeNet-300-100's shapes (``torch.sparse.mm``,
``torch.addmm``, ``W_csr @ x.T``, ``x @ W_csr.T``, ``F.linear(x, W_csr, b)``), it was the
fastest or within 0.015 ms of it everywhere, and unlike ``F.linear`` with a CSR weight it
runs under ``torch.inference_mode``.

This module times and decides (:func:`sparsify`); the layers themselves,
:class:`SparseLinear` and :class:`SemiStructuredLinear`, live in
:mod:`prunekit.deploy.sparse_linear` and are re-exported here.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .. import masking as _masks
from ..errors import PruneError, PruneTypeError
from ..metrics import check_example_inputs, resize_batch
from ..metrics_timing import steady_heap
from ..targets import check_module
from ..validate import fraction, integer, number
from .sparse_linear import SemiStructuredLinear, SparseLinear, follows_two_four

__all__ = ["SemiStructuredLinear", "SparseLayerReport", "SparseLinear", "SparseReport", "sparsify", "time_pair"]


@dataclass(frozen=True)
class SparseLayerReport:
    """What :func:`sparsify` measured and decided for one ``nn.Linear``.

    ``dense_ms`` and ``csr_ms`` map a batch size to the median forward time in
    milliseconds; they are empty when the layer was not timed (see ``reason``).
    ``semi_dense_ms`` and ``semi_ms`` are the same for the 2:4 semi-structured kernels (CUDA,
    a 2:4 weight; their own interleaved timing, so each ratio compares runs side by side).
    ``decision`` is ``"csr"`` (replaced by :class:`SparseLinear`), ``"2:4"`` (replaced by
    :class:`SemiStructuredLinear`) or ``"dense"`` (kept).
    """

    name: str
    shape: tuple[int, int]
    sparsity: float
    dense_ms: dict[int, float]
    csr_ms: dict[int, float]
    decision: str
    reason: str
    semi_dense_ms: dict[int, float] = field(default_factory=dict)
    semi_ms: dict[int, float] = field(default_factory=dict)

    def speedup(self, batch_size: int) -> float | None:
        """Measured dense time ÷ CSR time at ``batch_size`` (> 1: CSR faster), or ``None``."""
        if batch_size not in self.dense_ms or batch_size not in self.csr_ms:
            return None
        return self.dense_ms[batch_size] / self.csr_ms[batch_size]

    def semi_speedup(self, batch_size: int) -> float | None:
        """Measured dense time ÷ 2:4 kernel time at ``batch_size``, or ``None`` (not timed)."""
        if batch_size not in self.semi_dense_ms or batch_size not in self.semi_ms:
            return None
        return self.semi_dense_ms[batch_size] / self.semi_ms[batch_size]


@dataclass
class SparseReport:
    """What :func:`sparsify` returns: the new model and, per ``nn.Linear``, what was measured.

    ``model_dense_ms`` / ``model_sparse_ms`` are whole-model forward times at
    ``batch_size`` (before / after the swap), measured only when a layer was replaced.
    """

    model: nn.Module
    layers: list[SparseLayerReport]
    batch_size: int
    batch_sizes: tuple[int, ...]
    min_sparsity: float
    min_speedup: float
    repeats: int
    threads: int
    model_dense_ms: float | None = None
    model_sparse_ms: float | None = None
    max_abs_diff: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def replaced(self) -> list[str]:
        """Names of the layers now running on sparse kernels (:class:`SparseLinear` or
        :class:`SemiStructuredLinear`)."""
        return [l.name for l in self.layers if l.decision != "dense"]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serializable copy, without the model (batch-size keys become strings in JSON)."""
        out = {k: v for k, v in vars(self).items() if k not in ("model", "layers")}
        return {**out, "batch_sizes": list(self.batch_sizes), "replaced": self.replaced,
                "layers": [{**asdict(l), "shape": list(l.shape)} for l in self.layers]}

    def summary(self) -> str:
        """A plain-text table: per layer, times per batch size, the decision and why."""
        width = max([len(l.name) for l in self.layers] + [5])
        semi = any(l.semi_ms for l in self.layers)
        head = f"{'layer':<{width}}  {'shape':<12} {'zeros':>7}"
        for b in self.batch_sizes:
            head += f"  {f'b{b} dense/csr ms':>22}" + (f"  {f'b{b} dense/2:4 ms':>22}" if semi else "")
        lines = [head + "  decision"]
        for l in self.layers:
            row = f"{l.name:<{width}}  {'x'.join(map(str, l.shape)):<12} {l.sparsity:>7.1%}"
            for b in self.batch_sizes:
                cell = f"{l.dense_ms[b]:.3f}/{l.csr_ms[b]:.3f} ({l.speedup(b):.2f}×)" if l.speedup(b) else "–"
                row += f"  {cell:>22}"
                if semi:
                    cell = (f"{l.semi_dense_ms[b]:.3f}/{l.semi_ms[b]:.3f} ({l.semi_speedup(b):.2f}×)"
                            if l.semi_speedup(b) else "–")
                    row += f"  {cell:>22}"
            lines.append(f"{row}  {l.decision}: {l.reason}")
        if self.model_dense_ms is not None and self.model_sparse_ms is not None:
            lines.append(f"whole model at batch {self.batch_size}: {self.model_dense_ms:.3f} ms dense, "
                         f"{self.model_sparse_ms:.3f} ms with sparse layers "
                         f"({self.model_dense_ms / self.model_sparse_ms:.2f}×), {self.threads} thread(s)")
        lines.extend(self.notes)
        return "\n".join(lines)


def time_pair(dense: Callable[[], Any], sparse: Callable[[], Any], repeats: int, *,
              warmup: int = 3, cuda: bool = False) -> tuple[float, float]:
    """Median milliseconds of two callables, timed in alternating order under ``inference_mode``.

    Each round runs both once; the order flips every round so that drifting background
    load hits both alike. Freed memory is kept in the process first (:func:`steady_heap`).
    """
    steady_heap()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fns = (dense, sparse)
    times: tuple[list[float], list[float]] = ([], [])
    with torch.inference_mode():
        for _ in range(warmup):
            dense()
            sparse()
        sync()
        for r in range(repeats):
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                t0 = time.perf_counter()
                fns[i]()
                sync()
                times[i].append(time.perf_counter() - t0)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def _check_args(batch_size: object, batch_sizes: object, min_sparsity: object, repeats: object,
                min_speedup: object) -> tuple[int, tuple[int, ...], float, int, float]:
    b = integer("batch_size", batch_size, minimum=1)
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence) or not batch_sizes:
        raise PruneTypeError(f"batch_sizes must be a non-empty sequence of ints >= 1, got {batch_sizes!r}")
    sizes = tuple(sorted({integer("batch_sizes entry", s, minimum=1) for s in batch_sizes} | {b}))
    sparsity = fraction("min_sparsity", min_sparsity, one=True)
    speedup = number("min_speedup", min_speedup, lo=0.0, lo_open=True, hint="1.0: any measured gain")
    return b, sizes, sparsity, integer("repeats", repeats, minimum=1), speedup


def _candidates(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """``nn.Linear`` modules whose forward is ``nn.Linear``'s own (subclasses may differ)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward]


def _layer_inputs(model: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str]) -> dict[str, torch.Tensor]:
    """The input each named layer receives on its first call when ``model`` runs ``inputs``."""
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple) -> None:
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[name] = args[0].detach().clone()
        return fn

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.inference_mode():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def sparsify(
    model: nn.Module,
    example_inputs: Any,
    *,
    batch_size: int,
    batch_sizes: Sequence[int] = (1, 256),
    min_sparsity: float = 0.5,
    repeats: int = 30,
    min_speedup: float = 1.1,
) -> SparseReport:
    """Swap sparse ``nn.Linear`` layers for :class:`SparseLinear` where CSR was measured faster.

    Works on a committed, eval-mode deep copy; ``model`` is not changed. Each ``nn.Linear``
    with at least ``min_sparsity`` zeros that the model calls is timed here, dense vs CSR,
    on the input it receives at each batch size (``example_inputs`` repeated along dim 0),
    and replaced when dense time ÷ CSR time >= ``min_speedup`` at ``batch_size``. The new
    model's outputs are checked against the dense copy's and both are timed at
    ``batch_size``. Decisions hold for this machine, ``torch.get_num_threads()`` and batch.

    Args:
        model: the model, masked or committed.
        example_inputs: a tensor with a batch dimension, or a tuple of them.
        batch_size: the batch size the model will run at; decisions are taken there.
        batch_sizes: batch sizes to time (``batch_size`` is added if missing).
        min_sparsity: fraction of zeros in [0, 1] below which a layer is not timed and
            stays dense.
        repeats: timed runs per variant and batch size (the median is kept).
        min_speedup: the smallest measured dense ÷ CSR ratio that counts as faster; the
            default 1.1 keeps run-to-run noise of a few percent from deciding.

    Returns:
        A :class:`SparseReport`: ``.model`` (new), ``.layers`` (times, decision, reason).

    Raises:
        PruneError: bad arguments, inputs that do not run through the model, or outputs
            of the new model that differ from the dense copy's.

    Example:
        >>> report = sparsify(model, torch.randn(1, 1, 28, 28), batch_size=256)
        >>> print(report.summary())
    """
    check_module(model)
    inputs = check_example_inputs(example_inputs)
    batch_size, sizes, min_sparsity, repeats, min_speedup = _check_args(
        batch_size, batch_sizes, min_sparsity, repeats, min_speedup)
    dense = _masks.commit(copy.deepcopy(model)).eval()
    cands = _candidates(dense)
    try:
        seen = {b: _layer_inputs(dense, resize_batch(inputs, b), [n for n, _ in cands]) for b in sizes}
    except Exception as e:
        raise PruneError(f"example_inputs of shape {[tuple(t.shape) for t in inputs]} do not run through "
                         f"{type(model).__name__}: {type(e).__name__}: {e}") from e
    cuda = any(t.is_cuda for t in inputs)
    reports: list[SparseLayerReport] = []
    chosen: dict[str, nn.Module] = {}
    for name, lin in cands:
        w = lin.weight.detach()
        sp = 1.0 - int(torch.count_nonzero(w)) / max(1, w.numel())
        shape = (lin.out_features, lin.in_features)
        if sp < min_sparsity:
            reports.append(SparseLayerReport(name, shape, sp, {}, {}, "dense",
                                             f"{sp:.1%} zeros, below min_sparsity {min_sparsity:.1%}; not timed"))
            continue
        if name not in seen[batch_size]:
            reports.append(SparseLayerReport(name, shape, sp, {}, {}, "dense",
                                             "not called as a module on example_inputs (its weight may be used "
                                             "directly, as nn.MultiheadAttention does); not timed"))
            continue
        report, layer = _time_layer(name, lin, shape, sp, seen, sizes, batch_size, repeats, min_speedup, cuda)
        reports.append(report)
        if layer is not None:
            chosen[name] = layer

    new = copy.deepcopy(dense) if chosen else dense
    for name, layer in chosen.items():
        parent, _, child = name.rpartition(".")
        setattr(new.get_submodule(parent) if parent else new, child, layer)
    result = SparseReport(new, reports, batch_size, sizes, min_sparsity, min_speedup, repeats, torch.get_num_threads())
    if not chosen:
        result.notes.append("no layer replaced: the returned model is the committed dense copy")
        return result
    xb = resize_batch(inputs, batch_size)
    result.max_abs_diff = _check_outputs(dense, new, xb)
    result.model_dense_ms, result.model_sparse_ms = time_pair(lambda: dense(*xb), lambda: new(*xb), repeats, cuda=cuda)
    return result


def _time_layer(name: str, lin: nn.Linear, shape: tuple[int, int], sp: float, seen: dict[int, dict[str, torch.Tensor]],
                sizes: tuple[int, ...], batch_size: int, repeats: int, min_speedup: float,
                cuda: bool) -> tuple[SparseLayerReport, nn.Module | None]:
    """Time one layer dense against each sparse form it can take; the report and the
    replacement (``None``: stays dense)."""
    times: dict[str, tuple[dict[int, float], dict[int, float]]] = {}
    layers: dict[str, nn.Module] = {}
    notes: list[str] = []
    forms: list[tuple[str, Callable[[nn.Linear], nn.Module]]] = [("csr", SparseLinear.from_linear)]
    if follows_two_four(lin.weight):
        if cuda:
            forms.append(("2:4", SemiStructuredLinear.from_linear))
        else:
            notes.append("2:4 semi-structured kernels need CUDA: not timed on the CPU")
    for kind, build in forms:
        dense_ms: dict[int, float] = {}
        sparse_ms: dict[int, float] = {}
        try:
            layer = build(lin)
            for b in sizes:
                x = seen[b][name]
                dense_ms[b], sparse_ms[b] = time_pair(lambda: lin(x), lambda: layer(x), repeats, cuda=cuda)
        except Exception as e:  # e.g. a dtype or shape the kernels do not support
            notes.append(f"{kind.upper()} forward failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        times[kind], layers[kind] = (dense_ms, sparse_ms), layer
    gains = {k: (d[batch_size] / t[batch_size] if t[batch_size] > 0 else math.inf) for k, (d, t) in times.items()}
    best = max(gains, key=gains.get, default=None)
    parts = [f"{k.upper()} measured {g:.2f}× as fast as dense at batch {batch_size} "
             f"({times[k][1][batch_size]:.3f} ms vs {times[k][0][batch_size]:.3f} ms)" for k, g in gains.items()]
    decision = best if best is not None and gains[best] >= min_speedup else "dense"
    if gains and decision == "dense":
        parts[-1] += f"; needs >= {min_speedup:.2f}×"
    csr, semi = times.get("csr", ({}, {})), times.get("2:4", ({}, {}))
    report = SparseLayerReport(name, shape, sp, csr[0], csr[1], decision, "; ".join(parts + notes), semi[0], semi[1])
    return report, layers.get(decision)


def _check_outputs(dense: nn.Module, new: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """Largest absolute output difference; raise if beyond the rounding of the output's dtype
    (sums in another order: 1e-4 of the largest output in float32, 8 ulps in half precision)."""
    with torch.inference_mode():
        pairs = zip(*(pytree.tree_leaves(m(*inputs)) for m in (dense, new)))
        worst = 0.0
        for r, g in pairs:
            if isinstance(r, torch.Tensor) and r.is_floating_point() and r.numel():
                diff, scale = float((r - g).abs().max()), float(r.abs().max())
                worst = max(worst, diff)
                if not diff <= max(1e-4, 8 * torch.finfo(r.dtype).eps) * max(1.0, scale):
                    raise PruneError(f"outputs with sparse layers differ from the dense model by {diff:.3g} "
                                     f"(largest output {scale:.3g}); no model returned")
    return worst
