"""Allocation: how one global target becomes a decision per unit in every layer.

Every allocation receives, per layer, a 1-D tensor of unit scores (higher = more important;
``-inf`` marks units an earlier pruning already removed, which stay removed) and the number
of weights per unit, and returns a boolean *keep* tensor per layer.

Targets are counted in weights: ``sparsity=0.9`` removes (as close as units allow) 90 % of
the prunable weights. Unless ``min_keep=0``, no layer is ever emptied: each keeps at least
its ``min_keep`` best units (a global threshold that wipes out a whole layer is the classic
way to collapse accuracy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import PruneError
from ..registry import register, set_base


@dataclass
class Layer:
    """A layer's units as an allocation sees them."""

    name: str
    scores: torch.Tensor  # 1-D float; -inf = already pruned
    size: int | torch.Tensor  # weights per unit
    shape: tuple[int, ...]  # the weight's shape (ERK uses it)

    @property
    def n_units(self) -> int:
        return self.scores.numel()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def sizes(self) -> torch.Tensor:
        if isinstance(self.size, int):
            return torch.full((self.n_units,), self.size, dtype=torch.long, device=self.scores.device)
        return self.size.to(self.scores.device)


def prune_lowest(scores: torch.Tensor, sizes: torch.Tensor, budget: float) -> torch.Tensor:
    """Keep-mask that removes the lowest-scoring units whose weights add up closest to
    ``budget``. Ties go to the earlier unit; ``-inf`` units are always removed and
    ``+inf`` units never."""
    order = torch.sort(scores, stable=True).indices
    cum = sizes[order].cumsum(0)
    forced = int(torch.count_nonzero(scores == float("-inf")))
    protected = int(torch.count_nonzero(scores == float("inf")))
    if sizes.numel() and bool((sizes == sizes[0]).all()):
        # Equal units: Python's round(), as torch.nn.utils.prune counts (7.5 -> 8, 6.5 -> 6).
        n = round(budget / float(sizes[0]))
    else:
        n = int(torch.searchsorted(cum, torch.tensor(budget, dtype=cum.dtype), right=True))
        if n < cum.numel():
            below = float(cum[n - 1]) if n > 0 else 0.0
            if float(cum[n]) - budget < budget - below:
                n += 1
    n = min(max(n, forced), scores.numel() - protected)
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep[order[:n]] = False
    return keep


def cap_layers(layers: list[Layer], cap: float | None) -> list[Layer]:
    """Protect (score +inf) the best units of every layer so at most ``cap`` of it goes.

    ``cap=None`` (or >= 1) returns ``layers`` unchanged. Used by every allocation caller that
    must never collapse a layer (the core's coupled channels, the Keras adapter).
    """
    if cap is None or cap >= 1:
        return layers
    out = []
    for l in layers:
        n = l.n_units
        keep = min(n, math.ceil((1 - cap) * n - 1e-9))
        s = l.scores
        if keep > 0 and n:
            top = torch.topk(s, keep).indices
            s = s.clone()
            s[top] = torch.where(s[top] == float("-inf"), s[top], torch.full_like(s[top], float("inf")))
        out.append(Layer(l.name, s, l.size, l.shape))
    return out


def _finite_range(chunks: list[torch.Tensor]) -> tuple[float, float, int, bool]:
    """(min, max, count) of the finite values, and whether every value was finite."""
    lo, hi, n, clean = math.inf, -math.inf, 0, True
    for c in chunks:
        if c.numel() == 0:
            continue
        cmin, cmax = torch.aminmax(c)
        if math.isfinite(float(cmin)) and math.isfinite(float(cmax)):
            f = c  # the common case: no copy needed
        else:
            clean = False
            f = c[torch.isfinite(c)]
            if f.numel() == 0:
                continue
            cmin, cmax = torch.aminmax(f)
        lo, hi, n = min(lo, float(cmin)), max(hi, float(cmax)), n + f.numel()
    return lo, hi, n, clean


def _count(chunks: list[torch.Tensor], fn) -> int:
    return sum(int(torch.count_nonzero(fn(c))) for c in chunks)


