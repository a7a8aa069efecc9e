"""Calibrated criteria: Wanda, RIA and SparseGPT, on any model with Linear or Conv layers.

All three weigh a weight by what it meets on the calibration data (see :mod:`.inputs`):

- **Wanda** (Sun et al., 2024): ``|W_ij| * ||X_j||_2``, the weight's magnitude times the L2
  norm of its input column.
- **RIA** (Zhang et al., 2024, relative importance and activations): ``(|W_ij| / Σ_i |W_ij|
  + |W_ij| / Σ_j |W_ij|) * ||X_j||_2 ** 0.5``.
- **SparseGPT** (Frantar & Alistarh, 2023): the optimal-brain-surgeon saliency
  ``W_ij² / [H⁻¹]_jj²`` with ``H = 2 XᵀX / n``, and then, once an allocation has fixed how
  many weights each layer loses, the SparseGPT sweep (:func:`sparsegpt_sweep`): column
  block by column block it chooses that many weights by the saliency of the *updated*
  weights and moves the removed weights' contribution onto the weights kept. It changes
  the weights it keeps; it is the only criterion here that does.

The comparison group is the allocation's business: Wanda compares each output row
(``allocation="row"``), SparseGPT each layer; OWL (``allocation="owl"``) spends the budget
by the layers' outlier scores. N:M patterns (``granularity="2:4"``) work with all three.
The block-by-block LLM driver (:func:`prunekit.llm.prune_llm`) runs the same functions on
one transformer block at a time.
"""

from __future__ import annotations

import torch

from .. import validate as V
from ..errors import PruneError
from ..registry import register
from .base import Context, Criterion, call_model
from .inputs import InputStatistics
from .obs import damped_inverse_factor, sparsegpt_sweep


