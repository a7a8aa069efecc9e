"""Quantization of pruned models: what the packed file will hold, and weight sharing.

``quantized(model, scheme)`` returns a copy whose weights are exactly the values
``pk.save(model, path, format="packed", quantize=scheme)`` stores (so its accuracy is the
saved model's accuracy); zeros stay zero.

``share_weights(model, bits, data=..., loss_fn=...)`` is Deep Compression's weight
sharing: the non-zero weights of each layer are clustered into ``2**bits`` shared values
(1-D k-means, linear initialization), and, given data, the shared values are fine-tuned:
each centroid moves by the sum of the gradients of the weights assigned to it, the
assignment and the zeros stay fixed. The result has at most ``2**bits`` distinct non-zero
values per layer, which the packed ``codebook`` encoding stores exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import masking
from ..criteria.base import call_model
from ..errors import PruneError
from ..targets import check_module, find_targets
from .packed import MIN_NUMEL, decode, encode, kmeans_1d, parse_scheme


def quantized(model: nn.Module, scheme: str | None) -> nn.Module:
    """A committed copy of ``model`` holding the values a packed save with ``scheme`` keeps."""
    check_module(model)
    parse_scheme(scheme)
    out = masking.commit(copy.deepcopy(model))
    state = {k: v for k, v in out.state_dict().items()}
    back, _ = decode(encode(state, scheme))
    out.load_state_dict(back)
    return out


def share_weights(
    model: nn.Module,
    bits: int = 4,
    *,
    data: Iterable | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    epochs: int = 1,
    lr: float = 1e-4,
    ignore: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Cluster each prunable weight's non-zero values into ``2**bits`` shared values, in
    place, and fine-tune the shared values on ``data`` if given. Masks are committed first
    (zeros stay zero). Returns ``{weight name: centroids}``.

    Args:
        model: the (pruned) model, changed in place.
        bits: index bits per weight, 1..8.
        data: iterable of ``(inputs, labels)`` batches for centroid fine-tuning (optional).
        loss_fn: ``loss_fn(outputs, labels)``; needed with ``data``.
        epochs: passes over ``data``.
        lr: Adam learning rate of the centroids.
        ignore: weights to leave alone.
    """
    check_module(model)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise PruneError(f"bits must be an int in 1..8, got {bits!r}")
    if data is not None and loss_fn is None:
        raise PruneError("share_weights with data= needs loss_fn=(outputs, labels) -> loss")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise PruneError(f"epochs must be a non-negative int, got {epochs!r}")
    masking.commit(model)
    layers: list[dict[str, Any]] = []
    for t in find_targets(model, ignore):
        w = t.module.weight
        if w.numel() < MIN_NUMEL:
            continue
        with torch.no_grad():
            flat = w.detach().reshape(-1)
            pos = torch.nonzero(flat).flatten()
            if pos.numel() == 0:
                continue
            cent, idx = kmeans_1d(flat[pos].double().numpy(), 1 << bits)
            cent_t = torch.tensor(cent, dtype=w.dtype)
            idx_t = torch.from_numpy(np.asarray(idx)).long()
            flat[pos] = cent_t[idx_t]
        layers.append({"name": t.name, "param": w, "pos": pos, "idx": idx_t, "cent": nn.Parameter(cent_t)})
    if data is not None and layers and epochs:
        opt = torch.optim.Adam([l["cent"] for l in layers], lr=lr)
        params = [l["param"] for l in layers]
        model.train()
        for _ in range(epochs):
            for batch in data:
                x, y = batch[0], batch[1]
                for p in params:
                    p.grad = None
                loss = loss_fn(call_model(model, x), y)
                grads = torch.autograd.grad(loss, params)
                opt.zero_grad(set_to_none=True)
                for l, g in zip(layers, grads):
                    gc = torch.zeros_like(l["cent"]).index_add_(0, l["idx"], g.reshape(-1)[l["pos"]])
                    l["cent"].grad = gc
                opt.step()
                with torch.no_grad():
                    for l in layers:
                        l["param"].reshape(-1)[l["pos"]] = l["cent"][l["idx"]].to(l["param"].dtype)
        model.eval()
    return {l["name"]: l["cent"].detach().clone() for l in layers}
