"""Layer classes that pruning leaves in a model: ``nn.MultiheadAttention`` with fewer heads
or a narrower embedding, and ``LayerNorm`` over the kept channels of a narrowed width.

``nn.MultiheadAttention`` derives its head size from ``embed_dim // num_heads``, so it
cannot hold fewer heads of the same size, nor a residual width other than
``num_heads * head_dim``. ``PrunedMultiheadAttention`` keeps the parameter names
(``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``) and the call
signature, with an explicit ``head_dim``; its ``embed_dim`` is the width of ``out_proj``.
``PrunedLayerNorm`` normalizes the kept channels of a residual stream with the statistics
the masked model computes (the removed channels count as zeros). ``EmptyOutput`` and
``ConstantOutput`` stand for a Linear/Conv layer left with no output or no input channels
(a residual block whose inner channels were all removed). ``pk.compact``
(:mod:`prunekit.surgery`) swaps them in, and the architecture spec
(:mod:`prunekit.graph.spec`) names and rebuilds them. They live here, below both, so that
the tracer side never imports surgery.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PruneError


class PrunedMultiheadAttention(nn.Module):
    """Multi-head attention with ``num_heads`` heads of ``head_dim`` each, in and out width
    ``embed_dim``. Same forward signature and results as ``nn.MultiheadAttention`` (packed
    projections, no ``bias_k``/``bias_v``, no ``add_zero_attn``).

    Returned attention weights, when asked for, average over the remaining heads.
    """

    #: ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` take fused fast paths
    #: (which derive the head size from ``embed_dim // num_heads``) only when this is True:
    #: False sends them through :meth:`forward`.
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        self._qkv_same_embed_dim = False  # an instance attribute too: torch.jit.script reads those only
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @classmethod
    def from_module(cls, m: nn.Module, num_heads: int, head_dim: int) -> PrunedMultiheadAttention:
        """A replacement for ``m`` whose tensors are ``m``'s (already sliced) tensors; its
        ``embed_dim`` is the (possibly narrowed) width of ``m.out_proj``."""
        new = cls(int(m.out_proj.weight.shape[0]), num_heads, head_dim, bias=m.in_proj_bias is not None,
                  batch_first=m.batch_first, dropout=m.dropout)
        new.in_proj_weight = m.in_proj_weight
        new.in_proj_bias = m.in_proj_bias
        new.out_proj = m.out_proj
        new.out_proj.in_features = num_heads * head_dim
        return new.train(m.training)

    @property
    def embed_dim(self) -> int:
        """Input and output width: the rows of ``out_proj`` (a compacted stream narrows it)."""
        return int(self.out_proj.out_features)

    def merge_masks(self, attn_mask: Optional[torch.Tensor], key_padding_mask: Optional[torch.Tensor],
                    query: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[int]]:
        """``nn.MultiheadAttention.merge_masks`` for a batch-first ``query``: the additive mask
        of shape (batch, heads, length, length) and its type 2, or ``(None, None)``. Torch's
        fused encoder path calls it; it never runs with this class, but ``torch.jit.script``
        compiles that path too."""
        bsz, length = query.shape[0], query.shape[1]
        mask = _merge_masks(attn_mask, key_padding_mask, bsz, length, length, query.dtype)
        if mask is None:
            return None, None
        return mask.expand(bsz, self.num_heads, length, length), 2

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        # written for torch.jit.script too: explicit Optional types, no tuple unpacking of lists
        same = query is key and key is value  # self-attention: one packed projection
        if self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        tgt, bsz = query.shape[0], query.shape[1]
        src = key.shape[0]
        h, d = self.num_heads, self.head_dim
        if same:  # the packed weight is used whole, so channel tracing sees its rows and heads
            qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, -1)
            q, k, v = qkv[0], qkv[1], qkv[2]
        else:
            w = self.in_proj_weight.chunk(3)
            bq: Optional[torch.Tensor] = None
            bk: Optional[torch.Tensor] = None
            bv: Optional[torch.Tensor] = None
            in_bias = self.in_proj_bias
            if in_bias is not None:
                b = in_bias.chunk(3)
                bq, bk, bv = b[0], b[1], b[2]
            q, k, v = F.linear(query, w[0], bq), F.linear(key, w[1], bk), F.linear(value, w[2], bv)
        q = q.reshape(tgt, bsz, h, d).permute(1, 2, 0, 3)
        k = k.reshape(src, bsz, h, d).permute(1, 2, 0, 3)
        v = v.reshape(src, bsz, h, d).permute(1, 2, 0, 3)
        mask = _merge_masks(attn_mask, key_padding_mask, bsz, tgt, src, q.dtype)
        p = self.dropout if self.training else 0.0
        weights: Optional[torch.Tensor] = None
        if need_weights:
            scores = (q * (1.0 / math.sqrt(d))) @ k.transpose(-2, -1)
            if is_causal and mask is None:
                mask = torch.full((tgt, src), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
            if mask is not None:
                scores = scores + mask
            attn = scores.softmax(-1)
            y = F.dropout(attn, p) @ v
            weights = attn.mean(1) if average_attn_weights else attn
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal and mask is None)
        y = self.out_proj(y.permute(2, 0, 1, 3).reshape(tgt, bsz, h * d))
        if self.batch_first:
            y = y.transpose(0, 1)
        return y, weights


def _additive(m: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = masked out) as an additive one of ``dtype``."""
    if m.dtype == torch.bool:
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
    return m


