"""A model's masks and values, kept to put it back exactly after a failed operation."""

from __future__ import annotations

import torch
from torch import nn

from .masking import drop_mask, get_masks

__all__ = ["ModelSnapshot"]


class ModelSnapshot:
    """The masks, parameter and buffer values of a model, to put it back in place after a
    failure: ``restore`` resets the values, drops masks registered since (only those whose
    mask is their one parametrization, as :func:`prunekit.masking.apply_masks` registers them) and keeps the
    parameters' order (``state_dict``, ``parameters()``)."""

    def __init__(self, model: nn.Module) -> None:
        self.masks = {n: m.detach().clone() for n, m in get_masks(model).items()}
        self.tensors = [(t, t.detach().clone()) for t in list(model.parameters()) + list(model.buffers())]
        self.order = {id(m): list(m._parameters) for m in model.modules()}  # state_dict / parameters() order

    def restore(self, model: nn.Module) -> None:
        modules = dict(model.named_modules())
        for name, mask in get_masks(model).items():
            if name in self.masks:
                with torch.no_grad():
                    mask.copy_(self.masks[name])
            else:  # added by this call: the mask is its only parametrization (apply_masks)
                mname, _, pname = name.rpartition(".")
                module = modules[mname]
                drop_mask(module, pname)
                order = self.order.get(id(module), [])
                if list(module._parameters) != order and set(module._parameters) == set(order):
                    params = dict(module._parameters)  # removal re-registered the weight last
                    module._parameters.clear()
                    module._parameters.update((k, params[k]) for k in order)
        with torch.no_grad():
            for t, value in self.tensors:
                t.copy_(value)
