"""What the Keras and scikit-learn adapters share: turning pruning settings into core
objects through the public registry, with errors that name the bad value and the accepted ones."""

from __future__ import annotations

from dataclasses import dataclass

from .. import validate as V
from ..allocation import Allocation
from ..criteria.base import Criterion
from ..errors import PruneError
from ..granularity import NM, Granularity, Head, make as make_granularity
from ..registry import available, create

__all__ = ["Settings", "resolve"]


@dataclass(frozen=True)
class Settings:
    """Validated pruning settings: core objects ready to use."""

    criterion: Criterion
    granularity: Granularity
    allocation: Allocation | None  # None for N:M, which fixes the pattern per layer
    sparsity: float


def resolve(
    sparsity: float | None,
    criterion: str | Criterion,
    granularity: str | Granularity,
    allocation: str | Allocation,
    min_keep: int = 1,
    *,
    max_sparsity: float | None = None,
    where: str = "this adapter",
) -> Settings:
    """Check the settings and build the core criterion, granularity and allocation.

    Args:
        sparsity: fraction of weights to remove, in [0, 1); may be left out for ``"N:M"``.
        criterion: a name from ``prunekit.available("criterion")`` or a ``Criterion``.
        granularity: ``"unstructured"``, ``"channel"``, ``"block"``, an ``"N:M"`` string or
            a ``Granularity`` (``"head"`` needs traced torch attention and is refused).
        allocation: a name from ``prunekit.available("allocation")`` or an ``Allocation``.
        min_keep: units every layer keeps at least (an int >= 0).
        max_sparsity: None, or the largest fraction of one layer that may go, in (0, 1].
        where: the caller's name, for error messages.

    Returns:
        The validated :class:`Settings`.
    """
    crit = create("criterion", criterion)
    gran = make_granularity(granularity)
    if isinstance(gran, Head):
        raise PruneError(
            f"granularity='head' traces torch attention and is not available in {where}; "
            "use 'unstructured', 'channel', 'block' or an 'N:M' string such as '2:4'"
        )
    V.integer("min_keep", min_keep, minimum=0)
    if max_sparsity is not None:
        V.fraction("max_sparsity", max_sparsity, one=True, zero=False, hint="or None for no cap")
    if isinstance(gran, NM):
        if sparsity is not None and abs(V.fraction("sparsity", sparsity) - gran.sparsity) > 1e-9:
            raise PruneError(
                f"sparsity={sparsity!r} conflicts with N:M {gran.n}:{gran.m}, which is {gran.sparsity:g}; leave sparsity out"
            )
        return Settings(crit, gran, None, gran.sparsity)
    if isinstance(allocation, str) and allocation not in available("allocation"):
        raise PruneError(f"allocation={allocation!r} is not available in {where}; use one of {available('allocation')}")
    alloc = create("allocation", allocation)
    if sparsity is None:
        raise PruneError("give sparsity= (the fraction of weights to remove, in [0, 1))")
    return Settings(crit, gran, alloc, V.fraction("sparsity", sparsity))

