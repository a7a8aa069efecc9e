"""Block-wise reconstruction: refit a pruned block's kept weights to the dense block's outputs.

After :func:`prunekit.llm.prune_llm` prunes a block, :func:`reconstruct_block` fits the
weights the masks kept so that the pruned block, on the calibration inputs, reproduces the
outputs the dense block gave on the same inputs: Adam on the mean squared error, one step
per calibration batch. The masks stay fixed (the parametrization multiplies each gradient by
its mask).

Fitting harder fits the calibration text harder. With ``holdout`` batches set aside, the
error on them is measured before fitting and after every epoch; fitting stops at the first
epoch that does not lower it, and the weights of the best epoch are kept (which may be the
weights before any fitting).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .blocks import Chunk, block_output

__all__ = ["ReconstructResult", "block_mse", "reconstruct_block", "split_chunk"]

#: Sequences per backward pass: a batch's gradient is accumulated over slices this size, so
#: autograd holds the activations of two sequences only.
SLICE = 2


def split_chunk(chunk: Chunk, size: int) -> list[tuple[Chunk, slice]]:
    """Cut a block call's batch into slices of ``size`` sequences.

    The hidden states and every keyword tensor with at least two dimensions whose first
    dimension is the batch (attention masks) are sliced, and so is a tensor of three or more
    dimensions whose first is a multiple of it (BLOOM's ALiBi bias: batch × heads rows, each
    sequence's in a row); everything else (rotary tables shared by the batch, cache
    positions, flags) is passed unchanged.
    """
    hidden, args, kwargs = chunk
    batch = hidden.shape[0]

    def cut(v: Any, sl: slice) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[0] == batch:
            return v[sl]
        if isinstance(v, torch.Tensor) and v.dim() >= 3 and v.shape[0] > batch and v.shape[0] % batch == 0:
            per = v.shape[0] // batch
            return v[sl.start * per : sl.stop * per]
        if isinstance(v, (tuple, list)) and v and all(isinstance(t, torch.Tensor) for t in v):
            return type(v)(cut(t, sl) for t in v)
        return v

    out = []
    for b in range(0, batch, size):
        sl = slice(b, min(b + size, batch))
        out.append(((hidden[sl], tuple(cut(a, sl) for a in args), {k: cut(v, sl) for k, v in kwargs.items()}), sl))
    return out


@torch.no_grad()
def block_mse(layer: nn.Module, chunks: list[Chunk], targets: list[torch.Tensor]) -> float:
    """Mean squared error between the block's outputs on ``chunks`` and ``targets``, over all elements."""
    total, count = 0.0, 0
    for chunk, target in zip(chunks, targets):
        out = block_output(layer, *chunk)
        total += float(torch.nn.functional.mse_loss(out.float(), target.float(), reduction="sum"))
        count += target.numel()
    return total / max(count, 1)


@dataclass
class ReconstructResult:
    """What :func:`reconstruct_block` did to one block.

    Attributes:
        epochs: epochs run (fewer than asked when the held-out error stopped improving).
        kept_epoch: the epoch whose weights were kept (0: the weights before fitting).
        holdout_mse: the held-out error before fitting and after every epoch run (empty
            without held-out batches).
    """

    epochs: int = 0
    kept_epoch: int = 0
    holdout_mse: list[float] = field(default_factory=list)


def reconstruct_block(
    layer: nn.Module,
    params: list[torch.Tensor],
    chunks: list[Chunk],
    targets: list[torch.Tensor],
    epochs: int,
    lr: float,
    holdout: int = 0,
) -> ReconstructResult:
    """Fit ``params`` (the stored weights of the block's pruned linears) to ``targets``.

    Args:
        layer: the pruned block.
        params: the tensors to fit (each linear's stored weight, the parametrization's
            original when masked); every other parameter of the block stays frozen.
        chunks: the block's calibration inputs, one entry per batch.
        targets: the dense block's outputs on the same inputs.
        epochs: passes over the fitting batches (the most, with ``holdout``).
        lr: Adam's learning rate.
        holdout: the last ``holdout`` batches are not fitted; they decide when to stop.
    """
    fit = list(zip(chunks, targets))
    held: list[tuple[Chunk, torch.Tensor]] = []
    if holdout:
        fit, held = fit[:-holdout], fit[-holdout:]
    result = ReconstructResult()

    def held_mse() -> float:
        return block_mse(layer, [c for c, _ in held], [t for _, t in held])

    best = [p.detach().clone() for p in params] if held else []
    if held:
        result.holdout_mse.append(held_mse())
    flags = {id(p): p.requires_grad for p in layer.parameters()}
    for p in layer.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    try:
        for epoch in range(1, epochs + 1):
            with torch.enable_grad():
                for chunk, target in fit:
                    opt.zero_grad(set_to_none=True)
                    total = chunk[0].shape[0]
                    for piece, sl in split_chunk(chunk, SLICE):
                        out = block_output(layer, *piece)
                        part = target[sl]
                        # The slice's share of the batch's mean squared error.
                        loss = torch.nn.functional.mse_loss(out.float(), part.float()) * (part.shape[0] / total)
                        loss.backward()
                    opt.step()
            result.epochs = epoch
            if not held:
                result.kept_epoch = epoch
                continue
            mse = held_mse()
            result.holdout_mse.append(mse)
            if mse < min(result.holdout_mse[:-1]):
                result.kept_epoch = epoch
                with torch.no_grad():
                    for b, p in zip(best, params):
                        b.copy_(p)
            else:
                break
        if held:
            with torch.no_grad():
                for b, p in zip(best, params):
                    p.copy_(b)
    finally:
        for p in layer.parameters():
            p.requires_grad_(flags.get(id(p), True))
            p.grad = None
    return result
