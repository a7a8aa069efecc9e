"""One linear layer pruned from sample inputs, and the options every one-shot path shares.

:func:`prune_linear` prunes a single ``nn.Linear`` as :func:`prunekit.llm.prune_llm` prunes
each linear of a block; :func:`parse_pattern` reads an ``"N:M"`` pattern; :data:`METHODS`
and :data:`COMPARISONS` are the choices both accept.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .. import validate as V
from ..criteria import SparseGPT
from ..criteria.inputs import InputStatistics
from ..errors import PruneError, PruneTypeError
from ..masking import apply_masks
from ..registry import available, create, get
from .linears import layer_gradient, prune_matrix, weight_param

__all__ = ["COMPARISONS", "METHODS", "parse_pattern", "prune_linear"]

#: The core's local criteria (:attr:`prunekit.criteria.Criterion.statistics`): every one runs block by block.
METHODS = tuple(n for n in available("criterion") if get("criterion", n).statistics is not None)
#: Magnitude and Wanda without a pattern remove the lowest scores of each output row or of the whole layer.
COMPARISONS = ("row", "layer")
_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


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
    method = V.choice("method", method, METHODS)
    nm = parse_pattern(pattern)
    sparsity = 1.0 - nm[0] / nm[1] if nm is not None else V.fraction("sparsity", sparsity)
    V.choice("comparison", comparison, COMPARISONS)
    blocksize = V.integer("blocksize", blocksize, minimum=1)
    if nm is not None and layer.in_features % nm[1]:
        raise PruneError(f"pattern {pattern!r} needs in_features divisible by {nm[1]}; got {layer.in_features}")
    crit = SparseGPT(blocksize, float(percdamp)) if method == "sparsegpt" else create("criterion", method)
    stats = None
    if crit.statistics != "none":
        if not isinstance(inputs, torch.Tensor) or inputs.shape[-1] != layer.in_features:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise PruneError(f"method {method!r} needs inputs [..., {layer.in_features}]; got {got}")
        stats = InputStatistics(gram=crit.statistics == "gram")
        stats.add("weight", inputs.detach().reshape(-1, inputs.shape[-1]).to(torch.float32))
    gradient = layer_gradient(layer, inputs) if crit.statistics == "regional" else None
    new, keep = prune_matrix(layer, "weight", stats, crit, sparsity, nm, comparison, gradient=gradient)
    weight_param(layer).copy_(new)
    apply_masks(layer, {"weight": keep})
    return keep
