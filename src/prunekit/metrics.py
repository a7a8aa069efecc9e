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
"""

from __future__ import annotations

import io
import lzma
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import safetensors.torch
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import PruneError, PruneTypeError
from .masking import cached, effective_state_dict, original, parametrized_names
from .targets import check_module, find_targets

#: Energy per operation in picojoules, 45 nm CMOS, from M. Horowitz, "Computing's energy
#: problem (and what we can do about it)", ISSCC 2014, pp. 10-14. Memory entries are per
#: 32-bit access; narrower or wider elements are scaled by their bit width.
ENERGY_PJ_45NM: dict[str, float] = {
    "fp32_add": 0.9,
    "fp32_mult": 3.7,
    "fp16_add": 0.4,
    "fp16_mult": 1.1,
    "int8_add": 0.03,
    "int8_mult": 0.2,
    "sram_read_32bit": 5.0,  # 8 KB cache
    "dram_read_32bit": 640.0,
}


@dataclass(frozen=True)
class Metrics:
    """Costs of one model, as measured by :func:`measure`.

    Counts are plain ints, times in milliseconds, sizes in bytes, energies in micro-joules
    per inference at batch 1, fractions in [0, 1]. Latency fields are ``None`` when latency
    was not measured. ``sparsity`` is the zero fraction of the prunable weights only;
    ``zero_fraction_all`` counts every parameter (biases, norms, embeddings and layers that
    were not pruned, such as an LSTM), so a model cannot look sparser than it is.
    ``loadavg`` is the 1-minute load average when timing started and ``cores`` the CPU
    cores this process may use: a load above the cores makes the latencies unreliable
    (:class:`BusyMachineWarning`).
    """

    params: int
    nonzero_params: int
    prunable_params: int
    prunable_nonzero: int
    sparsity: float
    zero_fraction_all: float
    flops_dense: int
    flops_effective: int
    latency_ms_b1: float | None
    latency_ms_batch: float | None
    batch_size: int
    size_bytes: int
    size_bytes_compressed: int
    energy_uj: float
    compute_uj: float
    memory_uj: float
    memory_uj_sparse_storage: float
    threads: int
    loadavg: float | None
    cores: int
    #: why latency will not follow the zeros (masked channels not compacted, unstructured
    #: zeros on dense kernels); None when every zero is gone from the computation
    speed_note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serializable ``{field: value}`` copy."""
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        """Every field as ``(label, value with its unit)``, in field order, for a table.

        Example:
            >>> dict(measure(nn.Linear(4, 2), torch.randn(1, 4), latency=False).rows())["zeros, all parameters"]
            '0.00 %'
        """
        def count(v: int) -> str:
            return f"{v:,}"

        def pct(v: float) -> str:
            return f"{v * 100:.2f} %"

        def ms(v: float | None) -> str:
            return "–" if v is None else f"{v:.3f} ms"

        def uj(v: float) -> str:
            return f"{v:.4g} µJ"

        load = "–" if self.loadavg is None else f"{self.loadavg:.2f}"
        return [
            ("parameters", count(self.params)),
            ("nonzero parameters", count(self.nonzero_params)),
            ("prunable weights", count(self.prunable_params)),
            ("prunable weights, nonzero", count(self.prunable_nonzero)),
            ("sparsity (zeros, prunable weights)", pct(self.sparsity)),
            ("zeros, all parameters", pct(self.zero_fraction_all)),
            ("FLOPs dense, batch 1", count(self.flops_dense)),
            ("FLOPs effective, batch 1", count(self.flops_effective)),
            ("latency batch 1", ms(self.latency_ms_b1)),
            (f"latency batch {self.batch_size}", ms(self.latency_ms_batch)),
            ("batch size", count(self.batch_size)),
            ("size as safetensors", f"{self.size_bytes:,} B"),
            ("size compressed (xz)", f"{self.size_bytes_compressed:,} B"),
            ("energy per inference (est.)", uj(self.energy_uj)),
            ("compute energy (est.)", uj(self.compute_uj)),
            ("memory energy, dense storage (est.)", uj(self.memory_uj)),
            ("memory energy, sparse storage (est.)", uj(self.memory_uj_sparse_storage)),
            ("torch threads", str(self.threads)),
            ("load average, 1 min", load),
            ("usable CPU cores", str(self.cores)),
            ("speed note", self.speed_note or "–"),
        ]


