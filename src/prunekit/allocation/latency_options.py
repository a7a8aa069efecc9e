"""What a pruner's ``allocation=``, ``latency=``, ``runtime=`` and ``round_to=`` options
describe: a :class:`~prunekit.allocation.latency.LatencyAllocation`, or another allocation."""

from __future__ import annotations

from ..errors import PruneError, PruneTypeError
from ..validate import integer
from .latency import LatencyAllocation

__all__ = ["resolve_latency"]


def resolve_latency(allocation: object, latency: object, runtime: object, round_to: object,
                    granularity: str) -> LatencyAllocation | None:
    """The :class:`LatencyAllocation` a pruner's ``allocation=``, ``latency=`` and
    ``runtime=`` describe, or ``None`` when they describe another allocation; checks
    ``round_to`` (``None``, a positive int or ``"auto"``)."""
    if round_to is not None and round_to != "auto":
        if not isinstance(round_to, int) or isinstance(round_to, bool):
            raise PruneTypeError(f"round_to must be a positive int, 'auto' or None; got {round_to!r}")
        integer("round_to", round_to, minimum=1)
    named = isinstance(allocation, str) and allocation == "latency"
    if (latency is not None or runtime is not None) and not named:
        raise PruneError(f"latency= and runtime= set the target of allocation='latency'; got allocation={allocation!r}")
    alloc = None
    if named and latency is None:
        raise PruneError("allocation='latency' needs latency=: a fraction of the dense model's latency in (0, 1] "
                         "such as 0.5, or milliseconds such as '2.5ms' (and granularity='channel' with example_inputs=)")
    if named:
        alloc = LatencyAllocation(latency, runtime=runtime or "eager")
    elif isinstance(allocation, LatencyAllocation):
        alloc = allocation
    if alloc is not None and alloc.target is not None and granularity not in ("channel", "head"):
        raise PruneError(f"allocation='latency' with a latency target removes coupled channels or heads: use "
                         f"granularity='channel' (or 'head') with example_inputs=; not {granularity!r}")
    return alloc
