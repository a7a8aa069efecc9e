"""Shrink a sentence encoder to a budget and recover its embeddings by distillation.

:func:`shrink_encoder` is :func:`prunekit.llm.shrink` for BERT-style encoders whose output
is a sentence embedding: the hidden size is kept (so the pruned model's embeddings stay
comparable with, and replaceable by, the dense model's), and blocks and MLP neurons are
removed to meet a parameter or MAC budget. Candidates of each mode (``"depth"``: blocks
only; ``"width"``: MLP neurons only; ``"mixed"``: half the depth-only removal, then MLP)
are built from one importance measurement, each distilled briefly
(:func:`prunekit.llm.distill_encoder`) and compared by their mean cosine to the dense
embeddings of held-out texts; the best is distilled on all the texts. The input model is
never changed; the result is a stock ``transformers`` model.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .. import validate as V
from ..errors import PruneError, PruneTypeError
from .blocks import transformer_blocks
from .budget import MODES, budget_shapes, full_shape, macs, parse_count
from .config_update import architecture
from .embedder import distill_encoder
from .evaluate import encoder_calibration, sentence_embeddings
from .shrink import ShrinkReport, apply_shape, biases, count_parameters, score
from .structured_layout import resolve_blocks

__all__ = ["shrink_encoder"]


def _mean_cosine(reference: torch.Tensor, model: nn.Module, tokenizer: Any, texts: list[str], max_length: int) -> float:
    got = sentence_embeddings(model, tokenizer, texts, max_length=max_length)
    return float(torch.nn.functional.cosine_similarity(got, reference, dim=-1).mean())


def shrink_encoder(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, params: Any = None,
                   macs_budget: Any = None, heldout: Sequence[str] | None = None, modes: tuple[str, ...] = MODES,
                   epochs: int = 1, search_samples: Any = None, lr: float = 6e-4, batch_size: int = 32,
                   max_length: int = 128, features: bool = True, calibration_windows: int = 64, seqlen: int = 128,
                   seed: int = 0, progress: bool = False) -> tuple[nn.Module, ShrinkReport]:
    """Prune a copy of the encoder ``model`` to a budget, keeping its hidden size, and distil it.

    Args:
        model: a BERT-style encoder (``BertModel``); left unchanged (it is the teacher).
        tokenizer: its tokenizer.
        texts: unlabelled texts: the importance is measured on them (``calibration_windows``
            packed windows of ``seqlen`` tokens) and the chosen shape distilled on them.
        params, macs_budget: the budget (exactly one): a count or a string such as ``"15M"``;
            MACs are those of one forward pass over ``seqlen`` tokens.
        heldout: texts (not in ``texts``) whose mean cosine to the dense embeddings picks the
            candidate; needed when more than one mode is tried.
        modes: candidate kinds, from ``("width", "depth", "mixed")``; width narrows the MLP only.
        epochs: passes over ``texts`` for the chosen shape.
        search_samples: texts each candidate is distilled on before the choice (default:
            ``len(texts) // 4``; 0 compares them as pruned).
        lr, batch_size, max_length: of the distillation (see :func:`distill_encoder`).
        features: also pull each kept block's hidden state towards the dense model's block
            it came from.

    Returns:
        ``(pruned encoder, ShrinkReport)``; the report's ``chosen`` and ``candidates`` hold
        ``heldout_cosine`` (after the search distillation) and ``heldout_cosine_pruned``.
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise PruneTypeError(f"model must be a transformers encoder; got {type(model).__name__}")
    layout, _ = resolve_blocks(model, transformer_blocks(model))
    if layout.family != "bert":
        raise PruneTypeError(f"shrink_encoder takes BERT-style encoders; got {type(model).__name__} "
                             f"(use prunekit.llm.shrink for causal LMs)")
    if (params is None) == (macs_budget is None):
        raise PruneError("give exactly one budget: params= (e.g. '15M') or macs_budget=")
    modes = tuple(V.choice("modes", m, MODES) for m in (modes if isinstance(modes, (tuple, list)) else (modes,)))
    if not modes:
        raise PruneError(f"modes is empty; give one or more of {', '.join(MODES)}")
    texts = list(texts) if not isinstance(texts, str) else texts
    if isinstance(texts, str) or not texts:
        raise PruneTypeError("texts must be a non-empty list of strings")
    epochs = V.integer("epochs", epochs, minimum=1)
    seqlen = V.integer("seqlen", seqlen, minimum=2)
    lr = V.number("lr", lr, lo=0.0, lo_open=True)
    batch_size = V.integer("batch_size", batch_size, minimum=1)
    max_length = V.integer("max_length", max_length, minimum=2)
    calibration_windows = V.integer("calibration_windows", calibration_windows, minimum=1)
    V.boolean("features", features)
    arch = architecture(model, "bert")
    b = biases(model, arch)
    target, unit, shapes = budget_shapes(arch, b, params=params, macs_budget=macs_budget, seqlen=seqlen, modes=modes,
                                         keep_hidden=True)
    if len(shapes) > 1 and heldout is None:
        raise PruneError(f"{len(shapes)} candidates ({', '.join(s.mode for s in shapes)}) need heldout= texts to "
                         "choose between; pass held-out texts or a single mode")
    search = len(texts) // 4 if search_samples is None else (
        0 if search_samples in (0, "0") else parse_count("search_samples", search_samples))
    calib = encoder_calibration(tokenizer, texts, n=calibration_windows, seqlen=seqlen, seed=seed)
    imp = score(model, calib)
    report = ShrinkReport(budget={unit: target}, calibration_tokens=imp.tokens,
                          dense={"shape": full_shape(arch).as_dict(), "params": count_parameters(model),
                                 "macs": macs(arch, full_shape(arch), b, seqlen)})
    held = list(heldout) if heldout is not None else None
    reference = sentence_embeddings(model, tokenizer, held, max_length=max_length) if held else None
    kwargs = dict(lr=lr, batch_size=batch_size, max_length=max_length, seed=seed, progress=progress)
    best: tuple[float, nn.Module, dict[str, Any], dict[int, int] | None] | None = None
    spent = 0
    for shape in shapes:
        student = copy.deepcopy(model)
        kept = apply_shape(student, shape, imp)
        layers = {i: k for i, k in enumerate(kept)} if features else None
        row: dict[str, Any] = {"shape": shape.as_dict(), "kept_blocks": kept, "params": count_parameters(student),
                               "macs": macs(arch, shape, b, seqlen)}
        if reference is not None:
            row["heldout_cosine_pruned"] = _mean_cosine(reference, student, tokenizer, held, max_length)
        if search and len(shapes) > 1:
            hist = distill_encoder(student, model, tokenizer, texts, epochs=1, layers=layers, max_samples=search, **kwargs)
            spent += hist["samples"]
            row["search_samples"] = hist["samples"]
            if reference is not None:
                row["heldout_cosine"] = _mean_cosine(reference, student, tokenizer, held, max_length)
        elif reference is not None:  # nothing trained since: the same embeddings
            row["heldout_cosine"] = row["heldout_cosine_pruned"]
        report.candidates.append(row)
        value = row.get("heldout_cosine", 0.0)
        if best is None or value > best[0]:
            best = (value, student, row, layers)
        else:
            del student
    assert best is not None
    _, student, row, layers = best
    distill_encoder(student, model, tokenizer, texts, epochs=epochs, layers=layers, **kwargs)
    spent += epochs * len(texts)  # no budget: every text once per epoch
    report.chosen = dict(row)
    if reference is not None:
        report.chosen["heldout_cosine"] = _mean_cosine(reference, student, tokenizer, held, max_length)
    report.chosen["params"] = count_parameters(student)
    report.distill_tokens, report.distill_samples = None, spent
    report.seconds = time.perf_counter() - start
    return student, report
