"""Random criteria: the baseline every pruning result must beat."""

from __future__ import annotations

import torch

from ..registry import register
from .base import Context, Criterion


@register("criterion", "random")
class Random(Criterion):
    """Random importance, seeded and reproducible.

    Args:
        weighted: if False, every element is equally likely to be kept. If True, the kept
            set is a weighted sample without replacement with probability proportional to
            |w| (Efraimidis–Spirakis keys ``u^(1/|w|)``, compared in log space), so large
            weights are more likely to survive but nothing is guaranteed.
    """

    def __init__(self, weighted: bool = False) -> None:
        self.weighted = weighted

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(ctx.seed)
        out = {}
        for t in ctx.targets:
            w = t.weight.detach()
            u = torch.rand(w.shape, generator=gen, dtype=torch.float32).clamp_min_(1e-12).to(w.device)
            if self.weighted:
                # log(u^(1/|w|)) = log(u)/|w|: larger is kept; zero weights get -inf.
                out[t.name] = u.log_() / w.abs().float()
            else:
                out[t.name] = u
        return out


def random(model, weighted: bool = False, **kwargs) -> dict[str, torch.Tensor]:
    """Functional twin of :class:`Random`."""
    return Random(weighted=weighted)(model, **kwargs)