class BusyMachineWarning(UserWarning):
    """The machine was busier than its cores while latency was timed."""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def check_example_inputs(example_inputs: object) -> tuple[torch.Tensor, ...]:
    """Example inputs as a tuple of tensors, each with a batch dimension.

    Args:
        example_inputs: a tensor, or a non-empty tuple or list of tensors, each with at
            least one sample along dimension 0.

    Returns:
        The tensors as a tuple (a single tensor becomes a 1-tuple).

    Raises:
        PruneTypeError: anything else.
        PruneError: a tensor with no batch dimension or an empty one.
    """
    if isinstance(example_inputs, torch.Tensor):
        inputs: tuple = (example_inputs,)
    elif isinstance(example_inputs, (tuple, list)) and example_inputs and all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        inputs = tuple(example_inputs)
    else:
        raise PruneTypeError(
            "example_inputs must be a torch.Tensor with a batch dimension or a tuple of them, "
            f"got {_describe(example_inputs)}"
        )
    for t in inputs:
        if t.dim() == 0 or t.shape[0] < 1:
            raise PruneError(
                f"example_inputs need a batch dimension with at least one sample; got shape {tuple(t.shape)}"
            )
    return inputs


def _describe(obj: object) -> str:
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__} of ({', '.join(type(o).__name__ for o in obj)})"
    return type(obj).__name__


def _shapes(inputs: tuple[torch.Tensor, ...]) -> str:
    shapes = [tuple(t.shape) for t in inputs]
    return str(shapes[0]) if len(shapes) == 1 else str(shapes)


