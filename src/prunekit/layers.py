"""Layer classes that pruning leaves in a model: ``nn.MultiheadAttention`` with fewer heads.

``nn.MultiheadAttention`` derives its head size from ``embed_dim // num_heads``, so it
cannot hold fewer heads of the same size while its input and output width stay the same.
``PrunedMultiheadAttention`` keeps the parameter names (``in_proj_weight``,
``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``) and the call signature, with an
explicit ``head_dim``; ``pk.compact`` (:mod:`prunekit.surgery.attention`) swaps it in when
heads were removed, and the architecture spec (:mod:`prunekit.graph.spec`) names and
rebuilds it. It lives here, below both, so that the tracer side never imports surgery.
"""

from __future__ import annotations

import math

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
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @classmethod
    def from_module(cls, m: nn.Module, num_heads: int, head_dim: int) -> PrunedMultiheadAttention:
        """A replacement for ``m`` whose tensors are ``m``'s (already sliced) tensors."""
        new = cls(m.embed_dim, num_heads, head_dim, bias=m.in_proj_bias is not None,
                  batch_first=m.batch_first, dropout=m.dropout)
        new.in_proj_weight = m.in_proj_weight
        new.in_proj_bias = m.in_proj_bias
        new.out_proj = m.out_proj
        new.out_proj.in_features = num_heads * head_dim
        return new.train(m.training)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        tgt, bsz, _ = query.shape
        src = key.shape[0]
        h, d = self.num_heads, self.head_dim
        w = self.in_proj_weight.chunk(3)
        b = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q = F.linear(query, w[0], b[0]).reshape(tgt, bsz, h, d).permute(1, 2, 0, 3)
        k = F.linear(key, w[1], b[1]).reshape(src, bsz, h, d).permute(1, 2, 0, 3)
        v = F.linear(value, w[2], b[2]).reshape(src, bsz, h, d).permute(1, 2, 0, 3)
        mask = _merge_masks(attn_mask, key_padding_mask, bsz, tgt, src, q.dtype)
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q * (1.0 / math.sqrt(d))) @ k.transpose(-2, -1)
            if is_causal and mask is None:
                mask = torch.full((tgt, src), float("-inf"), dtype=q.dtype).triu(1)
            if mask is not None:
                scores = scores + mask
            attn = scores.softmax(-1)
            y = F.dropout(attn, p) @ v
            weights = attn.mean(1) if average_attn_weights else attn
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal and mask is None)
            weights = None
        y = self.out_proj(y.permute(2, 0, 1, 3).reshape(tgt, bsz, h * d))
        if self.batch_first:
            y = y.transpose(0, 1)
        return y, weights


def _merge_masks(attn_mask, key_padding_mask, bsz, tgt, src, dtype):
    mask = None
    for m, shape in ((attn_mask, None), (key_padding_mask, (bsz, 1, 1, src))):
        if m is None:
            continue
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        if shape is not None:
            m = m.reshape(shape)
        elif m.dim() == 2:
            m = m.reshape(1, 1, tgt, src)
        else:
            raise PruneError(
                f"PrunedMultiheadAttention takes a 2-D attn_mask (target, source); got shape {tuple(m.shape)}"
            )
        mask = m if mask is None else mask + m
    return mask
