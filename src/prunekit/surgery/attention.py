"""``nn.MultiheadAttention`` with fewer heads.

``nn.MultiheadAttention`` derives its head size from ``embed_dim // num_heads``, so it
cannot hold fewer heads of the same size while its input and output width stay the same.
``PrunedMultiheadAttention`` keeps the parameter names (``in_proj_weight``,
``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``) and the call signature, with an
explicit ``head_dim``; ``pk.compact`` swaps it in when heads were removed.
"""

from __future__ import annotations

from ..layers import PrunedMultiheadAttention as PrunedMultiheadAttention  # defined there, below graph/ and surgery/

__all__ = ["PrunedMultiheadAttention"]
