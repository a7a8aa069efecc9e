"""How faithful a pruned sentence encoder is to its dense original.

A sentence encoder (a ``transformers`` ``BertModel`` such as all-MiniLM-L6-v2) maps a text
to one vector: :func:`sentence_embeddings` pools the last hidden states over the attention
mask (``"mean"``, as sentence-transformers does, or the ``"cls"`` token) and, by default,
L2-normalises them. Pruning is judged by how little the embeddings move, not by a loss:
:func:`embedding_fidelity` embeds the same texts with the dense and the pruned model and
reports

* the per-text cosine between the two embeddings (mean, median, 5th percentile, minimum);
* ``neighbour_agreement``: the fraction of texts whose nearest neighbour among the other
  texts is the same under both models (what a retrieval or deduplication user sees);
* ``similarity_spearman``: the Spearman rank correlation of the pairwise cosine
  similarities under both models (whether the geometry of the space is kept).

:func:`encoder_calibration` builds calibration token windows for
:func:`prunekit.llm.prune_llm` from a list of texts, the way an encoder sees them: each
text with its special tokens (``[CLS] ... [SEP]``), consecutive texts packed without
padding into windows of exactly ``seqlen`` tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import validate as V
from ..errors import PruneError, PruneTypeError

__all__ = ["FidelityReport", "POOLINGS", "compare_embeddings", "embedding_fidelity", "encoder_calibration", "sentence_embeddings"]

POOLINGS = ("mean", "cls")
# Two neighbours whose reference cosines differ by less than this count as tied.
_TIE_TOLERANCE = 1e-6
# Rows of the similarity matrix computed at once by the nearest-neighbour search.
_ROW_CHUNK = 1024


@dataclass
class FidelityReport:
    """How close a candidate encoder's embeddings are to a reference encoder's on the same texts.

    Attributes:
        mean_cosine: mean over texts of the cosine between the two embeddings of a text.
        median_cosine: median of those cosines.
        p05_cosine: their 5th percentile (linear interpolation): the bad tail.
        min_cosine: the worst text's cosine.
        neighbour_agreement: fraction of texts whose nearest neighbour (highest cosine among
            the other texts) under the candidate is a nearest neighbour under the reference
            (neighbours tied within 1e-6 under the reference all count, so duplicate texts
            do not make the measure arbitrary).
        similarity_spearman: Spearman rank correlation (average ranks for ties) between the
            reference's and the candidate's cosine similarities of text pairs; ``nan`` when
            either model gives all pairs the same similarity.
        n_texts: texts compared.
        n_pairs: text pairs the Spearman correlation was computed on (all pairs of the upper
            triangle, or a random sample of them when there are more than ``max_pairs``).
    """

    mean_cosine: float
    median_cosine: float
    p05_cosine: float
    min_cosine: float
    neighbour_agreement: float
    similarity_spearman: float
    n_texts: int
    n_pairs: int


# --------------------------------------------------------------------------- validation


def _check_texts(texts: object, minimum: int = 1) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise PruneTypeError(f"texts must be a list of strings; got {type(texts).__name__}")
    bad = [f"{i}: {type(t).__name__}" for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise PruneTypeError(f"texts must all be strings; not at index {', '.join(bad[:5])}")
    if len(texts) < minimum:
        raise PruneError(f"need at least {minimum} text{'s' if minimum > 1 else ''}; got {len(texts)}")
    return list(texts)


def _check_tokenizer(tokenizer: object) -> None:
    if not callable(tokenizer):
        raise PruneTypeError(f"tokenizer must be a transformers tokenizer (callable); got {type(tokenizer).__name__}")


def _check_vocab(model: nn.Module, tokenizer: Any) -> None:
    """The tokenizer must not produce ids beyond the model's embedding table."""
    try:
        rows = getattr(model.get_input_embeddings(), "num_embeddings", None)  # type: ignore[operator]
        size = len(tokenizer)
    except (AttributeError, NotImplementedError, TypeError):  # no embedding table or no vocabulary size to check
        return
    if isinstance(rows, int) and size > rows:
        raise PruneError(
            f"the tokenizer has {size} tokens but the model ({type(model).__name__}) embeds only {rows}; "
            "use the tokenizer that belongs to the model"
        )


# ------------------------------------------------------------------------------ embedding


def _last_hidden(output: Any) -> torch.Tensor:
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None and isinstance(output, (tuple, list)) and output:
        hidden = output[0]
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise PruneTypeError(
            f"the model returned {type(output).__name__} without last hidden states [batch, seqlen, dim]; "
            "give an encoder such as BertModel (AutoModel), not a model with a task head"
        )
    return hidden


