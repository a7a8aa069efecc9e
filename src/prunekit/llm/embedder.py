"""Sentence encoders as models like any other: pooled embeddings from token ids, and their
recovery by distillation from the dense encoder.

:class:`SentenceEmbedder` wraps an encoder (``BertModel`` / ``AutoModel``) into a module
from padded token ids ``[batch, tokens]`` to one embedding per row, computed as
sentence-transformers does (mean pooling over the attention mask, then L2 normalisation),
so :func:`prunekit.distill` can pull a pruned encoder's embeddings towards the dense
one's with ``objective="cosine"``. :func:`text_batches` turns texts into such batches
(grouped by length, so little padding); :func:`distill_encoder` runs the whole recovery:
unlabelled texts in, the student trained in place.

The pruned encoder keeps its hidden size (that is what makes its embeddings comparable with
the dense ones): prune depth, MLP width or heads, e.g. with
:func:`prunekit.llm.apply_shape`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import validate as V
from ..errors import PruneError, PruneTypeError

__all__ = ["POOLINGS", "SCHEDULES", "SentenceEmbedder", "distill_encoder", "text_batches"]

POOLINGS = ("mean", "cls")
SCHEDULES = ("cosine", "constant")


def _hidden(output: Any) -> torch.Tensor:
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None and isinstance(output, (tuple, list)):
        hidden = output[0]
    if not isinstance(hidden, torch.Tensor):
        raise PruneTypeError(f"the encoder must return last_hidden_state (BertModel, AutoModel); got {type(output).__name__}")
    return hidden


class SentenceEmbedder(nn.Module):
    """``encoder`` as a module from token ids to pooled sentence embeddings.

    Args:
        encoder: a ``transformers`` encoder returning ``last_hidden_state``.
        pad_id: the padding token id; positions holding it are masked out (attention and
            pooling). Default: ``encoder.config.pad_token_id``.
        pooling: ``"mean"`` (over the attention mask, sentence-transformers' default) or
            ``"cls"`` (the first token).
        normalize: L2-normalise each embedding.
    """

    def __init__(self, encoder: nn.Module, pad_id: int | None = None, *, pooling: str = "mean",
                 normalize: bool = True) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise PruneTypeError(f"encoder must be a transformers nn.Module; got {type(encoder).__name__}")
        if pad_id is None:
            pad_id = getattr(getattr(encoder, "config", None), "pad_token_id", None)
        if pad_id is None:
            raise PruneError(f"{type(encoder).__name__} has no config.pad_token_id; pass pad_id=")
        self.encoder = encoder
        self.pad_id = V.integer("pad_id", pad_id, minimum=0)
        self.pooling = V.choice("pooling", pooling, POOLINGS)
        self.normalize = V.boolean("normalize", normalize)
        self.train(encoder.training)  # the encoder's mode, not nn.Module's default (train)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids.ne(self.pad_id)
        hidden = _hidden(self.encoder(input_ids=input_ids, attention_mask=mask.long()))
        if self.pooling == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        else:
            emb = hidden[:, 0]
        return F.normalize(emb, p=2, dim=-1) if self.normalize else emb


def text_batches(tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32, max_length: int = 128,
                 seed: int = 0) -> list[torch.Tensor]:
    """Token-id batches of ``texts``, each padded to its longest text: texts are sorted by
    token count, cut into batches of ``batch_size`` and the batches shuffled (``seed``), so
    a batch holds texts of similar length. Truncation at ``max_length`` tokens, special
    tokens included."""
    if not callable(tokenizer):
        raise PruneTypeError(f"tokenizer must be a transformers tokenizer; got {type(tokenizer).__name__}")
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise PruneTypeError("texts must be a non-empty list of strings")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise PruneError(f"texts[{bad[0]}] is {texts[bad[0]]!r}; every text must be a non-empty string")
    batch_size = V.integer("batch_size", batch_size, minimum=1)
    max_length = V.integer("max_length", max_length, minimum=2)
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    pad = tokenizer.pad_token_id
    if pad is None:
        raise PruneError("the tokenizer has no pad token")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = []
    for s in range(0, len(order), batch_size):
        rows = [ids[i] for i in order[s:s + batch_size]]
        width = max(len(r) for r in rows)
        out.append(torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long))
    random.Random(seed).shuffle(out)
    return out


def distill_encoder(student: nn.Module, teacher: nn.Module, tokenizer: Any, texts: Sequence[str], *,
                    epochs: int = 1, lr: float = 6e-4, schedule: str = "cosine", batch_size: int = 32,
                    max_length: int = 128, layers: Mapping[int, int] | None = None, feature_weight: float = 1.0,
                    max_samples: int | None = None, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Train the pruned encoder ``student`` in place so that its sentence embeddings match
    the dense ``teacher``'s on ``texts`` (unlabelled): ``1 - cos`` of the pooled,
    normalised embeddings, plus, for each ``layers`` pair ``{student block: teacher block}``,
    the mean squared error of the two blocks' hidden states (weighted by ``feature_weight``).

    Adam at ``lr``; ``schedule="cosine"`` (default) warms up linearly over the first 5 % of
    the steps, then decays the rate along a cosine to 0 at the last step (``"constant"``:
    no schedule). ``student`` must keep the teacher's hidden size. Returns
    :func:`prunekit.distill`'s history (with ``"samples"`` when ``max_samples`` is given).
    """
    from ..callbacks import LRScheduler, warmup_cosine
    from ..distillation import distill
    from ..train import make_optimizer

    s_cfg, t_cfg = getattr(student, "config", None), getattr(teacher, "config", None)
    if getattr(s_cfg, "hidden_size", None) != getattr(t_cfg, "hidden_size", None):
        raise PruneError(f"the student's hidden size {getattr(s_cfg, 'hidden_size', None)} differs from the teacher's "
                         f"{getattr(t_cfg, 'hidden_size', None)}: their embeddings cannot be compared; keep the "
                         "hidden size (prune depth, MLP width or heads)")
    features = {}
    for s_i, t_i in dict(layers or {}).items():
        features[f"encoder.encoder.layer.{int(s_i)}"] = f"encoder.encoder.layer.{int(t_i)}"
    schedule = V.choice("schedule", schedule, SCHEDULES)
    lr = V.number("lr", lr, lo=0.0, lo_open=True)
    epochs = V.integer("epochs", epochs, minimum=1)
    batches = text_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length, seed=seed)
    steps = epochs * len(batches)
    if max_samples is not None:
        steps = min(steps, math.ceil(V.integer("max_samples", max_samples, minimum=1) / batch_size))
    optimizer = make_optimizer(student, "adam", lr, 0.0)
    callbacks = [LRScheduler(warmup_cosine(optimizer, steps, max(1, steps // 20)))] if schedule == "cosine" else []
    pad = tokenizer.pad_token_id
    return distill(SentenceEmbedder(student, pad), SentenceEmbedder(teacher, pad), batches, epochs=epochs,
                   optimizer=optimizer, objective="cosine", features=features or None, feature_weight=feature_weight,
                   max_samples=max_samples, seed=seed, progress=progress, callbacks=callbacks)
