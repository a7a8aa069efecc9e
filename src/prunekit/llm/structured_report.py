"""What :func:`prunekit.llm.structured.prune_structured` reports: per block and in all."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..coverage import Coverage

__all__ = ["StructuredLayerReport", "StructuredReport"]


@dataclass
class StructuredLayerReport:
    """What :func:`~prunekit.llm.structured.prune_structured` did to one block.

    Attributes:
        name: the block's module name (``"model.layers.0"``).
        heads: query heads ``(before, after)``.
        kv_heads: key/value heads ``(before, after)``.
        neurons: MLP intermediate neurons ``(before, after)``.
        kept_heads: indices (original numbering) of the query heads kept, ascending.
        kept_kv_heads: indices of the key/value heads kept, ascending.
        kept_neurons: indices of the MLP neurons kept, ascending.
        seconds: time spent on this block (statistics, scores, slicing, recomputing outputs).
    """

    name: str
    heads: tuple[int, int]
    kv_heads: tuple[int, int]
    neurons: tuple[int, int]
    kept_heads: list[int]
    kept_kv_heads: list[int]
    kept_neurons: list[int]
    seconds: float


@dataclass
class StructuredReport:
    """What :func:`~prunekit.llm.structured.prune_structured` did.

    Attributes:
        criterion: ``"magnitude"`` or ``"wanda"``.
        gqa: ``"groups"`` or ``"queries"``.
        heads_requested, neurons_requested: the fractions asked for.
        heads_removed: fraction of each block's query heads actually removed (the request
            rounded down to whole KV groups, or whole query heads per group, that the config
            accepts).
        neurons_removed: fraction of each block's MLP neurons actually removed.
        parameters_before, parameters_after: distinct parameters of the model (tied weights once).
        layers: one entry per block, in model order.
        seconds: wall time of the whole call.
        calibration_tokens: tokens the statistics were computed on (0 for magnitude).
        coverage: the block linears in scope; embeddings and the LM head left dense.
    """

    criterion: str
    gqa: str
    heads_requested: float
    neurons_requested: float
    heads_removed: float
    neurons_removed: float
    parameters_before: int
    parameters_after: int
    layers: list[StructuredLayerReport] = field(default_factory=list)
    seconds: float = 0.0
    calibration_tokens: int = 0
    coverage: Coverage | None = None

    def summary(self) -> str:
        """A short text: totals, then one line per block with its kept heads."""
        first = self.layers[0]
        removed = 1 - self.parameters_after / self.parameters_before
        lines = [
            f"structured {self.criterion} (gqa={self.gqa!r}): {len(self.layers)} blocks, {self.seconds:.2f} s",
            f"  heads per block    {first.heads[0]} -> {first.heads[1]} (kv {first.kv_heads[0]} -> {first.kv_heads[1]}),"
            f" removed {self.heads_removed:.2%} (requested {self.heads_requested:.2%})",
            f"  neurons per block  {first.neurons[0]} -> {first.neurons[1]},"
            f" removed {self.neurons_removed:.2%} (requested {self.neurons_requested:.2%})",
            f"  parameters         {self.parameters_before:,} -> {self.parameters_after:,} ({removed:.2%} removed)",
        ]
        for r in self.layers:
            lines.append(f"  {r.name:<22} kept heads {r.kept_heads}  kv {r.kept_kv_heads}  {r.seconds:7.3f} s")
        return "\n".join(lines)
