"""What :func:`prunekit.llm.prune_llm` reports: per layer and for the whole run."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..coverage import Coverage
from .reconstruct import ReconstructResult


@dataclass
class LLMLayerReport:
    """One pruned linear layer.

    Attributes:
        name: the weight's module name in the model (``"model.layers.0.self_attn.q_proj"``).
        shape: ``(out_features, in_features)``.
        sparsity: fraction of zero weights after pruning.
        seconds: time spent choosing the mask and updating the weights of this layer.
    """

    name: str
    shape: tuple[int, int]
    sparsity: float
    seconds: float


@dataclass
class LLMPruneReport:
    """What :func:`prune_llm` did.

    Attributes:
        method: ``"sparsegpt"``, ``"wanda"``, ``"ria"`` or ``"magnitude"``.
        sparsity: the fraction removed from every layer (``1 - N/M`` for an N:M pattern).
        pattern: ``"N:M"`` or ``None`` for unstructured sparsity.
        layers: one entry per pruned linear layer, in model order.
        seconds: wall time of the whole call.
        calibration_tokens: tokens the statistics were computed on (0 for magnitude).
        peak_memory_bytes: peak accelerator memory during the call on CUDA, else ``None``.
        allocation: ``"uniform"`` or ``"owl"``.
        block_sparsity: the sparsity given to each block (all equal when uniform).
        outlier_ratio: with OWL, each block's fraction of outlier Wanda scores (in %).
        sequential: whether the linears of a block were pruned group by group.
        reconstruct: epochs of block-wise reconstruction after pruning (0 = none).
        reconstruction: per block, what the reconstruction did (epochs run, the epoch kept,
            the held-out error); empty without reconstruction.
        self_calibration: the fraction of calibration windows the model wrote itself.
        refine: ``"dsnot"`` when the masks were refined after selection, else ``None``.
        generated_windows: how many windows that was; ``generation_seconds``: the time it took.
        coverage: the weights in scope and those left dense, with why.
        committed: True when the masks were committed (the default); False with
            ``keep_masks=True``.
    """

    method: str
    sparsity: float
    pattern: str | None
    layers: list[LLMLayerReport] = field(default_factory=list)
    seconds: float = 0.0
    calibration_tokens: int = 0
    peak_memory_bytes: int | None = None
    allocation: str = "uniform"
    block_sparsity: list[float] = field(default_factory=list)
    outlier_ratio: list[float] | None = None
    sequential: bool = False
    reconstruct: int = 0
    reconstruction: list[ReconstructResult] = field(default_factory=list)
    self_calibration: float = 0.0
    refine: str | None = None
    generated_windows: int = 0
    generation_seconds: float = 0.0
    coverage: Coverage | None = None
    committed: bool = True

    @property
    def overall_sparsity(self) -> float:
        """Fraction of zeros over all pruned layers together."""
        total = sum(r.shape[0] * r.shape[1] for r in self.layers)
        if total == 0:
            return 0.0
        return sum(r.sparsity * r.shape[0] * r.shape[1] for r in self.layers) / total

    def summary(self) -> str:
        """A short text table: one line per layer and a total."""
        pat = f" {self.pattern}" if self.pattern else ""
        pat += f" + {self.refine}" if self.refine else ""
        lines = [f"{self.method}{pat}: {len(self.layers)} layers, {self.seconds:.2f} s"]
        for r in self.layers:
            lines.append(f"  {r.name:<48} {str(r.shape):<14} {r.sparsity:7.2%} {r.seconds:7.3f} s")
        lines.append(f"  overall sparsity {self.overall_sparsity:.2%}")
        if self.coverage is not None:
            lines.append("  " + self.coverage.describe().replace("\n", "\n  "))
        return "\n".join(lines)
