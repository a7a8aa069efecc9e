"""Scores of the units :func:`prunekit.llm.structured.prune_structured` removes, per block.

``"magnitude"``: the L2 norm of everything a unit removes; ``"wanda"``: ``sum_i |W[i, j]| *
||X_j||_2`` over the consuming layer's input columns ``j`` of the unit, the input norms
collected by :class:`InputNorms` (a forward hook). The highest scores are kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .structured_layout import Block, Geometry

__all__ = ["InputNorms", "head_scores", "kept_heads", "neuron_scores", "top_indices"]


class InputNorms:
    """Sum of squares of every input feature of a linear layer, filled by a forward hook."""

    def __init__(self, module: nn.Linear) -> None:
        self.sq = torch.zeros(module.in_features, dtype=torch.float64, device=module.weight.device)

    def hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        x = inputs[0].detach()
        self.sq += x.reshape(-1, x.shape[-1]).to(torch.float32).square().sum(0).to(torch.float64)

    def norms(self) -> torch.Tensor:
        """``||X_j||_2`` per input feature, float32."""
        return self.sq.sqrt().to(torch.float32)


def _sq_rows(lin: nn.Linear, units: int) -> torch.Tensor:
    """Sum of squares of the weights (and bias) of each of ``units`` equal slices of output rows."""
    w = lin.weight.detach().to(torch.float32)
    s = w.square().sum(1)
    if lin.bias is not None:
        s = s + lin.bias.detach().to(torch.float32).square()
    return s.reshape(units, -1).sum(1)


def _sq_cols(lin: nn.Linear, units: int) -> torch.Tensor:
    """Sum of squares of the weights of each of ``units`` equal slices of input columns."""
    return lin.weight.detach().to(torch.float32).square().sum(0).reshape(units, -1).sum(1)


def _wanda_cols(lin: nn.Linear, norms: torch.Tensor, units: int) -> torch.Tensor:
    """``sum_i |W[i, j]| * ||X_j||`` summed over each of ``units`` equal slices of input columns."""
    return (lin.weight.detach().to(torch.float32).abs().sum(0) * norms).reshape(units, -1).sum(1)


def head_scores(b: Block, geom: Geometry, criterion: str, gqa: str, o_norms: torch.Tensor | None) -> torch.Tensor:
    """One score per query head (``queries``) or per KV group (``groups``)."""
    if criterion == "wanda":
        assert o_norms is not None
        per_head = _wanda_cols(b.o, o_norms, geom.heads)
        return per_head if gqa == "queries" else per_head.reshape(geom.kv_heads, geom.group).sum(1)
    per_head = _sq_rows(b.q, geom.heads) + _sq_cols(b.o, geom.heads)
    if gqa == "queries":
        return per_head.sqrt()
    kv = _sq_rows(b.k, geom.kv_heads) + _sq_rows(b.v, geom.kv_heads)
    return (per_head.reshape(geom.kv_heads, geom.group).sum(1) + kv).sqrt()


def neuron_scores(b: Block, geom: Geometry, criterion: str, down_norms: torch.Tensor | None) -> torch.Tensor:
    """One score per MLP neuron."""
    if criterion == "wanda":
        assert down_norms is not None
        return _wanda_cols(b.mlp_out, down_norms, geom.neurons)
    sq = sum((_sq_rows(m, geom.neurons) for m in b.mlp_in), _sq_cols(b.mlp_out, geom.neurons))
    return sq.sqrt()


def top_indices(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores, ascending (ties go to the lower index)."""
    return sorted(torch.argsort(scores, descending=True, stable=True)[:keep].tolist())


def kept_heads(scores: torch.Tensor, geom: Geometry, gqa: str, removed: int) -> tuple[list[int], list[int]]:
    """``(kept query heads, kept kv heads)`` for one block."""
    if gqa == "groups":
        kv = top_indices(scores, geom.kv_heads - removed)
        return [g * geom.group + i for g in kv for i in range(geom.group)], kv
    per_group = scores.reshape(geom.kv_heads, geom.group)
    q = [g * geom.group + i for g in range(geom.kv_heads) for i in top_indices(per_group[g], geom.group - removed)]
    return q, list(range(geom.kv_heads))