def wanda_scores(weight2d: torch.Tensor, squares: torch.Tensor) -> torch.Tensor:
    """``|W| * ||X_j||``: ``weight2d`` ``[out, cols]``, ``squares`` ``[groups, cols]`` sums of squares."""
    norms = squares.sqrt().to(torch.float32)
    return weight2d.abs().to(torch.float32) * norms.repeat_interleave(weight2d.shape[0] // norms.shape[0], dim=0)


def ria_scores(weight2d: torch.Tensor, squares: torch.Tensor) -> torch.Tensor:
    """RIA's relative importance times ``||X_j|| ** 0.5`` (sums taken within each group)."""
    a = weight2d.abs().to(torch.float32)
    g = squares.shape[0]
    grouped = a.reshape(g, a.shape[0] // g, a.shape[1])
    relative = grouped / grouped.sum(1, keepdim=True).clamp_min(1e-30) + grouped / grouped.sum(2, keepdim=True).clamp_min(1e-30)
    act = squares.sqrt().sqrt().to(torch.float32).unsqueeze(1)
    return (relative * act).reshape(a.shape)


def _statistics(ctx: Context, gram: bool, name: str) -> InputStatistics:
    if ctx.statistics is not None:  # gathered by the caller
        if gram and not ctx.statistics.gram:
            raise PruneError(f"criterion {name!r} needs the Gram matrix of the inputs; the statistics given hold sums of squares only")
        ctx.statistics.check_seen(name, [t.name for t in ctx.targets])
        return ctx.statistics
    stats = InputStatistics(ctx.targets, gram=gram)
    with stats, torch.no_grad():
        for inputs in ctx.forward_inputs():
            call_model(ctx.model, inputs)
    stats.check_seen(name)
    return stats


def _rows2d(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().reshape(weight.shape[0], -1)


class InputNormCriterion(Criterion):
    """Base of the criteria scored from a weight matrix and its input columns' sums of
    squares: subclasses implement :meth:`matrix_scores` only."""

    needs_data = True
    statistics = "squares"

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        stats = _statistics(ctx, False, self.name)
        return {
            t.name: self.matrix_scores(_rows2d(t.weight), stats.squares[t.name]).reshape(t.weight.shape)
            for t in ctx.targets
        }


@register("criterion", "wanda")
class Wanda(InputNormCriterion):
    """``|W_ij| * ||X_j||_2`` (Sun et al., 2024): weights times the norm of their input on
    the data. Compare per output row with ``allocation="row"``, as the paper does."""

    def matrix_scores(self, weight2d, squares):
        return wanda_scores(weight2d, squares)


@register("criterion", "ria")
class RIA(InputNormCriterion):
    """Relative importance and activations (Zhang et al., 2024): each weight relative to its
    row and column sums, times ``||X_j|| ** 0.5``."""

    def matrix_scores(self, weight2d, squares):
        return ria_scores(weight2d, squares)


def rgs_scores(weight2d: torch.Tensor, squares: torch.Tensor, gradient: torch.Tensor, alpha: float) -> torch.Tensor:
    """Wanda++'s regional gradient score ``(alpha * G_ij + ||X_j||) * |W_ij|``; ``gradient``
    ``[out, cols]`` holds ``G``, the root mean square over the calibration samples of the
    gradient of the region's output norm."""
    norms = squares.sqrt().to(torch.float32).repeat_interleave(weight2d.shape[0] // squares.shape[0], dim=0)
    return (alpha * gradient.to(torch.float32) + norms) * weight2d.abs().to(torch.float32)


def _samples(inputs: object) -> list[object]:
    """One batch split into single samples (tensors, tuples or dicts of them: along dim 0)."""
    if isinstance(inputs, torch.Tensor):
        return [inputs[i : i + 1] for i in range(inputs.shape[0])]
    if isinstance(inputs, (tuple, list)):
        parts = [_samples(x) if isinstance(x, torch.Tensor) else None for x in inputs]
        n = next(len(p) for p in parts if p is not None)
        return [type(inputs)(p[i] if p is not None else x for p, x in zip(parts, inputs)) for i in range(n)]
    if isinstance(inputs, dict):
        n = next(v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor))
        return [{k: v[i : i + 1] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()} for i in range(n)]
    raise PruneError(f"criterion 'rgs' splits calibration batches into samples; cannot split {type(inputs).__name__}")


def _first_tensor(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for x in (out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else [getattr(out, "logits", None)]):
        if isinstance(x, torch.Tensor):
            return x
    raise PruneError(f"criterion 'rgs' needs the model to return a tensor (or a tuple/dict holding one); got {type(out).__name__}")


def region_gradients(region: torch.nn.Module, params: list[torch.Tensor], samples, run) -> list[torch.Tensor]:
    """Root mean square over ``samples`` of ``d ||run(region, sample)||_2 / d param`` for each
    of ``params`` (float32, their shapes); ``.grad`` fields are not touched and each
    parameter's ``requires_grad`` is restored."""
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    was = [p.requires_grad for p in params]
    n = 0
    try:
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            for sample in samples:
                out = _first_tensor(run(region, sample)).float()
                grads = torch.autograd.grad(torch.linalg.vector_norm(out), params, allow_unused=True)
                for s, g in zip(sums, grads):
                    if g is not None:
                        s.add_(g.float().square())
                n += 1
    finally:
        for p, w in zip(params, was):
            p.requires_grad_(w)
    return [(s / max(1, n)).sqrt() for s in sums]


@register("criterion", "rgs")
class RGS(Criterion):
    """Wanda++'s regional gradient score (Yang et al., 2025): ``(alpha * G_ij + ||X_j||_2) *
    |W_ij|``, Wanda's score plus the root mean square, over calibration samples, of the
    gradient of the region's output norm with respect to the weight. The region is the whole
    model here and one decoder block in :func:`prunekit.llm.prune_llm` (as in the paper). With
    block reconstruction (``prune_llm``'s ``reconstruct``) it is Wanda++; compare per output
    row (``allocation="row"``).

    Args:
        alpha: the weight of the gradient term (100 in the paper).

    Costs one forward and backward pass per calibration sample (not per batch).
    """

    needs_data = True
    statistics = "regional"

    def __init__(self, alpha: float = 100.0) -> None:
        self.alpha = alpha

    def check(self) -> None:
        V.number("rgs alpha", self.alpha, lo=0.0, hint="e.g. 100")

    def matrix_scores(self, weight2d, squares, gradient=None):
        if gradient is None:
            raise PruneError("criterion 'rgs' needs the regional gradient of each weight; none was computed")
        return rgs_scores(weight2d, squares, gradient, float(self.alpha))

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        self.check()
        stats = _statistics(ctx, False, self.name)
        params = [t.original for t in ctx.targets]
        samples = (s for inputs in ctx.forward_inputs() for s in _samples(inputs))
        grads = region_gradients(ctx.model, params, samples, call_model)
        return {
            t.name: self.matrix_scores(_rows2d(t.weight), stats.squares[t.name], _rows2d(g)).reshape(t.weight.shape)
            for t, g in zip(ctx.targets, grads)
        }


@register("criterion", "sparsegpt")
class SparseGPT(Criterion):
    """SparseGPT (Frantar & Alistarh, 2023): OBS saliency for the allocation, then the
    sweep that chooses each layer's weights column block by column block and updates the
    weights kept so the layer's output on the data changes least.

    Args:
        blocksize: columns per block of the sweep (a multiple of M with an N:M pattern).
        percdamp: dampening of the Hessian's diagonal, a fraction of its mean.
        shrink: Hessian shrinkage towards its diagonal, in ``[0, 1]`` (0 = SparseGPT).

    Unstructured and N:M granularities only: the sweep removes single weights.
    """

    needs_data = True
    updates_weights = True
    granularities = ("unstructured", "nm")
    statistics = "gram"

    def __init__(self, blocksize: int = 128, percdamp: float = 0.01, shrink: float = 0.0) -> None:
        self.blocksize = blocksize
        self.percdamp = percdamp
        self.shrink = shrink

    def check(self) -> None:
        V.integer("sparsegpt blocksize", self.blocksize, minimum=1, hint="e.g. 128")
        V.number("sparsegpt percdamp", self.percdamp, lo=0.0, hint="e.g. 0.01")
        V.fraction("sparsegpt shrink", self.shrink, one=True, hint="0 = plain SparseGPT")

    def sweep(self, weight2d: torch.Tensor, hessian: torch.Tensor, sparsity: float,
              nm: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`sparsegpt_sweep` with this criterion's options (one group)."""
        return sparsegpt_sweep(weight2d, hessian, sparsity, nm, self.blocksize, float(self.percdamp), float(self.shrink))

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        self.check()
        stats = _statistics(ctx, True, self.name)
        ctx.cache[self.name] = stats
        out = {}
        for t in ctx.targets:
            w = _rows2d(t.weight).to(torch.float32)
            H = stats.hessian(t.name)
            per = w.shape[0] // H.shape[0]
            parts = []
            for g in range(H.shape[0]):
                Hinv, dead = damped_inverse_factor(H[g], float(self.percdamp), float(self.shrink))
                s = w[g * per : (g + 1) * per] ** 2 / torch.diag(Hinv).reshape(1, -1) ** 2
                parts.append(s.masked_fill(dead.reshape(1, -1), 0.0))
            out[t.name] = torch.cat(parts).reshape(t.weight.shape)
        return out

    def finalize(self, ctx: Context, masks: dict[str, torch.Tensor], nm: tuple[int, int] | None) -> dict[str, torch.Tensor]:
        """Run the sweep on every target with the count of weights its mask removes (or the
        N:M pattern); write the updated weights; return the sweep's masks. Nothing is
        written before every layer has been computed."""
        stats: InputStatistics = ctx.cache[self.name]
        if nm is not None and self.blocksize % nm[1]:
            raise PruneError(f"sparsegpt blocksize {self.blocksize!r} must be a multiple of M={nm[1]} for an N:M pattern")
        results = {}
        for t in ctx.targets:
            keep = masks[t.name].to(torch.bool)
            w = _rows2d(t.weight)
            H = stats.hessian(t.name)
            per = w.shape[0] // H.shape[0]
            news, keeps = [], []
            for g in range(H.shape[0]):
                rows = slice(g * per, (g + 1) * per)
                removed = int((~keep.reshape(w.shape[0], -1)[rows]).sum())
                new, k = self.sweep(w[rows], H[g], removed / max(1, per * w.shape[1]), nm)
                news.append(new)
                keeps.append(k)
            results[t.name] = (torch.cat(news).reshape(keep.shape), torch.cat(keeps).reshape(keep.shape))
        out = dict(masks)
        with torch.no_grad():
            for t in ctx.targets:
                new, keep = results[t.name]
                t.original.copy_((new * keep).to(t.original.dtype))
                out[t.name] = keep.to(masks[t.name].dtype)
        return out


def wanda(model, **kwargs) -> dict[str, torch.Tensor]:
    """Functional twin of :class:`Wanda`: ``{name: |W| * ||X_j||}``; pass ``data=``."""
    return Wanda()(model, **kwargs)


def ria(model, **kwargs) -> dict[str, torch.Tensor]:
    """Functional twin of :class:`RIA`; pass ``data=``."""
    return RIA()(model, **kwargs)


def rgs(model, alpha: float = 100.0, **kwargs) -> dict[str, torch.Tensor]:
    """Functional twin of :class:`RGS`: ``{name: (alpha * G + ||X_j||) * |W|}``; pass ``data=``."""
    return RGS(alpha)(model, **kwargs)


def sparsegpt(model, blocksize: int = 128, percdamp: float = 0.01, shrink: float = 0.0, **kwargs) -> dict[str, torch.Tensor]:
    """Functional twin of :class:`SparseGPT`: the OBS saliencies ``W² / [H⁻¹]_jj²`` (the sweep
    itself runs when pruning: ``pk.prune(model, s, criterion="sparsegpt", data=...)``)."""
    return SparseGPT(blocksize, percdamp, shrink)(model, **kwargs)
