"""``nn.Linear`` with a sparse weight, for inference: :class:`SparseLinear` stores it as a
``torch.sparse_csr`` tensor (any device), :class:`SemiStructuredLinear` in NVIDIA's 2:4
semi-structured format (CUDA, float16/bfloat16: ``torch.sparse.to_sparse_semi_structured``).

Part of :mod:`prunekit.deploy.sparse` (which re-exports both; import them from there), where
:func:`prunekit.deploy.sparse.sparsify` decides, by timing, which layers become one. The CSR
product is ``torch.sparse.addmm(bias[:, None], W_csr, x.T).T`` (see
:mod:`prunekit.deploy.sparse` for why).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PruneError, PruneTypeError

__all__ = ["SemiStructuredLinear", "SparseLinear", "follows_two_four"]


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


def follows_two_four(weight: torch.Tensor) -> bool:
    """Whether every run of 4 consecutive input weights of every row holds at most 2 nonzeros:
    the 2:4 pattern the semi-structured kernels compute with (``in_features`` divisible by 4)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.detach().reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def _to_semi(weight: torch.Tensor) -> torch.Tensor:
    from torch.sparse import to_sparse_semi_structured

    with warnings.catch_warnings():  # "the semi-structured API is a prototype"
        warnings.simplefilter("ignore")
        try:
            return to_sparse_semi_structured(weight.detach().contiguous())
        except (RuntimeError, NotImplementedError, ValueError) as e:
            raise PruneError(f"2:4 semi-structured kernels do not take this weight ({tuple(weight.shape)}, {weight.dtype}, "
                             f"{weight.device.type}): they need a CUDA tensor of float16 or bfloat16 whose sides are "
                             f"multiples of the kernel's tile; torch says: {str(e).splitlines()[0]}") from e


class SemiStructuredLinear(nn.Module):
    """``nn.Linear`` for inference with a 2:4 weight compressed for NVIDIA's sparse tensor cores.

    The weight keeps its 2 largest-or-nonzero values of every 4 and their positions
    (``torch.sparse.to_sparse_semi_structured``: cuSPARSELt, or CUTLASS on sm_8x), and
    multiplies at up to twice the dense rate on large token counts; below a few thousand
    tokens dense kernels are often faster, which is why :func:`prunekit.deploy.sparse.sparsify`
    times both. Built on the weight's device (CUDA) and dtype (float16/bfloat16); not
    movable with ``.to()`` afterwards: build it where it runs. ``state_dict`` holds the dense
    weight (zeros included), so checkpoints load into ``nn.Linear`` or back into this class.

    Args:
        weight: ``(out_features, in_features)``, dense, following 2:4 along ``in_features``.
        bias: ``(out_features,)`` or ``None``.

    Raises:
        PruneError: the weight does not follow 2:4, or the kernels do not take it (CPU,
            float32, sides that are not multiples of the kernel's tile).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            got = f"shape {tuple(weight.shape)}" if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise PruneError(f"weight must be a 2-D tensor (out_features, in_features), got {got}")
        if not follows_two_four(weight):
            raise PruneError(f"weight {tuple(weight.shape)} does not follow 2:4 (at most 2 nonzeros in every 4 "
                             "consecutive input weights, in_features divisible by 4); prune with pattern='2:4' first")
        self.out_features, self.in_features = (int(s) for s in weight.shape)
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise PruneError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
        self.register_buffer("weight", _to_semi(weight))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> SemiStructuredLinear:
        """A ``SemiStructuredLinear`` computing what ``linear`` computes (its effective weight)."""
        if not isinstance(linear, nn.Linear):
            raise PruneTypeError(f"from_linear takes an nn.Linear, got {type(linear).__name__}")
        with torch.no_grad():
            return cls(linear.weight, linear.bias)

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense tensor, zeros included."""
        return self.weight.to_dense()

    def to_linear(self) -> nn.Linear:
        """The equivalent dense ``nn.Linear``."""
        w = self.dense_weight()
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_(w)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def __deepcopy__(self, memo: dict) -> SemiStructuredLinear:
        new = type(self)(self.dense_weight(), None if self.bias is None else self.bias.clone())
        memo[id(self)] = new
        new.train(self.training)
        return new

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.dense_weight()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        # The compressed buffer cannot be copied into: the dense weight is compressed anew.
        key = prefix + "weight"
        w = state_dict.get(key)
        if w is None:
            if strict:
                missing_keys.append(key)
        elif not isinstance(w, torch.Tensor) or tuple(w.shape) != (self.out_features, self.in_features):
            got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            error_msgs.append(f"size mismatch for {key}: got {got}, expected {(self.out_features, self.in_features)}")
        else:
            dense = w.to(device=self.weight.device, dtype=self.weight.dtype)
            if not follows_two_four(dense):
                raise PruneError(f"{key}: the loaded weight does not follow 2:4; load it into an nn.Linear instead")
            self._buffers["weight"] = _to_semi(dense)
        weight = self._buffers.pop("weight")
        try:
            rest = {k: v for k, v in state_dict.items() if k != key}
            super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                          error_msgs)
        finally:
            self._buffers["weight"] = weight

    @property
    def nnz(self) -> int:
        """Number of nonzero weights (the format stores 2 of every 4, zeros among them)."""
        return int(torch.count_nonzero(self.dense_weight()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.reshape(-1, self.in_features).contiguous(), self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, 2:4"
