"""What a pruning call covered and what it left dense, with the reason.

Every pruning result (torch core, Keras, scikit-learn, LLM) carries a :class:`Coverage`:
``covered`` counts the weights the call could prune (its scope: ``sparsity`` is the zero
fraction over exactly these), ``total`` every parameter of the model, and ``skipped`` the
weight tensors it left dense, each with its size and why. Biases and normalization scales
are never pruned by design; they count in ``total`` and are summarized as one line, not
listed one by one.

When the weights left out of scope are a significant share of the model (more than
:data:`WARN_SHARE`), :meth:`Coverage.warn` says so, naming the largest ones: a "90 %
pruned" model must never hide that most of its parameters were not touched.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

#: Share of all parameters that, left out of scope as weight tensors, triggers a warning.
WARN_SHARE = 0.05


@dataclass(frozen=True)
class Skipped:
    """One weight tensor left dense by a pruning call."""

    name: str
    numel: int
    reason: str
    #: left out by the caller's own settings (``ignore=``, the model's output layer): listed,
    #: but never the subject of a coverage warning
    by_choice: bool = False


@dataclass(frozen=True)
class Coverage:
    """What a pruning call covered.

    Attributes:
        covered: elements in the weights the call pruned (its scope).
        total: elements in all parameters of the model.
        skipped: weight tensors (two or more dimensions, or embeddings) left dense, with why.
    """

    covered: int
    total: int
    skipped: tuple[Skipped, ...] = field(default_factory=tuple)

    @property
    def share(self) -> float:
        """Fraction of all parameters inside the scope."""
        return self.covered / self.total if self.total else 0.0

    @property
    def skipped_numel(self) -> int:
        return sum(s.numel for s in self.skipped)

    @property
    def skipped_share(self) -> float:
        """Fraction of all parameters in skipped weight tensors."""
        return self.skipped_numel / self.total if self.total else 0.0

    def describe(self, limit: int = 6) -> str:
        """One line per skipped weight (largest first, at most ``limit``) plus the totals."""
        lines = [
            f"scope: {self.covered:,} of {self.total:,} parameters ({self.share:.1%}); "
            f"weights left dense: {self.skipped_numel:,} ({self.skipped_share:.1%})"
        ]
        ranked = sorted(self.skipped, key=lambda s: -s.numel)
        for s in ranked[:limit]:
            lines.append(f"  {s.name} ({s.numel:,}, {s.numel / max(1, self.total):.1%}): {s.reason}")
        if len(ranked) > limit:
            lines.append(f"  ... and {len(ranked) - limit} more")
        return "\n".join(lines)

    def warn(self, what: str = "pruning", stacklevel: int = 3) -> None:
        """Warn when weights skipped for lack of support (not by the caller's choice)
        exceed :data:`WARN_SHARE` of all parameters; the message groups them by reason."""
        unsupported = [s for s in self.skipped if not s.by_choice]
        share = sum(s.numel for s in unsupported) / self.total if self.total else 0.0
        if share > WARN_SHARE:
            by_reason: dict[str, list[Skipped]] = {}
            for s in sorted(unsupported, key=lambda s: -s.numel):
                by_reason.setdefault(s.reason, []).append(s)
            parts = []
            for reason, items in by_reason.items():
                names = ", ".join(s.name for s in items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")
                parts.append(f"{names} ({sum(s.numel for s in items) / self.total:.1%}): {reason}")
            warnings.warn(
                f"{what} could not prune {share:.1%} of the model's parameters: {'; '.join(parts)}. "
                f"The reported sparsity covers {self.share:.1%} of the parameters.",
                CoverageWarning,
                stacklevel=stacklevel,
            )


class CoverageWarning(UserWarning):
    """A significant share of the model's weights was left out of a pruning call."""


def unsupported_weights(model, known: set[str]) -> list[Skipped]:
    """Weight tensors of a torch ``model`` that no prunekit target covers.

    Args:
        model: an ``nn.Module`` (masked or not).
        known: canonical names (``"fc.weight"``) already accounted for (targets, ignored
            weights, aliases).

    Returns:
        One :class:`Skipped` per parameter with two or more dimensions that is not in
        ``known``, naming the module type that owns it.
    """
    from .masking import is_parametrization_key, original, parametrized_names

    out = []
    seen: set[int] = set()  # tied tensors (an embedding shared with the LM head) count once
    for mname, module in model.named_modules():
        names = [n for n, _ in module.named_parameters(recurse=False)] + parametrized_names(module)
        for pname in names:
            full = f"{mname}.{pname}" if mname else pname
            if is_parametrization_key(full) or full in known:
                continue
            p = original(module, pname)
            if p is None or p.dim() < 2 or id(p) in seen:
                continue
            seen.add(id(p))
            out.append(Skipped(full, p.numel(), f"{type(module).__name__}.{pname}: prunekit has no rule for this layer type"))
    return out


def total_params(model) -> int:
    """Elements in every parameter of a torch model (tied parameters once)."""
    return sum(p.numel() for p in model.parameters())
