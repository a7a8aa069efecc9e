"""Layer-by-layer one-shot pruning of decoder language models: magnitude, Wanda, SparseGPT.

The model is processed one decoder block at a time. The inputs of the first block are
captured on the calibration tokens; for each block, per-linear input statistics are
collected while the block runs on its current inputs, every ``nn.Linear`` of the block is
pruned, and the block's outputs are recomputed with the *pruned* weights to become the
inputs of the next block. Peak memory is one block's statistics plus the calibration
activations of one layer.

Methods:

* ``"magnitude"``: score ``|W_ij|``; needs no calibration data.
* ``"wanda"``: score ``|W_ij| * ||X_j||_2``, where ``X_j`` is input feature ``j`` over all
  calibration tokens (Sun et al., 2023).
* ``"sparsegpt"``: the approximate Optimal Brain Surgeon update of Frantar & Alistarh
  (2023). With ``H = 2 X^T X / n`` plus dampening, the upper Cholesky factor of ``H^-1``
  drives a column-by-column sweep: masks are chosen per block of ``blocksize`` columns by
  ``w^2 / [H^-1]_jj^2`` and every pruned weight's error is compensated on the columns not
  yet processed.
* ``"ria"``: relative importance and activations (Zhang et al., 2024): score
  ``(|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * ||X_j||_2 ** 0.5``, a weight's share
  of its input column and of its output row, times the square root of the input norm.

The resulting zeros are registered as prunekit masks (:func:`prunekit.masking.apply_masks`),
so :func:`prunekit.sparsity`, :func:`prunekit.masks` and :func:`prunekit.commit` apply.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..coverage import Coverage
from ..errors import PruneError, PruneTypeError
from ..masking import apply_masks
from .blocks import Chunk, StopForward, block_output, capture_first_inputs, check_tokens, transformer_blocks
from .calibration import can_generate, mix, self_generated
from .reconstruct import ReconstructResult, reconstruct_block
from .saving import finish
from .scope import block_coverage

__all__ = [
    "LLMLayerReport", "LLMPruneReport", "depth_sparsities", "outlier_ratio", "owl_sparsities", "parse_pattern", "perplexity", "prune_linear",
    "prune_llm", "sparsegpt_prune",
]

METHODS = ("magnitude", "wanda", "sparsegpt", "ria")
COMPARISONS = ("row", "layer")
#: Epochs of block reconstruction when ``reconstruct`` is not given and calibration is.
DEFAULT_RECONSTRUCT = 2
ALLOCATIONS = ("uniform", "owl", "depth")
_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


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
        lines = [f"{self.method}{pat}: {len(self.layers)} layers, {self.seconds:.2f} s"]
        for r in self.layers:
            lines.append(f"  {r.name:<48} {str(r.shape):<14} {r.sparsity:7.2%} {r.seconds:7.3f} s")
        lines.append(f"  overall sparsity {self.overall_sparsity:.2%}")
        if self.coverage is not None:
            lines.append("  " + self.coverage.describe().replace("\n", "\n  "))
        return "\n".join(lines)


# --------------------------------------------------------------------------- validation


def _check_method(method: object) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise PruneError(f"method {method!r} is not supported; use one of {', '.join(map(repr, METHODS))}")
    return method


def parse_pattern(pattern: object) -> tuple[int, int] | None:
    """An ``"N:M"`` sparsity pattern as a pair of integers.

    Args:
        pattern: ``None`` (no pattern) or a string such as ``"2:4"`` (spaces allowed):
            N weights kept of every M, with ``1 <= N <= M``.

    Returns:
        ``(N, M)``, or ``None`` for ``None``.

    Raises:
        PruneTypeError: ``pattern`` is neither ``None`` nor a string.
        PruneError: the string is not ``N:M`` with ``1 <= N <= M``.
    """
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise PruneTypeError(f"pattern must be None or an 'N:M' string such as '2:4'; got {type(pattern).__name__}: {pattern!r}")
    m = _NM_RE.match(pattern)
    if not m:
        raise PruneError(f"pattern {pattern!r} is not an 'N:M' string; use e.g. '2:4' or '4:8' (N kept of every M)")
    n, mm = int(m.group(1)), int(m.group(2))
    if mm < 1 or not (1 <= n <= mm):
        raise PruneError(f"pattern {pattern!r} needs integers 1 <= N <= M (N weights kept of every M)")
    return n, mm


def _check_sparsity(sparsity: object) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not (0.0 <= float(sparsity) < 1.0):
        raise PruneError(f"sparsity {sparsity!r} must be a number in [0, 1)")
    return float(sparsity)


def _check_choice(name: str, value: object, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise PruneError(f"{name} {value!r} is not supported; use one of {', '.join(map(repr, accepted))}")


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PruneError(f"{name} {value!r} must be a positive integer")
    return value


# ----------------------------------------------------------------------------- helpers


def _is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` or GPT-2's ``Conv1D`` (a linear layer whose weight is stored (in, out))."""
    return isinstance(module, nn.Linear) or (type(module).__name__ == "Conv1D" and hasattr(module, "nf"))


