"""Pruning of ``transformers`` language models and encoders (extra ``prunekit[llm]``).

* :func:`prune_llm`: one-shot unstructured or N:M pruning (magnitude, Wanda, SparseGPT),
  block by block, with uniform, OWL or depth-ramped sparsity per block, optional
  true-sequential order and optional block-wise reconstruction.
* :func:`prune_structured`: physical removal of attention heads (GQA-aware) and MLP
  neurons, with the config updated so ``save_pretrained`` / ``from_pretrained`` work.
* :func:`shrink`: width (hidden size, heads, MLP) and depth pruning to a parameter or MAC
  budget, candidates compared after a short distillation; :func:`apply_shape` and
  :func:`score` for one chosen shape (a stock ``transformers`` model either way);
  :func:`shrink_encoder` does the same for sentence encoders, keeping their hidden size.
* :func:`distill_encoder` and :class:`SentenceEmbedder`: recovery of a pruned sentence
  encoder, trained to reproduce the dense model's embeddings on unlabelled text.
* :func:`perplexity` and :func:`embedding_fidelity`: honest evaluation on held-out text.
* :func:`load_causal_lm`, :func:`load_encoder`, :func:`kjv_streams`, :func:`kjv_verses`:
  the models and text that install offline.
"""

from .data import calibration_windows, eval_windows, kjv_streams, kjv_verses, text_tokens
from .embedder import SentenceEmbedder, distill_encoder, text_batches
from .evaluate import FidelityReport, embedding_fidelity, encoder_calibration, sentence_embeddings
from .models import load_causal_lm, load_encoder
from .oneshot import LLMLayerReport, LLMPruneReport, perplexity, prune_linear, prune_llm, sparsegpt_prune
from .budget import Shape
from .shrink import ShrinkReport, apply_shape, score, shrink
from .shrink_encoder import shrink_encoder
from .structured import StructuredReport, prune_structured

__all__ = [
    "FidelityReport",
    "LLMLayerReport",
    "LLMPruneReport",
    "SentenceEmbedder",
    "Shape",
    "ShrinkReport",
    "StructuredReport",
    "apply_shape",
    "calibration_windows",
    "distill_encoder",
    "embedding_fidelity",
    "encoder_calibration",
    "eval_windows",
    "kjv_streams",
    "kjv_verses",
    "load_causal_lm",
    "load_encoder",
    "perplexity",
    "prune_linear",
    "prune_llm",
    "prune_structured",
    "score",
    "sentence_embeddings",
    "shrink",
    "shrink_encoder",
    "sparsegpt_prune",
    "text_batches",
    "text_tokens",
]
