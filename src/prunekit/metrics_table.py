"""The :class:`Metrics` record of :func:`prunekit.metrics.measure`, and tables of it.

Part of :mod:`prunekit.metrics` (which re-exports these names; import them from there).
:func:`compare_table` puts two records side by side (before / after pruning) as a ``rich``
table; :func:`format_table_text` renders one as plain text.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from .errors import PruneTypeError


@dataclass(frozen=True)
class Metrics:
    """Costs of one model, as measured by :func:`prunekit.metrics.measure`.

    Counts are plain ints, times in milliseconds, sizes in bytes, energies in micro-joules
    per inference at batch 1, fractions in [0, 1]. Latency fields are ``None`` when latency
    was not measured. ``sparsity`` is the zero fraction of the prunable weights only;
    ``zero_fraction_all`` counts every parameter (biases, norms, embeddings and layers that
    were not pruned, such as an LSTM), so a model cannot look sparser than it is.
    ``loadavg`` is the 1-minute load average when timing started and ``cores`` the CPU
    cores this process may use: a load above the cores makes the latencies unreliable
    (:class:`prunekit.metrics.BusyMachineWarning`).
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
        if field == "latency_ms_batch" and before.batch_size != after.batch_size:
            table.add_row(label, _fmt(kind, b), _fmt(kind, a), "–")  # timed at different batch sizes
            continue
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
