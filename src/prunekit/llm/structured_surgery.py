"""Surgery for :func:`prunekit.llm.structured.prune_structured`: slice the removed units out
of a block's linears, and update the head counts of its modules and the model's configs."""

from __future__ import annotations

import torch
from torch import nn

from .config_update import set_ints, update_architecture
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
    set_ints(b.attn, {"num_heads": heads, "num_key_value_heads": kv, "num_key_value_groups": heads // kv})


def remove_neurons(b: Block, kept: list[int]) -> None:
    """Keep only the MLP neurons ``kept`` of one block."""
    idx = torch.tensor(kept, dtype=torch.long, device=b.mlp_out.weight.device)
    for lin in b.mlp_in:
        _keep_rows(lin, idx)
    _keep_cols(b.mlp_out, idx)
    set_ints(b.mlp, {"intermediate_size": len(kept)})


def update_configs(model: nn.Module, values: dict[str, int]) -> None:
    """Set ``values`` (``num_attention_heads``, ``intermediate_size``, ...) on every config the model holds."""
    update_architecture(model, **values)
