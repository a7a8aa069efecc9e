"""Depth surgery: remove whole transformer blocks of a ``transformers`` model.

:func:`blocks_to_keep` ranks the blocks by a measured importance (block influence
``1 − cos(input, output)`` as in ShortGPT, or the calibration loss with the block skipped)
and :func:`remove_blocks` drops the others from the model's block list in place; the configs
(``num_hidden_layers``, ``layer_types``) and the attention modules' ``layer_idx`` (the KV-cache
slot) are renumbered by :func:`~prunekit.llm.config_update.update_architecture`, so the
result saves and reloads as a stock model.
"""

from __future__ import annotations

from torch import nn

from ..errors import PruneError
from .blocks import transformer_blocks
from .config_update import update_architecture

__all__ = ["blocks_to_keep", "remove_blocks"]


def blocks_to_keep(scores: list[float], layers: int) -> list[int]:
    """The original indices (ascending) of the ``layers`` blocks with the highest ``scores``."""
    if not 1 <= layers <= len(scores):
        raise PruneError(f"cannot keep {layers} of {len(scores)} blocks; keep between 1 and {len(scores)}")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:layers])


def remove_blocks(model: nn.Module, kept: list[int]) -> None:
    """Keep only the blocks ``kept`` (original indices, ascending), in place."""
    layers = transformer_blocks(model)
    if sorted(set(kept)) != list(kept) or not kept or kept[-1] >= len(layers) or kept[0] < 0:
        raise PruneError(f"kept blocks must be distinct ascending indices in 0..{len(layers) - 1}; got {kept}")
    if len(kept) == len(layers):
        return
    name = next(n for n, m in model.named_modules() if m is layers)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.ModuleList([layers[i] for i in kept]))
    update_architecture(model, kept_layers=list(kept))
