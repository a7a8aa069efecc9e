"""A measured latency as the budget of :func:`prunekit.llm.shrink.shrink`.

For each mode (width, depth, mixed), :func:`latency_candidates` bisects over parameter
budgets: the candidate of that mode meeting a budget (:func:`~prunekit.llm.budget.candidates`)
is pruned on a copy of the model and timed (a forward pass over ``seqlen`` tokens, the
fastest of ``repeats``, after one warm-up); the largest one that runs within the target is
kept. Timings are of this machine, with its current load and thread count.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from ..errors import PruneError
from ..metrics_timing import steady_heap
from .budget import Biases, Shape, candidates, full_shape, parameters
from .config_update import Architecture

__all__ = ["latency_candidates", "prefill_seconds"]


@torch.no_grad()
def prefill_seconds(model: nn.Module, seqlen: int, repeats: int = 3) -> float:
    """Fastest of ``repeats`` forward passes over one sequence of ``seqlen`` tokens (after a
    warm-up), with freed memory kept in the process (:func:`prunekit.metrics_timing.steady_heap`)."""
    steady_heap()
    vocab = int(model.config.vocab_size)
    ids = torch.randint(0, vocab, (1, seqlen), generator=torch.Generator().manual_seed(0))
    ids = ids.to(next(model.parameters()).device)
    was = model.training
    model.eval()
    try:
        model(input_ids=ids, use_cache=False)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            best = min(best, time.perf_counter() - t0)
        return best
    finally:
        model.train(was)


def latency_candidates(model: nn.Module, arch: Architecture, b: Biases, target_s: float, modes: tuple[str, ...],
                       apply: Callable[[nn.Module, Shape], object], *, seqlen: int = 256, repeats: int = 3,
                       steps: int = 6, measure: Callable[[nn.Module], float] | None = None) -> tuple[list[Shape], dict]:
    """The largest shape of each mode whose measured latency is at most ``target_s``.

    ``apply(copy, shape)`` prunes a copy in place. Returns ``(shapes, {"dense_s": ...,
    "measured": [{"shape", "seconds"}, ...]})``.
    """
    timer = measure or (lambda m: prefill_seconds(m, seqlen, repeats))
    dense_s = timer(model)
    if dense_s <= target_s:
        raise PruneError(f"the dense model already runs in {dense_s:.4f} s <= {target_s:.4f} s; ask for less")
    full = parameters(arch, full_shape(arch), b)
    cost = lambda s: parameters(arch, s, b)  # noqa: E731
    log: list[dict] = []
    out: list[Shape] = []
    for mode in modes:
        lo, hi, best = 0.05, 1.0, None
        for _ in range(steps):
            mid = (lo + hi) / 2
            try:
                shape = candidates(arch, cost, int(mid * full), (mode,))[0]
            except PruneError:
                lo = mid
                continue
            trial = copy.deepcopy(model)
            apply(trial, shape)
            seconds = timer(trial)
            del trial
            log.append({"shape": shape.as_dict(), "seconds": seconds})
            if seconds <= target_s:
                best, lo = shape, mid
            else:
                hi = mid
        if best is not None:
            out.append(best)
    if not out:
        raise PruneError(f"no candidate of modes {', '.join(modes)} ran within {target_s:.4f} s "
                         f"(dense: {dense_s:.4f} s); ask for more")
    return out, {"dense_s": dense_s, "measured": log}