@torch.no_grad()
def sentence_embeddings(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    normalize: bool = True,
    batch_size: int = 64,
    max_length: int = 128,
) -> torch.Tensor:
    """One embedding per text, pooled from an encoder's last hidden states.

    Texts are batched in order of decreasing length (less padding), padded to the longest
    of their batch and truncated to ``max_length`` tokens; the result is in the order of
    ``texts``. The model runs in eval mode without gradients; its training flag is restored.

    Args:
        model: an encoder returning ``last_hidden_state`` (``BertModel`` / ``AutoModel``).
        tokenizer: the model's tokenizer.
        texts: the texts (a list of strings, at least one).
        pooling: ``"mean"``: average of the token states over the attention mask, as
            sentence-transformers' mean pooling; ``"cls"``: the first token's state.
        normalize: L2-normalise each embedding (sentence-transformers' ``Normalize``).
        batch_size: texts per forward pass.
        max_length: tokens per text at most, special tokens included.

    Returns:
        A float32 CPU tensor ``[len(texts), hidden_size]``.
    """
    if not isinstance(model, nn.Module):
        raise PruneTypeError(f"model must be an nn.Module encoder; got {type(model).__name__}")
    _check_tokenizer(tokenizer)
    texts = _check_texts(texts)
    pooling = V.choice("pooling", pooling, POOLINGS)
    V.boolean("normalize", normalize)
    batch_size = V.integer("batch_size", batch_size, minimum=1)
    max_length = V.integer("max_length", max_length, minimum=1)
    _check_vocab(model, tokenizer)

    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: torch.Tensor | None = None
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            inputs = {k: enc[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            hidden = _last_hidden(model(**inputs)).float()
            if pooling == "mean":
                mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            else:
                emb = hidden[:, 0]
            if normalize:
                emb = F.normalize(emb, p=2, dim=1)
            if out is None:
                out = torch.empty(len(texts), emb.shape[1], dtype=torch.float32)
            out[torch.tensor(idx)] = emb.cpu()
    finally:
        model.train(was_training)
    assert out is not None
    return out


# ------------------------------------------------------------------------------- fidelity


def _rank(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties given their average rank (as scipy's rankdata)."""
    values, order = torch.sort(x)
    _, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    average = ends - (counts.to(torch.float64) - 1) / 2  # mean of the ranks start..end of each tie group
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = average[inverse]
    return ranks


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = _rank(a), _rank(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    if denom == 0.0:
        return float("nan")
    return float((ra * rb).sum()) / denom


def _pairs(n: int, max_pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs ``i < j``: all of them, or ``max_pairs`` drawn at random (with replacement)."""
    if n * (n - 1) // 2 <= max_pairs:
        ij = torch.triu_indices(n, n, offset=1)
        return ij[0], ij[1]
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (max_pairs,), generator=g)
    j = (i + torch.randint(1, n, (max_pairs,), generator=g)) % n  # uniform over the other n - 1 texts
    return torch.minimum(i, j), torch.maximum(i, j)


def _neighbour_agreement(ref: torch.Tensor, cand: torch.Tensor) -> float:
    """Fraction of rows whose candidate nearest neighbour is (within ties) a reference nearest neighbour."""
    n = ref.shape[0]
    agree = 0
    for r0 in range(0, n, _ROW_CHUNK):
        rows = torch.arange(r0, min(r0 + _ROW_CHUNK, n))
        s_ref = ref[rows] @ ref.T
        s_cand = cand[rows] @ cand.T
        s_ref[torch.arange(len(rows)), rows] = -math.inf
        s_cand[torch.arange(len(rows)), rows] = -math.inf
        pick = s_cand.argmax(1, keepdim=True)
        best = s_ref.max(1).values
        agree += int((s_ref.gather(1, pick).squeeze(1) >= best - _TIE_TOLERANCE).sum())
    return agree / n


def compare_embeddings(
    reference: torch.Tensor, candidate: torch.Tensor, *, max_pairs: int = 2_000_000, seed: int = 0
) -> FidelityReport:
    """Fidelity of ``candidate`` embeddings to ``reference`` embeddings of the same texts (row ``i`` = text ``i``).

    Args:
        reference, candidate: ``[n_texts, dim]`` embeddings, ``n_texts >= 3`` (normalised or
            not: cosines are computed either way).
        max_pairs: above this many text pairs, the Spearman correlation uses a random sample
            of ``max_pairs`` pairs.
        seed: fixes that sample.

    Returns:
        A :class:`FidelityReport`.
    """
    for label, e in (("reference", reference), ("candidate", candidate)):
        if not isinstance(e, torch.Tensor) or not e.is_floating_point() or e.dim() != 2:
            got = f"{e.dtype} tensor of shape {tuple(e.shape)}" if isinstance(e, torch.Tensor) else type(e).__name__
            raise PruneTypeError(f"{label} embeddings must be a float tensor [n_texts, dim]; got {got}")
    if reference.shape[0] != candidate.shape[0]:
        raise PruneError(
            f"reference embeddings cover {reference.shape[0]} texts, candidate embeddings {candidate.shape[0]}; "
            "embed the same texts with both"
        )
    if reference.shape[1] != candidate.shape[1]:
        raise PruneError(
            f"reference embeddings have dimension {reference.shape[1]}, candidate embeddings {candidate.shape[1]}; "
            "the two models must be the same architecture (a dense model and its pruned copy)"
        )
    n = reference.shape[0]
    if n < 3:
        raise PruneError(f"fidelity needs at least 3 texts (nearest neighbours and pair rankings); got {n}")
    max_pairs = V.integer("max_pairs", max_pairs, minimum=1)
    seed = V.integer("seed", seed)

    ref = F.normalize(reference.detach().to("cpu", torch.float32), p=2, dim=1)
    cand = F.normalize(candidate.detach().to("cpu", torch.float32), p=2, dim=1)
    cos = (ref * cand).sum(1).clamp(-1.0, 1.0).to(torch.float64)
    i, j = _pairs(n, max_pairs, seed)
    sim_ref = (ref[i] * ref[j]).sum(1)
    sim_cand = (cand[i] * cand[j]).sum(1)
    return FidelityReport(
        mean_cosine=float(cos.mean()),
        median_cosine=float(torch.quantile(cos, 0.5)),
        p05_cosine=float(torch.quantile(cos, 0.05)),
        min_cosine=float(cos.min()),
        neighbour_agreement=_neighbour_agreement(ref, cand),
        similarity_spearman=_spearman(sim_ref, sim_cand),
        n_texts=n,
        n_pairs=int(i.numel()),
    )


def embedding_fidelity(
    reference: nn.Module | torch.Tensor,
    candidate: nn.Module | torch.Tensor,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    normalize: bool = True,
    batch_size: int = 64,
    max_length: int = 128,
    max_pairs: int = 2_000_000,
    seed: int = 0,
) -> FidelityReport:
    """Embed ``texts`` with two encoders and measure how close the candidate stays to the reference.

    Args:
        reference: the dense encoder, or its precomputed embeddings of ``texts``
            (``[len(texts), dim]``, from :func:`sentence_embeddings` with the same options),
            so that several candidates can be compared without re-embedding.
        candidate: the pruned encoder (or precomputed embeddings).
        tokenizer: the tokenizer of both models.
        texts: at least 3 texts.
        pooling, normalize, batch_size, max_length: as in :func:`sentence_embeddings`.
        max_pairs, seed: as in :func:`compare_embeddings`.

    Returns:
        A :class:`FidelityReport`.
    """
    texts = _check_texts(texts, minimum=3)
    embedded: list[torch.Tensor] = []
    for label, obj in (("reference", reference), ("candidate", candidate)):
        if isinstance(obj, torch.Tensor):
            if obj.dim() != 2 or obj.shape[0] != len(texts):
                raise PruneError(
                    f"precomputed {label} embeddings have shape {tuple(obj.shape)}; expected [{len(texts)}, dim], "
                    "one row per text"
                )
            embedded.append(obj)
        elif isinstance(obj, nn.Module):
            embedded.append(
                sentence_embeddings(
                    obj, tokenizer, texts, pooling=pooling, normalize=normalize, batch_size=batch_size, max_length=max_length
                )
            )
        else:
            raise PruneTypeError(f"{label} must be an encoder (nn.Module) or its embeddings (tensor); got {type(obj).__name__}")
    return compare_embeddings(embedded[0], embedded[1], max_pairs=max_pairs, seed=seed)


# ---------------------------------------------------------------------------- calibration


def encoder_calibration(tokenizer: Any, texts: Sequence[str], *, n: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """Calibration windows for an encoder: consecutive texts packed into ``seqlen`` tokens.

    Each window starts at a text drawn at random (fixed by ``seed``) and holds that text and
    the following ones, each tokenized with the tokenizer's special tokens
    (``[CLS] text [SEP]``), concatenated without padding and cut at exactly ``seqlen``
    tokens (the last text of a window is usually cut). Past the last text it continues with
    the first. Windows may overlap.

    Args:
        tokenizer: the encoder's tokenizer.
        texts: the calibration texts, in their natural order (e.g. verses of a book).
        n: number of windows.
        seqlen: tokens per window; at most the tokenizer's ``model_max_length``.
        seed: fixes the start texts.

    Returns:
        A LongTensor ``[n, seqlen]`` for :func:`prunekit.llm.prune_llm`.
    """
    _check_tokenizer(tokenizer)
    texts = _check_texts(texts)
    n = V.integer("n", n, minimum=1)
    seqlen = V.integer("seqlen", seqlen, minimum=1)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and seqlen > limit:
        raise PruneError(f"seqlen {seqlen!r} exceeds the tokenizer's model_max_length {limit}")
    seed = V.integer("seed", seed)

    cache: dict[int, list[int]] = {}

    def ids(i: int) -> list[int]:
        if i not in cache:
            cache[i] = list(tokenizer(texts[i], add_special_tokens=True, truncation=False)["input_ids"])
        return cache[i]

    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(texts), (n,), generator=g).tolist()
    windows = []
    for start in starts:
        window: list[int] = []
        for step in range(len(texts)):
            window.extend(ids((start + step) % len(texts)))
            if len(window) >= seqlen:
                break
        if len(window) < seqlen:
            raise PruneError(f"the {len(texts)} texts hold {len(window)} tokens in all, fewer than seqlen={seqlen}")
        windows.append(window[:seqlen])
    return torch.tensor(windows, dtype=torch.long)