def _transposed(module: nn.Module) -> bool:
    return not isinstance(module, nn.Linear)


def _in_features(module: nn.Module) -> int:
    return module.weight.shape[0] if _transposed(module) else module.in_features


def _out_features(module: nn.Module) -> int:
    return module.weight.shape[1] if _transposed(module) else module.out_features


def _rows(module: nn.Module) -> torch.Tensor:
    """The effective weight as (out_features, in_features), whatever the layer stores."""
    w = module.weight.detach()
    return w.t().contiguous() if _transposed(module) else w


def _weight_param(module: nn.Linear) -> torch.Tensor:
    """The stored tensor behind ``module.weight`` (the parametrization's original if masked)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def _k(n: int, sparsity: float) -> int:
    """How many of ``n`` weights a fraction ``sparsity`` removes (rounded down)."""
    return int(math.floor(n * sparsity + 1e-9))


def _mask_from_scores(scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, comparison: str) -> torch.Tensor:
    """Boolean keep-mask: remove the lowest-scoring weights per row, per layer, or N:M."""
    rows, cols = scores.shape
    keep = torch.ones_like(scores, dtype=torch.bool)
    if nm is not None:
        n, m = nm
        g = scores.reshape(rows, cols // m, m)
        idx = torch.topk(g, m - n, dim=-1, largest=False).indices
        return keep.reshape(rows, cols // m, m).scatter_(-1, idx, False).reshape(rows, cols)
    if comparison == "row":
        k = _k(cols, sparsity)
        if k:
            keep.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, False)
        return keep
    k = _k(scores.numel(), sparsity)
    if k:
        keep.view(-1)[torch.topk(scores.reshape(-1), k, largest=False).indices] = False
    return keep


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    shrink: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one weight matrix with the SparseGPT sweep.

    Args:
        weight: ``[rows, cols]`` weights (not modified).
        hessian: ``[cols, cols]`` ``2 X^T X / n`` of the layer inputs (not modified).
        sparsity: fraction removed (unstructured; ignored when ``nm`` is given).
        nm: ``(N, M)`` to keep N of every M consecutive input weights.
        blocksize: columns per lazy-update block; the unstructured mask is chosen per block.
        percdamp: dampening added to the diagonal, as a fraction of its mean.
        shrink: Hessian shrinkage towards its diagonal, in ``[0, 1]``: the sweep uses
            ``(1 - shrink) H + shrink diag(H)``. 0 is SparseGPT; 1 drops the correlations
            between inputs, so no weight is updated and the mask is Wanda's score squared,
            chosen per column block. Between the two, the updates rely less on
            correlations seen only in the calibration text.

    Returns:
        ``(new_weight, keep)``: float32 weights with pruned entries exactly zero and
        compensated remaining entries, and the boolean keep-mask.
    """
    W = weight.detach().to(torch.float32).clone()
    rows, cols = W.shape
    H = hessian.detach().to(torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    if shrink:
        diag = torch.diag(H).clone()
        H.mul_(1.0 - shrink)
        H.diagonal().copy_(diag)
    damp = percdamp * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except RuntimeError as e:  # torch.linalg.LinAlgError derives from RuntimeError
        raise PruneError(
            f"the input Hessian is not positive definite with percdamp={percdamp!r}; "
            "use more calibration tokens or a larger percdamp (e.g. 0.1)"
        ) from e
    del H, L

    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = torch.diag(Hinv1)
        mask1 = torch.zeros_like(W1, dtype=torch.bool)  # True = pruned
        if nm is None:
            # Exact count per layer: this block takes its share of floor(rows*cols*sparsity).
            k = _k(rows * i2, sparsity) - _k(rows * i1, sparsity)
            if k > 0:
                tmp = W1**2 / d1.reshape(1, -1) ** 2
                mask1.view(-1)[torch.topk(tmp.reshape(-1), k, largest=False).indices] = True
        else:
            n, m = nm
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if nm is not None and i % m == 0:
                tmp = W1[:, i : i + m] ** 2 / d1[i : i + m].reshape(1, -1) ** 2
                idx = torch.topk(tmp, m - n, dim=1, largest=False).indices
                mask1.scatter_(1, i + idx, True)
            q = w.clone()
            q[mask1[:, i]] = 0.0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    W[pruned] = 0.0
    return W, ~pruned


class _Stats:
    """Running input statistics of one linear layer, filled by a forward hook."""

    def __init__(self, module: nn.Linear, method: str) -> None:
        cols = _in_features(module)
        dev = _weight_param(module).device
        self.method = method
        self.tokens = 0
        self.sq = torch.zeros(cols, dtype=torch.float64, device=dev) if method in ("wanda", "ria") else None
        self.xtx = torch.zeros(cols, cols, dtype=torch.float64, device=dev) if method == "sparsegpt" else None

    def pre_hook(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.hook(module, inputs, None)

    def hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float32)
        self.tokens += x.shape[0]
        if self.sq is not None:
            self.sq += (x * x).sum(0).to(torch.float64)
        if self.xtx is not None:
            self.xtx += (x.t() @ x).to(torch.float64)


def _prune_linear(
    module: nn.Linear,
    stats: _Stats | None,
    method: str,
    sparsity: float,
    nm: tuple[int, int] | None,
    comparison: str,
    blocksize: int,
    percdamp: float,
    shrink: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """New weights (pruned entries zero) and boolean keep-mask for one linear layer."""
    W = _rows(module)  # effective weight as (out, in): earlier masks already applied
    if method == "sparsegpt":
        assert stats is not None and stats.xtx is not None
        if stats.tokens == 0:
            raise PruneError(f"no calibration tokens reached {type(module).__name__}; cannot build its Hessian")
        H = (stats.xtx * (2.0 / stats.tokens)).to(torch.float32)
        new, keep = sparsegpt_prune(W, H, sparsity, nm, blocksize, percdamp, shrink)
        return new.to(W.dtype), keep
    scores = W.abs().to(torch.float32)
    if method == "wanda":
        assert stats is not None and stats.sq is not None
        scores = scores * stats.sq.sqrt().to(torch.float32).reshape(1, -1)
    elif method == "ria":
        assert stats is not None and stats.sq is not None
        relative = scores / scores.sum(0, keepdim=True).clamp_min(1e-30) + scores / scores.sum(1, keepdim=True).clamp_min(1e-30)
        scores = relative * stats.sq.sqrt().sqrt().to(torch.float32).reshape(1, -1)
    keep = _mask_from_scores(scores, sparsity, nm, comparison)
    return W * keep.to(W.dtype), keep


def _collect(
    layer: nn.Module,
    linears: list[tuple[str, nn.Linear]],
    chunks: list[Chunk],
    kind: str,
    stop_early: bool,
    outputs: list[torch.Tensor] | None = None,
) -> dict[str, _Stats]:
    """Run ``layer`` on every chunk and return the input statistics of ``linears``.

    With ``stop_early`` the forward pass is cut as soon as the last of ``linears`` has
    seen its input (the rest of the block is not needed for these statistics). Otherwise
    the block's outputs are appended to ``outputs`` when a list is given.
    """
    stats = {name: _Stats(mod, kind) for name, mod in linears}
    pending: set[str] = set()
    handles = []

    def make(name: str) -> Any:
        def pre(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            stats[name].pre_hook(module, inputs)
            pending.discard(name)
            if stop_early and not pending:
                raise StopForward

        return pre

    for name, mod in linears:
        handles.append(mod.register_forward_pre_hook(make(name)))
    try:
        for hidden, args, kwargs in chunks:
            pending.update(n for n, _ in linears)
            try:
                out = block_output(layer, hidden, args, kwargs)
                if outputs is not None:
                    outputs.append(out)
            except StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    return stats


def _input_groups(layer: nn.Module, linears: list[tuple[str, nn.Linear]], chunk: Chunk) -> list[list[tuple[str, nn.Linear]]]:
    """The block's linears grouped by the tensor they read, in call order.

    Linears fed the same tensor (q/k/v, gate/up) form one group; ``o_proj`` and
    ``down_proj`` read tensors computed from earlier groups and come after them. Found
    with one forward pass of the first calibration chunk, cut once every linear was called.
    """
    order: list[tuple[str, torch.Tensor]] = []  # the inputs are held, so identity checks are sound
    by_module = {id(m): n for n, m in linears}
    pending = set(by_module)

    def pre(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        order.append((by_module[id(module)], inputs[0]))
        pending.discard(id(module))
        if not pending:
            raise StopForward

    handles = [mod.register_forward_pre_hook(pre) for _, mod in linears]
    try:
        block_output(layer, *chunk)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    mods = dict(linears)
    groups: list[list[tuple[str, nn.Linear]]] = []
    seen: set[str] = set()
    last: torch.Tensor | None = None
    for name, inp in order:
        if name in seen:
            continue
        seen.add(name)
        if groups and inp is last:
            groups[-1].append((name, mods[name]))
        else:
            groups.append([(name, mods[name])])
        last = inp
    missing = [(n, m) for n, m in linears if n not in seen]
    if missing:  # never called on these inputs: prune them with the last group
        groups.append(missing)
    return groups


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Percentage of scores above ``m`` times their mean (OWL's layer-wise outlier distribution)."""
    flat = torch.cat([t.reshape(-1).to(torch.float32) for t in scores])
    return float((flat > flat.mean() * m).sum()) / flat.numel() * 100.0


def owl_sparsities(ratios: list[float], sizes: list[int], sparsity: float, lam: float) -> list[float]:
    """OWL's per-block sparsities from per-block outlier ratios (Yin et al., 2024).

    Outlier ratios are scaled linearly onto ``[0, 2 * lam]``; blocks with more outliers
    keep more weights. The keep-ratios are then shifted so their size-weighted mean is
    ``1 - sparsity``: the model as a whole still loses exactly ``sparsity``, and every
    block's sparsity lies within ``sparsity +- lam``.
    """
    r = torch.tensor(ratios, dtype=torch.float64)
    w = torch.tensor(sizes, dtype=torch.float64)
    span = float(r.max() - r.min())
    scaled = (r - r.min()) / span * (2 * lam) if span > 0 else torch.zeros_like(r)
    keep = scaled - float((scaled * w).sum() / w.sum()) + (1.0 - sparsity)
    return [min(max(1.0 - float(k), 0.0), 1.0) for k in keep]


def depth_sparsities(sizes: list[int], sparsity: float, lam: float) -> list[float]:
    """A linear ramp of block sparsities from ``sparsity - lam`` (first block) to ``sparsity + lam`` (last).

    Shifted so the size-weighted mean is exactly ``sparsity``; clipped to ``[0, 1]``.
    """
    n = len(sizes)
    ramp = [(-lam + 2 * lam * i / (n - 1)) if n > 1 else 0.0 for i in range(n)]
    total = sum(sizes)
    shift = sum(r * w for r, w in zip(ramp, sizes)) / total
    return [min(max(sparsity + r - shift, 0.0), 1.0) for r in ramp]


def _owl_pass(layers: nn.ModuleList, per_block: list[list[tuple[str, nn.Linear]]], chunks: list[Chunk], m: float) -> list[float]:
    """Outlier ratio of every block's Wanda scores, on the dense model (its own copy of the activations)."""
    work = [(h.clone(), a, k) for h, a, k in chunks]
    ratios = []
    for li, layer in enumerate(layers):
        stats = _collect(layer, per_block[li], work, "wanda", stop_early=False)
        scores = []
        for name, mod in per_block[li]:
            st = stats[name]
            assert st.sq is not None
            scores.append(_rows(mod).abs().to(torch.float32) * st.sq.sqrt().to(torch.float32).reshape(1, -1))
        ratios.append(outlier_ratio(scores, m))
        del stats, scores
        if li + 1 < len(layers):
            for j, (hidden, args, kwargs) in enumerate(work):
                work[j] = (block_output(layer, hidden, args, kwargs), args, kwargs)
    return ratios


# --------------------------------------------------------------------------------- API


@torch.no_grad()
def prune_llm(
    model: nn.Module,
    calibration: torch.Tensor | None,
    *,
    method: str = "sparsegpt",
    sparsity: float = 0.5,
    pattern: str | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    shrink: float = 0.0,
    comparison: str = "row",
    batch_size: int = 8,
    allocation: str = "uniform",
    owl_lambda: float = 0.08,
    owl_m: float = 5.0,
    depth_lambda: float = 0.05,
    sequential: bool = False,
    reconstruct: int | None = None,
    reconstruct_lr: float = 3e-4,
    reconstruct_holdout: float = 0.0,
    self_calibration: float | None = None,
    keep_masks: bool = False,
) -> LLMPruneReport:
    """Prune every linear layer of a transformer in one shot, block by block.

    Args:
        model: a ``transformers`` decoder whose blocks are ``model.model.layers`` (Llama,
            Mistral, Qwen2, SmolLM, ...) or ``transformer.h`` (GPT-2, whose ``Conv1D``
            layers are pruned as linears), or a BERT-style encoder (``encoder.layer``).
            Pruned in place; embeddings, norms and the LM head are left as they are.
        calibration: token ids ``[n, seqlen]`` (a 1-D tensor is one sequence). May be
            ``None`` for ``method="magnitude"`` with uniform allocation.
        method: ``"sparsegpt"`` (default), ``"wanda"``, ``"ria"`` or ``"magnitude"``.
        sparsity: fraction of the weights to remove, in ``[0, 1)``. Ignored when
            ``pattern`` is given (the pattern fixes it to ``1 - N/M``).
        pattern: ``None`` for unstructured sparsity, or ``"N:M"`` to keep the N best of every
            M consecutive input weights (``"2:4"``, ``"4:8"``).
        blocksize: SparseGPT columns per block (the unstructured mask is chosen per block);
            a multiple of M with a pattern.
        percdamp: SparseGPT dampening, as a fraction of the Hessian's mean diagonal.
        shrink: SparseGPT Hessian shrinkage towards its diagonal, in ``[0, 1]``
            (:func:`sparsegpt_prune`); 0 is plain SparseGPT.
        comparison: for magnitude and Wanda without pattern, remove the lowest scores of each
            output row (``"row"``, Wanda's choice) or of the whole layer (``"layer"``).
            SparseGPT selects per block of columns and ignores it.
        batch_size: calibration sequences per forward pass.
        allocation: ``"uniform"`` (every block loses ``sparsity``) or ``"owl"``:
            outlier-weighted layer-wise sparsity (Yin et al., 2024). A first pass over the
            dense model measures each block's share of outlier Wanda scores (above
            ``owl_m`` times the block's mean score); blocks with more outliers are pruned
            less, within ``sparsity +- owl_lambda``, and the whole model still loses
            ``sparsity``. Unstructured only; costs one extra forward pass.
            ``"depth"``: a linear ramp from ``sparsity - depth_lambda`` at the first block
            to ``sparsity + depth_lambda`` at the last (early blocks feed every later one,
            so their errors compound). Unstructured only; needs no extra pass.
        owl_lambda: OWL's largest deviation from ``sparsity`` (0.08 in the paper).
        owl_m: OWL's outlier threshold, in multiples of the mean score (5 in the paper).
        depth_lambda: the ramp's half-span for ``allocation="depth"``.
        sequential: prune the linears of a block in groups that read the same input
            (``q/k/v``, then ``o``, then ``gate/up``, then ``down``), collecting each
            group's statistics after the groups before it are pruned, so later layers see
            the errors of earlier ones (SparseGPT's "true sequential"). Costs up to one
            more forward pass per block; the passes stop as soon as the group's inputs
            are seen.
        reconstruct: epochs of block-wise reconstruction (0 = off; ``None``, the default:
            2 for a causal LM pruned by a method that reads calibration text, 0 for
            magnitude and for encoders). After a block is
            pruned, the weights it kept are fitted with Adam so that the pruned block
            reproduces, on the calibration inputs, the outputs the dense block gave on
            the same inputs (mean squared error; one step per calibration batch; masks
            fixed). Costs one forward pass plus ``reconstruct`` forward-and-backward
            passes per block, and the block's dense outputs in memory.
        reconstruct_lr: Adam's learning rate for ``reconstruct``.
        reconstruct_holdout: fraction of the calibration batches, in ``[0, 1)``, set aside
            from fitting (at least one batch when positive): the reconstruction of a block
            stops at the first epoch that does not lower the error on them and keeps the
            best epoch's weights (:func:`prunekit.llm.reconstruct.reconstruct_block`);
            ``reconstruct`` is then the most epochs. 0: every batch is fitted for
            ``reconstruct`` epochs.
        self_calibration: fraction of the calibration windows, in ``[0, 1]``, replaced by
            text the model writes itself (:func:`prunekit.llm.calibration.self_generated`:
            sampled from the beginning-of-sequence token at temperature 1, seed 0, the same
            length as the given windows): the first ``n - round(fraction * n)`` given windows
            are kept and interleaved with the model's (:func:`prunekit.llm.calibration.mix`),
            so every calibration batch holds both. Statistics of one narrow text make masks
            and SparseGPT's updates fit that text; the model's own samples cover what it
            has learned (see ``docs/llm.md``, "Calibration"). ``None`` (default): 0.5 for a
            model that can ``generate`` (a causal LM) when calibration is used, else 0.
            Costs the generation (on a CPU, about 8 s per 512-token window of
            SmolLM2-135M).
        keep_masks: ``False`` (default): the masks are committed at the end, so the model
            is a plain ``transformers`` model whose ``save_pretrained`` → stock
            ``from_pretrained`` is exact. ``True``: the masks stay registered (to fine-tune
            with the zeros enforced); ``model.save_pretrained`` then commits, saves and
            registers them again, so the saved folder is exact as well.

    Returns:
        An :class:`LLMPruneReport` (``committed`` says which of the two happened).

    Raises:
        PruneError: (a ``ValueError``) for a bad argument or a model without transformer blocks.
    """
    method = _check_method(method)
    nm = parse_pattern(pattern)
    sparsity = _check_sparsity(sparsity)
    _check_choice("comparison", comparison, COMPARISONS)
    blocksize = _check_positive_int("blocksize", blocksize)
    batch_size = _check_positive_int("batch_size", batch_size)
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not (0.0 <= percdamp):
        raise PruneError(f"percdamp {percdamp!r} must be a non-negative number (typically 0.01)")
    if isinstance(shrink, bool) or not isinstance(shrink, (int, float)) or not (0.0 <= shrink <= 1.0):
        raise PruneError(f"shrink {shrink!r} must be a number in [0, 1] (0 = plain SparseGPT)")
    if shrink and method != "sparsegpt":
        raise PruneError(f"shrink={shrink!r} applies to method 'sparsegpt' only, not {method!r}")
    _check_choice("allocation", allocation, ALLOCATIONS)
    if not isinstance(keep_masks, bool):
        raise PruneTypeError(f"keep_masks must be True or False, got {keep_masks!r}")
    if isinstance(owl_lambda, bool) or not isinstance(owl_lambda, (int, float)) or not (0.0 <= owl_lambda < 1.0):
        raise PruneError(f"owl_lambda {owl_lambda!r} must be a number in [0, 1) (typically 0.08)")
    if isinstance(depth_lambda, bool) or not isinstance(depth_lambda, (int, float)) or not (0.0 <= depth_lambda < 1.0):
        raise PruneError(f"depth_lambda {depth_lambda!r} must be a number in [0, 1) (e.g. 0.05)")
    if isinstance(owl_m, bool) or not isinstance(owl_m, (int, float)) or not (owl_m > 0):
        raise PruneError(f"owl_m {owl_m!r} must be a positive number (typically 5)")
    if reconstruct is None:  # the default chosen on a causal LM (docs/llm.md); encoders keep the published methods
        reconstruct = DEFAULT_RECONSTRUCT if calibration is not None and method != "magnitude" and can_generate(model) else 0
    if isinstance(reconstruct, bool) or not isinstance(reconstruct, int) or reconstruct < 0:
        raise PruneError(f"reconstruct {reconstruct!r} must be a non-negative integer (epochs; 0 = off)")
    if isinstance(reconstruct_lr, bool) or not isinstance(reconstruct_lr, (int, float)) or not (0.0 < reconstruct_lr < 1.0):
        raise PruneError(f"reconstruct_lr {reconstruct_lr!r} must be a number in (0, 1) (e.g. 3e-4)")
    if isinstance(reconstruct_holdout, bool) or not isinstance(reconstruct_holdout, (int, float)) or not (0.0 <= reconstruct_holdout < 1.0):
        raise PruneError(f"reconstruct_holdout {reconstruct_holdout!r} must be a number in [0, 1) (a fraction of the calibration batches)")
    if not isinstance(sequential, bool):
        raise PruneTypeError(f"sequential must be True or False; got {type(sequential).__name__}: {sequential!r}")
    if nm is not None:
        if allocation != "uniform":
            raise PruneError(f"allocation {allocation!r} needs unstructured sparsity; pattern {pattern!r} fixes every layer to {nm[0]}:{nm[1]}")
        sparsity = 1.0 - nm[0] / nm[1]
        if method == "sparsegpt" and blocksize % nm[1] != 0:
            raise PruneError(f"blocksize {blocksize!r} must be a multiple of M={nm[1]} for pattern {pattern!r}")
    layers = transformer_blocks(model)
    needs_data = method != "magnitude" or allocation == "owl" or reconstruct > 0
    if calibration is None:
        if needs_data:
            what = (
                f"method {method!r}" if method != "magnitude"
                else f"allocation {allocation!r}" if allocation == "owl" else f"reconstruct={reconstruct}"
            )
            raise PruneError(
                f"{what} needs calibration token ids [n, seqlen]; only 'magnitude' without OWL or reconstruction accepts None"
            )
        ids = None
    else:
        ids = check_tokens("calibration", calibration)
    generative = can_generate(model)
    if self_calibration is None:
        self_calibration = 0.5 if generative and ids is not None and needs_data else 0.0
    elif isinstance(self_calibration, bool) or not isinstance(self_calibration, (int, float)) or not (0.0 <= self_calibration <= 1.0):
        raise PruneError(f"self_calibration {self_calibration!r} must be a number in [0, 1] (the fraction of calibration windows the model writes)")
    elif self_calibration > 0 and not generative:
        raise PruneError(f"self_calibration={self_calibration!r} needs a causal language model with generate(); "
                         f"{type(model).__name__} has none: use self_calibration=0")
    generated = 0 if ids is None or not needs_data else round(float(self_calibration) * ids.shape[0])
    held = 0
    if reconstruct and reconstruct_holdout and ids is not None:
        batches = math.ceil(ids.shape[0] / batch_size)
        held = math.ceil(reconstruct_holdout * batches)
        if held >= batches:
            raise PruneError(
                f"reconstruct_holdout={reconstruct_holdout!r} sets aside {held} of the {batches} calibration batches "
                f"({ids.shape[0]} windows, batch_size={batch_size}), leaving none to fit; use more calibration windows, "
                "a smaller batch_size or a smaller fraction"
            )

    names = {id(m): n for n, m in model.named_modules()}
    per_block = [[(names[id(m)], m) for _, m in layer.named_modules() if _is_linear(m)] for layer in layers]
    if nm is not None:
        bad = [f"{n} (in_features={_in_features(m)})" for blk in per_block for n, m in blk if _in_features(m) % nm[1]]
        if bad:
            raise PruneError(f"pattern {pattern!r} needs in_features divisible by {nm[1]}; not: {', '.join(bad)}")

    start = time.perf_counter()
    cuda = next(model.parameters()).device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    report = LLMPruneReport(method=method, sparsity=sparsity, pattern=pattern, allocation=allocation, sequential=sequential,
                            reconstruct=reconstruct, self_calibration=float(self_calibration))
    was_training = model.training
    model.eval()
    try:
        if generated:
            t0 = time.perf_counter()
            own = self_generated(model, generated, ids.shape[1], seed=0, batch_size=batch_size)  # type: ignore[union-attr]
            kept = ids.shape[0] - generated  # type: ignore[union-attr]
            ids = (mix(ids[:kept], own) if kept else own).to(ids.device)  # type: ignore[index,union-attr]
            report.generated_windows, report.generation_seconds = generated, time.perf_counter() - t0
        # Magnitude without OWL or reconstruction reads only the weights: no forward pass at all.
        chunks = capture_first_inputs(model, layers[0], ids, batch_size) if ids is not None and needs_data else []
        report.calibration_tokens = 0 if ids is None or not needs_data else int(ids.numel())
        sizes = [sum(m.weight.numel() for _, m in blk) for blk in per_block]
        block_sparsity = [sparsity] * len(layers)
        if allocation == "owl":
            report.outlier_ratio = _owl_pass(layers, per_block, chunks, float(owl_m))
            block_sparsity = owl_sparsities(report.outlier_ratio, sizes, sparsity, float(owl_lambda))
        elif allocation == "depth":
            block_sparsity = depth_sparsities(sizes, sparsity, float(depth_lambda))
        report.block_sparsity = block_sparsity
        for li, layer in enumerate(layers):
            linears = per_block[li]
            groups = _input_groups(layer, linears, chunks[0]) if sequential and method != "magnitude" else [linears]
            targets: list[torch.Tensor] | None = None
            if reconstruct:
                # The dense block's outputs; the statistics pass computes them when it runs the whole block.
                targets = [] if len(groups) == 1 and method != "magnitude" else [block_output(layer, *c) for c in chunks]
            for group in groups:
                stats: dict[str, _Stats] = {}
                if method != "magnitude":
                    fill = targets if targets is not None and len(groups) == 1 else None
                    stats = _collect(layer, group, chunks, method, stop_early=sequential, outputs=fill)
                masks: dict[str, torch.Tensor] = {}
                for name, mod in group:
                    t0 = time.perf_counter()
                    new, keep = _prune_linear(
                        mod, stats.pop(name, None), method, block_sparsity[li], nm, comparison, blocksize, percdamp, float(shrink)
                    )
                    if _transposed(mod):
                        new, keep = new.t(), keep.t()
                    _weight_param(mod).copy_(new)
                    masks[f"{name}.weight"] = keep
                    zeros = int((~keep).sum())
                    report.layers.append(
                        LLMLayerReport(name, (_out_features(mod), _in_features(mod)), zeros / keep.numel(), time.perf_counter() - t0)
                    )
                apply_masks(model, masks)
            if targets is not None:
                report.reconstruction.append(reconstruct_block(
                    layer, [_weight_param(m) for _, m in linears], chunks, targets, reconstruct, reconstruct_lr, held
                ))
                del targets
            if li + 1 < len(layers):
                for j, (hidden, args, kwargs) in enumerate(chunks):
                    chunks[j] = (block_output(layer, hidden, args, kwargs), args, kwargs)
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - start
    if cuda:
        report.peak_memory_bytes = int(torch.cuda.max_memory_allocated())
    report.coverage = block_coverage(model, [x for blk in per_block for x in blk], [names[id(l)] for l in layers],
                                     "prune_llm")
    finish(model, keep_masks)
    report.committed = not keep_masks
    return report


@torch.no_grad()
def prune_linear(
    layer: nn.Linear,
    inputs: torch.Tensor | None,
    *,
    method: str = "sparsegpt",
    sparsity: float = 0.5,
    pattern: str | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    comparison: str = "row",
) -> torch.Tensor:
    """Prune a single ``nn.Linear`` in place from sample inputs, as :func:`prune_llm` does per layer.

    Args:
        layer: the layer; its weight gets a prunekit mask (and SparseGPT's updated values).
        inputs: sample inputs ``[..., in_features]`` (``None`` allowed for magnitude).
        method, sparsity, pattern, blocksize, percdamp, comparison: as in :func:`prune_llm`.

    Returns:
        The boolean keep-mask of the weight.
    """
    if not isinstance(layer, nn.Linear):
        raise PruneTypeError(f"layer must be an nn.Linear; got {type(layer).__name__}")
    method = _check_method(method)
    nm = parse_pattern(pattern)
    sparsity = 1.0 - nm[0] / nm[1] if nm is not None else _check_sparsity(sparsity)
    _check_choice("comparison", comparison, COMPARISONS)
    blocksize = _check_positive_int("blocksize", blocksize)
    if nm is not None and layer.in_features % nm[1]:
        raise PruneError(f"pattern {pattern!r} needs in_features divisible by {nm[1]}; got {layer.in_features}")
    stats = None
    if method != "magnitude":
        if not isinstance(inputs, torch.Tensor) or inputs.shape[-1] != layer.in_features:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise PruneError(f"method {method!r} needs inputs [..., {layer.in_features}]; got {got}")
        stats = _Stats(layer, method)
        stats.hook(layer, (inputs,), None)
    new, keep = _prune_linear(layer, stats, method, sparsity, nm, comparison, blocksize, percdamp)
    _weight_param(layer).copy_(new)
    apply_masks(layer, {"weight": keep})
    return keep


@torch.no_grad()
def perplexity(model: nn.Module, token_ids: torch.Tensor, *, seqlen: int, stride: int | None = None) -> float:
    """Perplexity of a causal language model on a token stream: ``exp`` of the mean NLL.

    The stream (``token_ids`` flattened) is cut into windows of ``seqlen`` tokens. With
    ``stride=None`` (or ``stride == seqlen``) windows do not overlap and each predicts its
    own tokens 2..seqlen. A smaller ``stride`` slides the window by ``stride`` tokens and
    scores only the tokens not scored before, giving them longer context. A trailing
    remainder shorter than a window is not used.

    Args:
        model: returns ``.logits`` (``[batch, seqlen, vocab]``) for ``model(input_ids=...)``.
        token_ids: LongTensor of token ids, 1-D or ``[n, L]`` (rows are concatenated).
        seqlen: window length, at least 2.
        stride: window step, ``1 <= stride <= seqlen``; ``None`` means ``seqlen``.

    Returns:
        The perplexity, a float.
    """
    ids = check_tokens("token_ids", token_ids).reshape(-1)
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 2:
        raise PruneError(f"seqlen {seqlen!r} must be an integer >= 2")
    if seqlen > ids.numel():
        raise PruneError(f"seqlen {seqlen!r} is longer than the {ids.numel()} tokens given")
    stride = seqlen if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not (1 <= stride <= seqlen):
        raise PruneError(f"stride {stride!r} must be an integer with 1 <= stride <= seqlen={seqlen}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    try:
        for i, begin in enumerate(range(0, ids.numel() - seqlen + 1, stride)):
            window = ids[begin : begin + seqlen].to(device).unsqueeze(0)
            logits = model(input_ids=window, use_cache=False).logits[0, :-1].float()
            target = window[0, 1:]
            # First window: every prediction; later ones: only the tokens past the previous window.
            first = 0 if i == 0 else max(0, seqlen - 1 - stride)
            lp = torch.log_softmax(logits[first:], dim=-1)
            nll -= float(lp.gather(1, target[first:].unsqueeze(1)).sum())
            count += target.numel() - first
    finally:
        model.train(was_training)
    return float(math.exp(nll / count))
