"""Surgery for :func:`prunekit.llm.structured.prune_structured`: slice the removed units out
of a block's linears, and update the head counts of its modules and the model's configs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .structured_layout import Block, Geometry

__all__ = ["remove_heads", "remove_neurons", "update_configs"]


def _slices(units: list[int], size: int, device: torch.device) -> torch.Tensor:
    """Row/column indices of the kept ``units``, each ``size`` wide."""
    idx = torch.tensor(units, dtype=torch.long, device=device)
    return (idx.unsqueeze(1) * size + torch.arange(size, device=device)).reshape(-1)


def _keep_rows(lin: nn.Linear, idx: torch.Tensor) -> None:
    lin.weight = nn.Parameter(lin.weight.detach()[idx].clone(), requires_grad=lin.weight.requires_grad)
    if lin.bias is not None:
        lin.bias = nn.Parameter(lin.bias.detach()[idx].clone(), requires_grad=lin.bias.requires_grad)
    lin.out_features = int(idx.numel())


def _keep_cols(lin: nn.Linear, idx: torch.Tensor) -> None:
    lin.weight = nn.Parameter(lin.weight.detach()[:, idx].clone(), requires_grad=lin.weight.requires_grad)
    lin.in_features = int(idx.numel())


def _set_ints(module: nn.Module, values: dict[str, int]) -> None:
    """Update the integer attributes of ``values`` that ``module`` has (not all families keep all)."""
    for name, value in values.items():
        if isinstance(getattr(module, name, None), int) and not isinstance(getattr(module, name), bool):
            setattr(module, name, value)


def remove_heads(b: Block, geom: Geometry, q_kept: list[int], kv_kept: list[int]) -> None:
    """Keep only the query heads ``q_kept`` and key/value heads ``kv_kept`` of one block."""
    dev = b.q.weight.device
    q_idx = _slices(q_kept, geom.head_dim, dev)
    _keep_rows(b.q, q_idx)
    _keep_cols(b.o, q_idx)
    if len(kv_kept) < geom.kv_heads:
        kv_idx = _slices(kv_kept, geom.head_dim, dev)
        _keep_rows(b.k, kv_idx)
        _keep_rows(b.v, kv_idx)
    heads, kv = len(q_kept), len(kv_kept)
    _set_ints(b.attn, {"num_heads": heads, "num_key_value_heads": kv, "num_key_value_groups": heads // kv})


def remove_neurons(b: Block, kept: list[int]) -> None:
    """Keep only the MLP neurons ``kept`` of one block."""
    idx = torch.tensor(kept, dtype=torch.long, device=b.mlp_out.weight.device)
    for lin in b.mlp_in:
        _keep_rows(lin, idx)
    _keep_cols(b.mlp_out, idx)
    _set_ints(b.mlp, {"intermediate_size": len(kept)})


def _configs(model: nn.Module) -> list[Any]:
    """Every distinct config object the model and its modules hold (usually one, shared)."""
    found = {id(model.config): model.config}
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "num_attention_heads"):
            found.setdefault(id(c), c)
    return list(found.values())


def update_configs(model: nn.Module, values: dict[str, int]) -> None:
    """Set ``values`` (``num_attention_heads``, ``intermediate_size``, ...) on every config the model holds."""
    for c in _configs(model):
        for k, v in values.items():
            setattr(c, k, v)
