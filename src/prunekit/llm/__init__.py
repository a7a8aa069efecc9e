"""One-shot pruning of decoder-only language models (``transformers`` Llama-style models).

:func:`prune_llm` prunes every linear layer of every decoder block, one block at a time,
with magnitude, Wanda or SparseGPT scores computed on a small calibration set;
:func:`perplexity` measures the effect on held-out text.
"""

from .oneshot import LLMLayerReport, LLMPruneReport, perplexity, prune_linear, prune_llm, sparsegpt_prune

__all__ = ["LLMLayerReport", "LLMPruneReport", "perplexity", "prune_linear", "prune_llm", "sparsegpt_prune"]
