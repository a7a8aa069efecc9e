"""``nn.Linear`` with its weight stored as a ``torch.sparse_csr`` tensor, for inference.

Part of :mod:`prunekit.deploy.sparse` (which re-exports :class:`SparseLinear`; import it
from there), where :func:`prunekit.deploy.sparse.sparsify` decides, by timing, which layers
become one. The CSR product is ``torch.sparse.addmm(bias[:, None], W_csr, x.T).T`` (see
:mod:`prunekit.deploy.sparse` for why).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import PruneError, PruneTypeError

__all__ = ["SparseLinear"]


def _to_csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        return weight.detach().to_sparse_csr()


class SparseLinear(nn.Module):
    """``nn.Linear`` for inference with its weight stored as a ``torch.sparse_csr`` tensor.

    Computes ``x @ W.T + b`` like the ``nn.Linear`` it replaces (equal up to float
    rounding: the sums run in another order). The weight and bias are buffers, not
    parameters: the module is for running a finished model, not for training it. The
    output of a 2-D input is a transposed view (not contiguous), which the next
    ``SparseLinear`` reads without a copy.

    Args:
        weight: ``(out_features, in_features)``, dense (converted) or sparse CSR.
        bias: ``(out_features,)`` or ``None``.

    Example:
        >>> layer = SparseLinear.from_linear(nn.Linear(784, 300))
        >>> layer(torch.randn(2, 784)).shape
        torch.Size([2, 300])
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            got = f"shape {tuple(weight.shape)}" if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise PruneError(f"weight must be a 2-D tensor (out_features, in_features), got {got}")
        w = weight.detach() if weight.layout == torch.sparse_csr else _to_csr(weight)
        self.out_features, self.in_features = (int(s) for s in w.shape)
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise PruneError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
        self.register_buffer("weight", w)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> SparseLinear:
        """A ``SparseLinear`` computing what ``linear`` computes (its current, effective weight)."""
        if not isinstance(linear, nn.Linear):
            raise PruneTypeError(f"from_linear takes an nn.Linear, got {type(linear).__name__}")
        with torch.no_grad():
            return cls(linear.weight, linear.bias)

    def to_linear(self) -> nn.Linear:
        """The equivalent dense ``nn.Linear`` (e.g. to save or fine-tune the model)."""
        w = self.weight.to_dense()
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_(w)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def __deepcopy__(self, memo: dict) -> SparseLinear:
        # Tensor.__deepcopy__ reads the storage, which CSR tensors do not expose: clone them.
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        state = {k: v for k, v in self.__dict__.items() if k != "_buffers"}
        new.__dict__.update(copy.deepcopy(state, memo))
        new.__dict__["_buffers"] = {
            k: v.clone() if isinstance(v, torch.Tensor) and v.layout == torch.sparse_csr else copy.deepcopy(v, memo)
            for k, v in self._buffers.items()
        }
        return new

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # A CSR buffer only copies from a tensor with the same number of nonzeros, so the
        # incoming weight (CSR or dense) replaces the buffer instead.
        key = prefix + "weight"
        w = state_dict.get(key)
        if isinstance(w, torch.Tensor) and tuple(w.shape) == (self.out_features, self.in_features):
            w = w if w.layout == torch.sparse_csr else _to_csr(w)
            self._buffers["weight"] = w.to(device=self.weight.device, dtype=self.weight.dtype, copy=True)
            state_dict = {**state_dict, key: self._buffers["weight"]}
        super()._load_from_state_dict(state_dict, prefix, *args)

    @property
    def nnz(self) -> int:
        """Number of stored (nonzero) weights."""
        return int(self.weight.values().numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if self.bias is None:
            y = torch.sparse.mm(self.weight, x2.t())
        else:
            y = torch.sparse.addmm(self.bias.unsqueeze(1), self.weight, x2.t())
        y = y.t()
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        total = self.in_features * self.out_features
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, nnz={self.nnz} ({1 - self.nnz / max(1, total):.1%} zeros)")
