"""The PyTorch backend's masking path for :class:`~prunekit.adapters.keras_wrapper.PruneWrapper`.

On the TensorFlow and JAX backends the wrapper substitutes ``weight · mask`` for each masked
weight through a ``keras.StatelessScope``; their compiled steps trace that away. Eager
PyTorch pays for the substitution in Python at every call (about 6 % of a small MLP's
training step). Here, instead, with the same result:

- **forward**: the stored weight itself is kept masked. It is multiplied by its mask in
  place (no gradient recorded) whenever it was written since the last call: PyTorch counts
  every in-place write of a tensor (``Tensor._version``), the optimizer's steps and
  ``assign``/``set_weights`` included. So the forward pass sees the masked weight even after
  a write that bypassed the optimizer, and a layer called twice in one step is not
  rewritten between its calls (which would break its backward pass);
- **backward**: a gradient hook on the weight's ``torch.nn.Parameter`` multiplies its
  gradient by the mask's current value, so masked positions get exactly zero gradient
  (and, with the optimizer slots zeroed when a mask is set, never move).

The path is taken only where it computes exactly what the scope would: eager execution
(not while ``torch.compile`` traces), each weight's value being its own parameter (no
autocast copy, no outer stateless scope) and each mask of the weight's dtype. Otherwise
the wrapper falls back to the scope.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["TorchMasks"]


class TorchMasks:
    """The per-wrapper state of the PyTorch path: for each masked variable, the parameter
    its gradient hook sits on and the write count at which it was last masked."""

    def __init__(self) -> None:
        self._state: dict[int, list[Any]] = {}  # id(variable) -> [parameter, version, hook handle]

    def apply(self, pairs: Iterable[tuple[Any, Any, bool]], trusted: bool = False) -> bool:
        """Mask ``(variable, mask variable or None, needs a cast)`` pairs in place and hook
        their gradients; False (nothing changed) where the path does not apply.
        ``trusted``: the stored weights are known to hold their zeros (a training call
        while a prunekit callback drives ``fit``), so writes are not looked for: only the
        hooks are checked. A write made meanwhile is masked at the first call after."""
        if torch.compiler.is_compiling():
            return False
        todo = []
        for var, mask, cast in pairs:
            if mask is None:
                continue
            param = var.value
            if cast or not isinstance(param, torch.nn.Parameter):
                return False
            todo.append((var, mask, param))
        for var, mask, param in todo:
            entry = self._state.get(id(var))
            if entry is None or entry[0] is not param or (entry[2] is None and param.requires_grad):
                if entry is not None and entry[2] is not None:
                    entry[2].remove()
                # a frozen weight has no gradient to mask; the hook is added once it trains
                handle = param.register_hook(lambda grad, mask=mask: grad * mask.value) if param.requires_grad else None
                entry = self._state[id(var)] = [param, -1, handle]
            if not trusted and param._version != entry[1]:
                with torch.no_grad():
                    param.mul_(mask.value)
                entry[1] = param._version
        return True

    def __deepcopy__(self, memo: dict) -> TorchMasks:
        return TorchMasks()  # a copied wrapper hooks its own (copied) parameters on its first call

    def __reduce__(self) -> tuple[type, tuple]:
        return TorchMasks, ()

    def release(self) -> None:
        """Remove the gradient hooks (the wrapped weights train freely again)."""
        for _, _, handle in self._state.values():
            if handle is not None:
                handle.remove()
        self._state.clear()