def resize_batch(inputs: tuple[torch.Tensor, ...], n: int) -> tuple[torch.Tensor, ...]:
    """The inputs with exactly ``n`` samples, their rows repeated or cut as needed.

    Args:
        inputs: tensors with a batch dimension, as :func:`check_example_inputs` returns.
        n: the batch size wanted, at least 1.

    Returns:
        One tensor per input, each with ``n`` rows along dimension 0.
    """
    out = []
    for t in inputs:
        reps = -(-n // t.shape[0])
        out.append(t.repeat(reps, *([1] * (t.dim() - 1)))[:n] if reps > 1 else t[:n])
    return tuple(out)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PruneTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise PruneError(f"{name} must be >= {minimum}, got {value}")
    return value


def _numel(obj: object) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel()
    if isinstance(obj, (tuple, list)):
        return sum(_numel(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_numel(o) for o in obj.values())
    return 0


def _dtype_key(dtype: torch.dtype) -> str:
    # bf16 has no row in the table; fp16 is its closest neighbour. fp64 falls back to fp32,
    # which understates its cost.
    if dtype in (torch.float16, torch.bfloat16):
        return "fp16"
    if dtype in (torch.int8, torch.uint8, torch.qint8, torch.quint8):
        return "int8"
    return "fp32"


def _mac_pj(dtype: torch.dtype) -> float:
    key = _dtype_key(dtype)
    return ENERGY_PJ_45NM[f"{key}_mult"] + ENERGY_PJ_45NM[f"{key}_add"]


def _bits(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size() * 8


def _effective_by_param(model: nn.Module) -> dict[int, torch.Tensor]:
    """``{id(trainable parameter): effective tensor}`` for parametrized parameters."""
    out: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for pname in parametrized_names(module):
            stored = original(module, pname)
            if isinstance(stored, torch.Tensor):
                out[id(stored)] = getattr(module, pname).detach()
    return out


def count_flops(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], modules: list[nn.Module]
) -> tuple[int, dict[int, int], dict[int, int]]:
    """Run one forward pass and count its FLOPs, in total and per module.

    Masks are computed before counting, so the mask multiply is not counted.

    Args:
        model: the model.
        inputs: the forward pass's inputs (callers pass batch 1).
        modules: the modules to attribute FLOPs to (forward hooks read the running total).

    Returns:
        ``(total, flops, activations)``: the total FLOPs, and per ``id(module)`` its FLOPs
        and the elements of its inputs plus outputs.
    """
    flops: dict[int, int] = {}
    acts: dict[int, int] = {}
    start: dict[int, int] = {}
    counter = FlopCounterMode(display=False)

    def pre(mod: nn.Module, args: Any) -> None:
        start[id(mod)] = counter.get_total_flops()

    def post(mod: nn.Module, args: Any, out: Any) -> None:
        key = id(mod)
        flops[key] = flops.get(key, 0) + counter.get_total_flops() - start.pop(key)
        acts[key] = acts.get(key, 0) + _numel(args) + _numel(out)

    handles = []
    for m in modules:
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        # no_grad, not inference_mode: FlopCounterMode's module tracker fails to read
        # parametrized weights under inference_mode.
        with torch.no_grad(), cached():
            for m in model.modules():
                for pname in parametrized_names(m):
                    getattr(m, pname)  # fill the cache outside the counter
            with counter:
                model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return int(counter.get_total_flops()), flops, acts


def _param_tally(model: nn.Module, targets: list) -> tuple[int, int, float, float]:
    """Parameters, nonzeros, and pJ to read them all (dense) or only nonzero prunable ones."""
    eff = _effective_by_param(model)
    prunable_ids = {id(t.original) for t in targets}
    params = nonzero = 0
    dense_pj = sparse_pj = 0.0
    with torch.no_grad():
        for p in model.parameters():
            nz = int(torch.count_nonzero(eff.get(id(p), p)))
            params += p.numel()
            nonzero += nz
            per_elem = ENERGY_PJ_45NM["dram_read_32bit"] * _bits(p.dtype) / 32
            dense_pj += p.numel() * per_elem
            sparse_pj += (nz if id(p) in prunable_ids else p.numel()) * per_elem
    return params, nonzero, dense_pj, sparse_pj


def _flop_tally(
    model: nn.Module, targets: list, total: int, per_flops: dict, per_acts: dict, x: torch.Tensor
) -> tuple[float, float, float]:
    """Effective FLOPs, compute pJ and activation SRAM pJ from the per-module counts. A
    module's density is over all its prunable weights (an LSTM has several, no ``weight``)."""
    by_module: dict[int, list] = {}
    for t in targets:
        by_module.setdefault(id(t.module), []).append(t)
    module_flops = 0
    effective = compute_pj = sram_pj = 0.0
    act_bits = _bits(x.dtype) if x.is_floating_point() else 32
    with torch.no_grad():
        for key, ts in by_module.items():
            f = per_flops.get(key, 0)
            nonzero = sum(int(torch.count_nonzero(t.weight)) for t in ts)
            density = nonzero / max(sum(t.weight.numel() for t in ts), 1)
            module_flops += f
            effective += f * density
            compute_pj += f * density / 2 * _mac_pj(ts[0].weight.dtype)  # 2 FLOPs per MAC
            sram_pj += per_acts.get(key, 0) * ENERGY_PJ_45NM["sram_read_32bit"] * act_bits / 32
    # Ops outside Linear/Conv (e.g. attention matmuls) run dense at the model's dtype.
    other = total - module_flops
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return effective + other, compute_pj + other / 2 * _mac_pj(dtype), sram_pj


def _time_forward(model: nn.Module, inputs: tuple[torch.Tensor, ...], warmup: int, repeats: int) -> float:
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


def measure(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    batch_size: int = 64,
    latency: bool = True,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
) -> Metrics:
    """Count, time and size ``model``; leave it exactly as it was.

    Latency is wall-clock time: when the 1-minute load average exceeds the usable cores
    (other processes compete for them) a :class:`BusyMachineWarning` says the latency
    figures are unreliable; ``Metrics.loadavg`` and ``Metrics.cores`` record both.

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
        threads: torch intra-op threads during the call; restored afterwards.

    Returns:
        A :class:`Metrics`.

    Example:
        >>> m = measure(nn.Linear(784, 300), torch.randn(8, 784), latency=False)
        >>> m.flops_dense
        470400
    """
    check_module(model)
    inputs = check_example_inputs(example_inputs)
    _check_int("batch_size", batch_size, 1)
    _check_int("warmup", warmup, 0)
    _check_int("repeats", repeats, 1)
    if threads is not None:
        _check_int("threads", threads, 1)

    targets = find_targets(model)
    modules = list({id(t.module): t.module for t in targets}.values())
    modes = {m: m.training for m in model.modules()}
    old_threads = torch.get_num_threads()
    lat_b1 = lat_batch = None
    load, cores = _load_average(), usable_cores()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        model.eval()
        one = tuple(t[:1] for t in inputs)
        try:
            total, per_flops, per_acts = count_flops(model, one, modules)
        except Exception as e:  # any failure here means these inputs do not fit this model
            raise PruneError(
                f"example inputs of shape {_shapes(inputs)} could not run through "
                f"{type(model).__name__}: {type(e).__name__}: {e}"
            ) from e
        if latency:
            if load is not None and load > cores:
                warnings.warn(
                    f"the 1-minute load average is {load:.2f} on {cores} usable CPU cores: other work competes for "
                    "them, so the latency figures are unreliable (measure again on an idle machine)",
                    BusyMachineWarning, stacklevel=2,
                )
            lat_b1 = _time_forward(model, one, warmup, repeats)
            lat_batch = _time_forward(model, resize_batch(inputs, batch_size), warmup, repeats)
        n_threads = torch.get_num_threads()
    finally:
        for m, mode in modes.items():
            m.training = mode
        torch.set_num_threads(old_threads)

    params, nonzero, dense_pj, sparse_pj = _param_tally(model, targets)
    effective, compute_pj, sram_pj = _flop_tally(model, targets, total, per_flops, per_acts, inputs[0])
    prunable = sum(t.numel for t in targets)
    with torch.no_grad():
        prunable_nz = sum(int(torch.count_nonzero(t.weight)) for t in targets)
    blob = safetensors.torch.save(effective_state_dict(model))
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
        size_bytes=len(blob),
        size_bytes_compressed=len(lzma.compress(blob, preset=6)),
        energy_uj=compute_uj + memory_uj,
        compute_uj=compute_uj,
        memory_uj=memory_uj,
        memory_uj_sparse_storage=(sparse_pj + sram_pj) / 1e6,
        threads=n_threads,
        loadavg=load,
        cores=cores,
        speed_note=_speed_note(targets),
    )


def _speed_note(targets) -> str | None:
    """Say, and warn, when zeros will not make the model faster."""
    rows = zeros = total = 0
    with torch.no_grad():
        for t in targets:
            w = t.weight.detach()
            total += w.numel()
            nz = int(torch.count_nonzero(w))
            zeros += w.numel() - nz
            if w.dim() >= 2 and w.numel():
                dead = ~w.reshape(w.shape[0], -1).ne(0).any(1)
                rows += int(dead.sum())
                zeros -= int(dead.sum()) * (w.numel() // w.shape[0])
    notes = []
    if rows:
        notes.append(f"{rows} output channels are all zero but still computed: pk.compact(model, example_inputs) removes them")
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


# --- tables ---------------------------------------------------------------------------


def _scaled(n: float, units: tuple, base: str = "") -> str:
    for unit, suffix in units:
        if abs(n) >= unit:
            return f"{n / unit:.2f}{suffix}"
    return f"{int(n)}{base}"


_FORMATS = {
    "count": lambda n: _scaled(n, ((1e9, "G"), (1e6, "M"), (1e3, "k"))),
    "bytes": lambda n: _scaled(n, ((2**30, " GiB"), (2**20, " MiB"), (2**10, " KiB")), " B"),
    "ms": lambda x: f"{x:.3f} ms",
    "uj": lambda x: f"{x:.3g} µJ",
    "acc": lambda x: f"{x * 100:.2f}%" if x <= 1 else f"{x:.2f}%",
    "pct": lambda x: f"{x * 100:.2f}%",
}


def _fmt(kind: str, value: float | None) -> str:
    return "–" if value is None else _FORMATS[kind](value)


def _ratio(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "–"
    if after == 0:
        return "1.0×" if before == 0 else "∞"
    return f"{before / after:.1f}×"


def _acc_delta(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "–"
    scale = 100 if before <= 1 and after <= 1 else 1
    return f"{(after - before) * scale:+.2f} pt"


def compare_table(
    before: Metrics,
    after: Metrics,
    *,
    before_acc: float | None = None,
    after_acc: float | None = None,
    title: str = "Before → after pruning",
) -> Table:
    """Put two :class:`Metrics` side by side.

    The ratio column is before ÷ after ("12.3×" means twelve times smaller or faster);
    for accuracy and the zero fraction of all parameters, which should not be divided, it
    shows the change in percentage points.

    Args:
        before: metrics of the original model.
        after: metrics of the pruned model.
        before_acc: accuracy before, as a fraction (0-1) or a percentage; row shown if
            either accuracy is given.
        after_acc: accuracy after.
        title: the table's title.

    Returns:
        A ``rich.table.Table``; print it, or render it with :func:`format_table_text`.

    Example:
        >>> print(format_table_text(compare_table(measure(dense, x), measure(pruned, x))))
    """
    for name, m in (("before", before), ("after", after)):
        if not isinstance(m, Metrics):
            raise PruneTypeError(f"{name} must be a Metrics (from prunekit.measure), got {type(m).__name__}")
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("ratio", justify="right")
    if before_acc is not None or after_acc is not None:
        table.add_row("accuracy", _fmt("acc", before_acc), _fmt("acc", after_acc), _acc_delta(before_acc, after_acc))
    n = str(before.batch_size) if before.batch_size == after.batch_size else f"{before.batch_size}/{after.batch_size}"
    rows = [
        ("params", "params", "count"),
        ("nonzero params", "nonzero_params", "count"),
        ("zeros, all params", "zero_fraction_all", "pct"),
        ("FLOPs dense", "flops_dense", "count"),
        ("FLOPs effective", "flops_effective", "count"),
        ("latency b1", "latency_ms_b1", "ms"),
        (f"latency batch {n}", "latency_ms_batch", "ms"),
        ("size as safetensors", "size_bytes", "bytes"),
        ("size compressed (xz)", "size_bytes_compressed", "bytes"),
        ("energy (est.)", "energy_uj", "uj"),
    ]
    for label, field, kind in rows:
        b, a = getattr(before, field), getattr(after, field)
        # a fraction is not divided either: its change is in percentage points
        table.add_row(label, _fmt(kind, b), _fmt(kind, a), _acc_delta(b, a) if kind == "pct" else _ratio(b, a))
    return table


def format_table_text(table: Table) -> str:
    """Render a ``rich`` table as plain text (100 columns wide), for logs and tests.

    Example:
        >>> text = format_table_text(compare_table(before, after))
    """
    console = Console(record=True, width=100, file=io.StringIO(), color_system=None)
    console.print(table)
    return console.export_text()