def _bracket(chunks: list[torch.Tensor], k: int, total: int, samples: int = 1 << 16) -> tuple[float, float]:
    """Sample-quantile bracket that very likely holds the k-th smallest value."""
    gen = torch.Generator().manual_seed(0)
    picks = []
    for c in chunks:
        n = max(1, round(samples * c.numel() / total)) if c.numel() else 0
        if n:
            picks.append(c[torch.randint(c.numel(), (n,), generator=gen)])
    sample = torch.sort(torch.cat(picks)).values
    q = k / total
    # ±6 standard deviations of a sample quantile, plus a margin for tiny samples.
    delta = 6 * math.sqrt(max(q * (1 - q), 1.0 / sample.numel()) / sample.numel()) + 2.0 / sample.numel()
    lo_i = max(0, math.floor((q - delta) * sample.numel()) - 1)
    hi_i = min(sample.numel() - 1, math.ceil((q + delta) * sample.numel()))
    return float(sample[lo_i]), float(sample[hi_i])


def kth_smallest(chunks: list[torch.Tensor], k: int, bins: int = 4096, gather_below: int = 1 << 22) -> float:
    """Exact k-th smallest value (1-based) over several 1-D tensors without concatenating them.

    A random sample brackets the answer; one pass counts what lies below the bracket and
    gathers what lies inside, which is then sorted. If the bracket misses (rare), histograms
    narrow the range instead. Memory stays at one layer's temporaries, never a copy of every
    score.
    """
    neg = _count(chunks, lambda c: c == float("-inf")) if k > 0 else 0
    if k <= neg:
        return float("-inf")
    k -= neg
    lo, hi, n_finite, clean = _finite_range(chunks)
    if k > n_finite:
        return float("inf")
    if n_finite > gather_below:
        finite = chunks if clean else [c[torch.isfinite(c)] for c in chunks]
        b_lo, b_hi = _bracket(finite, k, n_finite)
        below, cands = 0, []
        for c in finite:
            lt = c < b_lo
            below += int(torch.count_nonzero(lt))
            inside = (c <= b_hi) & ~lt
            cands.append(c[inside])
        n_in = sum(x.numel() for x in cands)
        if below < k <= below + n_in and n_in <= gather_below:
            return float(torch.kthvalue(torch.cat(cands), k - below).values)
    below = 0  # finite values < lo
    for _ in range(64):
        if lo == hi:
            return lo
        inside = _count(chunks, lambda c: (c >= lo) & (c <= hi))
        if inside <= gather_below:
            cand = torch.cat([c[(c >= lo) & (c <= hi)] for c in chunks])
            return float(torch.kthvalue(cand, k - below).values)
        hist = torch.zeros(bins, dtype=torch.float64)
        for c in chunks:
            sel = c[(c >= lo) & (c <= hi)]
            hist += torch.histc(sel.double(), bins=bins, min=lo, max=hi)
        i = int(torch.searchsorted(hist.cumsum(0), torch.tensor(float(k - below), dtype=torch.float64)))
        width = (hi - lo) / bins
        # Widen by a bin each side: histc's bin edges may round differently from comparisons.
        new_lo, new_hi = lo + max(i - 1, 0) * width, min(lo + (i + 2) * width, hi)
        if not (lo <= new_lo < new_hi <= hi) or (new_lo, new_hi) == (lo, hi):
            break
        below += _count(chunks, lambda c: (c >= lo) & (c < new_lo))
        lo, hi = new_lo, new_hi
    cand = torch.cat([c[(c >= lo) & (c <= hi)] for c in chunks])
    return float(torch.kthvalue(cand, k - below).values)