def _merge_masks(attn_mask: Optional[torch.Tensor], key_padding_mask: Optional[torch.Tensor], bsz: int,
                 tgt: int, src: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
    mask: Optional[torch.Tensor] = None
    if attn_mask is not None:
        if attn_mask.dim() != 2:
            raise PruneError(
                "PrunedMultiheadAttention takes a 2-D attn_mask (target, source); got shape " + str(attn_mask.shape)
            )
        mask = _additive(attn_mask, dtype).reshape(1, 1, tgt, src)
    if key_padding_mask is not None:
        padding = _additive(key_padding_mask, dtype).reshape(bsz, 1, 1, src)
        mask = padding if mask is None else mask + padding
    return mask


class PrunedLayerNorm(nn.Module):
    """``LayerNorm`` over ``normalized_shape`` kept channels of a stream that was
    ``statistics_width`` wide: mean and variance are those of the full width with the
    removed channels at zero, which is what the masked model's ``nn.LayerNorm`` computes.

    ``y = (x - m) / sqrt(v + eps) * weight + bias`` with ``m = sum(x) / W`` and
    ``v = (sum((x - m)^2) + (W - K) m^2) / W`` over the last dimension (``K`` kept channels,
    ``W = statistics_width``). Computed in float32 for float16/bfloat16 inputs, like
    ``F.layer_norm``.
    """

    def __init__(self, normalized_shape: int, statistics_width: int, eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True) -> None:
        super().__init__()
        k = int(normalized_shape[0] if isinstance(normalized_shape, (tuple, list)) else normalized_shape)
        if not 0 < k <= int(statistics_width):
            raise PruneError(f"PrunedLayerNorm needs 0 < normalized_shape <= statistics_width; got {k} and {statistics_width}")
        self.normalized_shape, self.statistics_width = (k,), int(statistics_width)
        self.eps, self.elementwise_affine = float(eps), bool(elementwise_affine)
        self.weight = nn.Parameter(torch.ones(k)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(k)) if elementwise_affine and bias else None

    @classmethod
    def from_module(cls, m: nn.Module, statistics_width: int, eps: float) -> PrunedLayerNorm:
        """A replacement for the layer norm ``m`` (already sliced) that keeps its tensors."""
        w, b = getattr(m, "weight", None), getattr(m, "bias", None)
        new = cls(int(w.shape[0]), statistics_width, eps, bias=b is not None)
        new.weight = w if isinstance(w, nn.Parameter) else nn.Parameter(w.detach())
        new.bias = b if b is None or isinstance(b, nn.Parameter) else nn.Parameter(b.detach())
        return new.train(m.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.normalized_shape[0]:
            raise PruneError(
                "PrunedLayerNorm of " + str(self.normalized_shape[0]) + " channels got an input of shape " + str(x.shape)
            )
        wide = self.statistics_width
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mean = xf.sum(-1, keepdim=True) / wide
        centred = xf - mean
        var = (centred.square().sum(-1, keepdim=True) + (wide - xf.shape[-1]) * mean.square()) / wide
        y = centred * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, statistics_width={self.statistics_width}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


class _OutputShape(nn.Module):
    """The output shape of a Linear (``ndim`` 0) or ConvNd layer, computed from its input's."""

    def __init__(self, ndim: int, kernel_size: list[int], stride: list[int], padding: list[int],
                 dilation: list[int], same: bool) -> None:
        super().__init__()
        self.ndim = int(ndim)
        # never empty (a Linear has none): torch.jit.script infers List[int] from the values
        self.kernel_size, self.stride = [int(k) for k in kernel_size] or [0], [int(s) for s in stride] or [0]
        self.padding = [int(p) for p in padding] or [0]
        self.dilation, self.same = [int(d) for d in dilation] or [0], bool(same)

    @staticmethod
    def geometry(layer: nn.Module) -> dict:
        """The arguments that describe ``layer``'s output shape (a Linear or ConvNd)."""
        if isinstance(layer, nn.Linear):
            return {"ndim": 0, "kernel_size": [], "stride": [], "padding": [], "dilation": [], "same": False}
        n = len(layer.kernel_size)
        same = layer.padding == "same"
        pad = [0] * n if isinstance(layer.padding, str) else list(layer.padding)
        return {"ndim": n, "kernel_size": list(layer.kernel_size), "stride": list(layer.stride), "padding": pad,
                "dilation": list(layer.dilation), "same": same}

    def output_shape(self, x: torch.Tensor, channels: int) -> list[int]:
        if self.ndim == 0:
            out = list(x.shape[:-1])
            out.append(channels)
            return out
        lead = x.dim() - self.ndim - 1  # 1 for a batch, 0 for one unbatched sample
        out = list(x.shape[:lead])
        out.append(channels)
        for i in range(self.ndim):
            size = x.shape[lead + 1 + i]
            if self.same:
                out.append(size)
            else:
                span = self.dilation[i] * (self.kernel_size[i] - 1) + 1
                out.append((size + 2 * self.padding[i] - span) // self.stride[i] + 1)
        return out


class EmptyOutput(_OutputShape):
    """Stands for a Linear or Conv layer whose every output unit was removed (a whole block
    pruned away): returns the empty tensor, with no channels, that the layer would have
    produced, and computes nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(self.output_shape(x, 0))


class ConstantOutput(_OutputShape):
    """Stands for a Linear or Conv layer whose every input channel was removed: its output
    no longer depends on its input, only on its shape. It is the layer's bias (a learnable
    per-channel constant; zeros for a layer without one) broadcast to that shape."""

    def __init__(self, channels: int, ndim: int, kernel_size: list[int], stride: list[int], padding: list[int],
                 dilation: list[int], same: bool) -> None:
        super().__init__(ndim, kernel_size, stride, padding, dilation, same)
        self.channels = int(channels)
        self.bias = nn.Parameter(torch.zeros(self.channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.output_shape(x, self.channels)
        view = [1] * len(shape)
        view[len(shape) - 1 - self.ndim] = self.channels
        # a new (channels-long) tensor, not a view of the parameter: without gradients such a
        # view would claim requires_grad with no grad_fn, which module hooks cannot follow
        return (self.bias * 1).view(view).expand(shape).contiguous()  # in-place ops downstream need memory

    def extra_repr(self) -> str:
        return f"channels={self.channels}, ndim={self.ndim}"