def prune_k_global(chunks: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Keep-masks removing exactly the ``k`` lowest values over all chunks (ties: earlier
    chunk, then earlier index), built one chunk at a time."""
    forced = _count(chunks, lambda c: c == float("-inf"))
    protected = _count(chunks, lambda c: c == float("inf"))
    k = min(max(k, forced), sum(c.numel() for c in chunks) - protected)
    if k <= 0:
        return [torch.ones_like(c, dtype=torch.bool) for c in chunks]
    v = kth_smallest(chunks, k)
    keeps = [c >= v for c in chunks]  # also True for NaN-free ties, settled below
    need = k - sum(int(torch.count_nonzero(~keep)) for keep in keeps)
    for c, keep in zip(chunks, keeps):
        if need <= 0:
            break
        ties = (c == v).nonzero().flatten()[:need]
        keep[ties] = False
        need -= ties.numel()
    return keeps


class Allocation:
    """Base class: implement :meth:`select`; threshold mode is shared."""

    name: ClassVar[str] = ""
    supports_threshold: ClassVar[bool] = True
    #: the sparsity is a target for the whole model (False for allocations that prune only
    #: part of it on purpose, such as one layer at a time); callers warn when it is missed
    whole_model: ClassVar[bool] = True

    def select(self, layers: list[Layer], sparsity: float, min_keep: int = 1) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def transform(self, layer: Layer) -> torch.Tensor:
        """Scores used for comparisons (LAMP rescales them); identity by default."""
        return layer.scores

    def select_threshold(self, layers: list[Layer], theta: float, min_keep: int = 1) -> dict[str, torch.Tensor]:
        """Remove units whose per-layer normalized score is <= ``theta`` (W · 1{I(W) > θ}).

        Scores are divided by the layer's largest score (min-max scaled if any is negative),
        so θ lies in [0, 1] whatever the criterion's units.
        """
        out = {}
        for layer in layers:
            s = self.transform(layer)
            norm = normalize(s)
            keep = norm > theta
            out[layer.name] = _ensure_min_keep(keep, s, min_keep)
        return out

    def get_config(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def normalize(s: torch.Tensor) -> torch.Tensor:
    finite = s[torch.isfinite(s)]
    if finite.numel() == 0:
        return torch.full_like(s, -1.0)
    lo, hi = float(finite.min()), float(finite.max())
    out = s.clone()
    if lo >= 0:
        out = out / hi if hi > 0 else torch.ones_like(out)
    else:
        out = (out - lo) / (hi - lo) if hi > lo else torch.ones_like(out)
    out[s == float("-inf")] = -1.0
    out[s == float("inf")] = 2.0
    return out


def _ensure_min_keep(keep: torch.Tensor, scores: torch.Tensor, min_keep: int) -> torch.Tensor:
    alive = scores > float("-inf")
    want = min(min_keep, int(torch.count_nonzero(alive)))
    if int(torch.count_nonzero(keep)) >= want:
        return keep
    top = torch.topk(torch.where(alive, scores, torch.full_like(scores, float("-inf"))), want).indices
    keep = keep.clone()
    keep[top] = True
    return keep


def protected_scores(layer: Layer, scores: torch.Tensor, min_keep: int) -> torch.Tensor:
    """Scores with the ``min_keep`` best units of a layer raised to ``+inf``, so no cut removes them.

    Args:
        layer: the layer the scores belong to.
        scores: its unit scores; ``-inf`` marks units already removed, which are never protected.
        min_keep: how many of the remaining units to protect (fewer if fewer remain).

    Returns:
        ``scores`` itself when nothing is protected, else a copy with the protected units at ``+inf``.
    """
    alive = scores > float("-inf")
    want = min(min_keep, int(torch.count_nonzero(alive)))
    if want == 0:
        return scores
    out = scores.clone()
    out[torch.topk(torch.where(alive, scores, torch.full_like(scores, float("-inf"))), want).indices] = float("inf")
    return out


@register("allocation", "uniform")
class Uniform(Allocation):
    """The same sparsity in every layer."""

    def select(self, layers, sparsity, min_keep=1):
        return {
            l.name: prune_lowest(protected_scores(l, l.scores, min_keep), l.sizes(), sparsity * l.numel) for l in layers
        }


@register("allocation", "global")
class Global(Allocation):
    """One threshold across all layers: the lowest-scoring units anywhere go first.

    With one weight per unit the selection is exact (``round(sparsity × weights)`` removed,
    like ``torch.nn.utils.prune.global_unstructured``) and streams over layers instead of
    concatenating every score, so memory stays near one layer's temporaries.
    """

    def select(self, layers, sparsity, min_keep=1):
        scores = [self.transform(l) for l in layers]
        total = sum(l.numel for l in layers)
        budget = sparsity * total
        protect: set[int] = set()
        for _ in range(len(layers) + 1):
            s = [protected_scores(l, x, min_keep) if i in protect else x for i, (l, x) in enumerate(zip(layers, scores))]
            if all(isinstance(l.size, int) and l.size == 1 for l in layers):
                keeps = prune_k_global([x.reshape(-1) for x in s], round(budget))
            else:
                cat = torch.cat(s)
                sizes = torch.cat([l.sizes() for l in layers])
                flat = prune_lowest(cat, sizes, budget)
                keeps = list(torch.split(flat, [l.n_units for l in layers]))
            emptied = {
                i for i, (l, k) in enumerate(zip(layers, keeps))
                if int(torch.count_nonzero(k)) < min(min_keep, int(torch.count_nonzero(l.scores > float("-inf"))))
            }
            if not emptied - protect:
                return {l.name: k for l, k in zip(layers, keeps)}
            protect |= emptied
        raise PruneError("global allocation could not keep min_keep units per layer")  # pragma: no cover


@register("allocation", "lamp")
class LAMP(Global):
    """Layer-Adaptive Magnitude-based Pruning (Lee et al. 2021), generalized to any score.

    Within a layer, unit u's score becomes s_u² / Σ_{v: s_v ≥ s_u} s_v² (sorted order),
    then one global threshold is applied. The rescaling makes layers comparable and
    protects small layers, which magnitude-global tends to wipe out.
    """

    def transform(self, layer: Layer) -> torch.Tensor:
        s = layer.scores.float()
        dead = s == float("-inf")
        fin = s[torch.isfinite(s)]
        if fin.numel() and float(fin.min()) < 0:
            s = s - fin.min()  # squaring must not rank very negative scores as important
        v = torch.where(dead, torch.zeros_like(s), s).pow(2)
        order = torch.sort(v, stable=True).indices
        sv = v[order]
        suffix = sv.flip(0).cumsum(0).flip(0)
        lamp_sorted = torch.where(suffix > 0, sv / suffix.clamp_min(1e-30), torch.zeros_like(sv))
        out = torch.empty_like(s)
        out[order] = lamp_sorted
        out[dead] = float("-inf")
        return out


@register("allocation", "erk")
class ERK(Allocation):
    """Erdős–Rényi-Kernel densities (Evci et al. 2020): layer density ∝ (Σ dims) / (Π dims),
    scaled to meet the global budget, with layers that would exceed density 1 kept dense.
    Small layers and layers with few inputs per output stay denser."""

    supports_threshold = False

    def densities(self, layers: list[Layer], sparsity: float) -> dict[str, float]:
        dense: set[str] = set()
        while True:
            rhs, divisor, raw = 0.0, 0.0, {}
            for l in layers:
                if l.name in dense:
                    rhs -= l.numel * sparsity
                else:
                    rhs += l.numel * (1 - sparsity)
                    raw[l.name] = sum(l.shape) / l.numel
                    divisor += raw[l.name] * l.numel
            if not raw:
                return {l.name: 1.0 for l in layers}
            eps = rhs / divisor
            top = max(raw.values())
            if top * eps > 1:
                dense |= {n for n, r in raw.items() if r == top}
                continue
            return {l.name: 1.0 if l.name in dense else eps * raw[l.name] for l in layers}

    def select(self, layers, sparsity, min_keep=1):
        d = self.densities(layers, sparsity)
        return {
            l.name: prune_lowest(protected_scores(l, l.scores, min_keep), l.sizes(), (1 - d[l.name]) * l.numel)
            for l in layers
        }


set_base("allocation", Allocation)
