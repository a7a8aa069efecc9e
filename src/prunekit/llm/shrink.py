"""Shrink a ``transformers`` model to a budget: width and depth pruning, then distillation.

:func:`apply_shape` prunes a model, in place, to one :class:`~prunekit.llm.budget.Shape`
(blocks removed by influence, then hidden size, heads and MLP narrowed by importance; see
:mod:`~prunekit.llm.depth`, :mod:`~prunekit.llm.width`, :mod:`~prunekit.llm.importance`).
The result is a stock ``transformers`` model: ``save_pretrained`` → ``from_pretrained``
rebuilds it without prunekit.

:func:`shrink` meets a budget (``params="100M"``, ``macs_budget=`` or a measured ``latency=``) Minitron-style: it scores
the dense model once, builds a few candidates (width-only, depth-only, mixed), distils each
from the dense model for ``search_tokens`` tokens, keeps the one with the lowest held-out
loss and distils it for the rest of ``distill_tokens``. The input model is never changed
(it is the teacher); a new model is returned.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import validate as V
from ..errors import PruneError, PruneTypeError
from .blocks import check_tokens, transformer_blocks
from .budget import MODES, Biases, Shape, budget_shapes, full_shape, macs, parse_count
from .config_update import Architecture, architecture
from .depth import blocks_to_keep, remove_blocks
from .embedder import SCHEDULES
from .importance import Importance, activation_importance, skip_loss_importance, taylor_importance
from .latency_budget import latency_candidates, prefill_seconds
from .structured_layout import check_unmasked, resolve_blocks
from .width import narrow

__all__ = ["IMPORTANCE", "DEPTH_CRITERIA", "ShrinkReport", "apply_shape", "biases", "heldout_loss", "score", "shrink"]

IMPORTANCE = ("activation", "taylor")
DEPTH_CRITERIA = ("influence", "perplexity")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def biases(model: nn.Module, arch: Architecture) -> Biases:
    """Which linears carry biases, read from the first block."""
    _, blocks = resolve_blocks(model, transformer_blocks(model))
    b = blocks[0]
    base = getattr(model, "base_model", model)
    extra = 0
    if arch.family == "bert":
        e = base.embeddings
        extra = e.position_embeddings.num_embeddings + e.token_type_embeddings.num_embeddings
    return Biases(qkv=b.q.bias is not None, o=b.o.bias is not None, mlp=b.mlp_out.bias is not None,
                  extra_embeddings=extra, pooler=getattr(base, "pooler", None) is not None,
                  lm_head=model.get_output_embeddings() is not None if hasattr(model, "get_output_embeddings") else False,
                  gated=len(b.mlp_in) == 2)


def _resolve(model: nn.Module) -> tuple[Architecture, list[Any]]:
    if not isinstance(model, nn.Module):
        raise PruneTypeError(f"model must be a transformers nn.Module; got {type(model).__name__}")
    layout, blocks = resolve_blocks(model, transformer_blocks(model))
    check_unmasked(blocks)
    return architecture(model, layout.family), blocks


def score(model: nn.Module, calibration: torch.Tensor, *, importance: str = "activation",
          depth_criterion: str = "influence", batch_size: int = 8) -> Importance:
    """Score every hidden channel, head, MLP neuron and block of ``model`` on ``calibration``."""
    importance = V.choice("importance", importance, IMPORTANCE)
    depth_criterion = V.choice("depth_criterion", depth_criterion, DEPTH_CRITERIA)
    arch, blocks = _resolve(model)
    ids = check_tokens("calibration", calibration)
    if int(ids.min()) < 0 or int(ids.max()) >= arch.vocab:
        raise PruneError(f"calibration holds token ids from {int(ids.min())} to {int(ids.max())}; "
                         f"the vocabulary is 0..{arch.vocab - 1}")
    fn = activation_importance if importance == "activation" else taylor_importance
    imp = fn(model, blocks, arch.family, ids, batch_size)
    if depth_criterion == "perplexity":
        imp.influence = skip_loss_importance(model, blocks, arch.family, ids, batch_size)
    return imp


def apply_shape(model: nn.Module, shape: Shape, imp: Importance) -> list[int]:
    """Prune ``model`` in place to ``shape`` with the scores ``imp`` (from :func:`score` on this
    model). Returns the original indices of the blocks kept."""
    arch, _ = _resolve(model)
    for name in ("hidden", "heads", "kv_heads", "intermediate", "layers"):
        v, full = getattr(shape, name), getattr(full_shape(arch), name)
        if not 1 <= v <= full:
            raise PruneError(f"shape {name}={v} must be between 1 and the model's {full}")
    if shape.hidden % shape.heads:
        raise PruneError(f"shape hidden={shape.hidden} is not a multiple of heads={shape.heads}; the config refuses it")
    group = arch.heads // arch.kv_heads
    if shape.kv_heads < arch.kv_heads and shape.heads != shape.kv_heads * group:
        raise PruneError(f"removing KV groups keeps {group} query heads per group: heads must be "
                         f"{shape.kv_heads * group} for kv_heads={shape.kv_heads}")
    if shape.kv_heads == arch.kv_heads and shape.heads % arch.kv_heads:
        raise PruneError(f"heads={shape.heads} must be a multiple of the {arch.kv_heads} KV heads")
    if arch.family == "bert" and (shape.heads, shape.kv_heads) != (arch.heads, arch.kv_heads):
        raise PruneError(f"a BERT encoder keeps its {arch.heads} heads here; narrow hidden, intermediate or layers")
    if len(imp.influence) != arch.layers or imp.hidden.numel() != arch.hidden:
        raise PruneError("the importance was measured on another model; call score() on this one")
    kept = blocks_to_keep(imp.influence, shape.layers)
    remove_blocks(model, kept)
    _, blocks = resolve_blocks(model, transformer_blocks(model))
    narrow(model, blocks, arch, imp, kept, hidden=shape.hidden, heads=shape.heads, kv_heads=shape.kv_heads,
           intermediate=shape.intermediate)
    return kept


@torch.no_grad()
def heldout_loss(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross entropy of a causal LM on ``ids`` ``[n, seqlen]``."""
    was = model.training
    model.eval()
    try:
        total, n = 0.0, 0
        for s in range(0, ids.shape[0], batch_size):
            chunk = ids[s:s + batch_size]
            total += float(model(input_ids=chunk, labels=chunk, use_cache=False).loss) * chunk.shape[0]
            n += chunk.shape[0]
        return total / max(1, n)
    finally:
        model.train(was)


@dataclass
class ShrinkReport:
    """What :func:`shrink` chose and measured."""

    budget: dict[str, int]
    dense: dict[str, Any]
    chosen: dict[str, Any] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    importance: str = "activation"
    depth_criterion: str = "influence"
    calibration_tokens: int = 0
    distill_tokens: int | None = 0  # causal LMs; None for encoders, which count texts
    distill_samples: int | None = None  # encoders (shrink_encoder): texts distilled on
    latency_trials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _distill(student: nn.Module, teacher: nn.Module, ids: torch.Tensor, tokens: int, lr: float, batch_size: int,
             seed: int, progress: bool, temperature: float, schedule: str) -> int:
    """Logit KL at ``temperature`` for ``tokens`` tokens; Adam at ``lr``, with a 5 % warm-up
    then a cosine to 0 over exactly those tokens for ``schedule="cosine"``."""
    if tokens <= 0:
        return 0
    from ..callbacks import LRScheduler, warmup_cosine
    from ..distillation import distill
    from ..train import make_optimizer

    epochs = max(1, math.ceil(tokens / ids.numel()))
    optimizer = make_optimizer(student, "adam", lr, 0.0)
    callbacks = []
    if schedule == "cosine":
        steps = max(1, math.ceil(tokens / (batch_size * ids.shape[1])))
        callbacks.append(LRScheduler(warmup_cosine(optimizer, steps, max(1, steps // 20))))
    hist = distill(student, teacher, ids, epochs=epochs, optimizer=optimizer, callbacks=callbacks,
                   temperature=temperature, batch_size=batch_size, max_tokens=tokens, seed=seed, progress=progress)
    return int(hist.get("tokens", 0))


def shrink(model: nn.Module, calibration: torch.Tensor, *, params: Any = None, macs_budget: Any = None,
           latency: float | None = None, seqlen: int = 256, modes: tuple[str, ...] = MODES, importance: str = "activation",
           depth_criterion: str = "influence", train: torch.Tensor | None = None,
           heldout: torch.Tensor | None = None, distill_tokens: Any = 0, search_tokens: Any = None,
           lr: float = 3e-4, temperature: float = 1.0, schedule: str = "cosine", batch_size: int = 8, seed: int = 0,
           progress: bool = False) -> tuple[nn.Module, ShrinkReport]:
    """Prune a copy of ``model`` to a parameter (``params``) or MAC (``macs_budget``) budget.

    Args:
        model: a Llama-family causal LM (Llama, Mistral, Qwen2, SmolLM); left unchanged.
        calibration: token ids ``[n, seqlen]`` the importance is measured on.
        params, macs_budget: the budget (exactly one): a count, or a string such as ``"100M"``.
            MACs are those of one forward pass over ``seqlen`` tokens.
        latency: or a measured budget: seconds of one forward pass over ``seqlen`` tokens on
            this machine (see :mod:`~prunekit.llm.latency_budget`).
        modes: the candidate kinds to try, from ``("width", "depth", "mixed")``.
        importance: ``"activation"`` (Minitron) or ``"taylor"``; depth_criterion:
            ``"influence"`` (ShortGPT) or ``"perplexity"``.
        train: token ids to distil on (default: ``calibration``); heldout: token ids whose
            loss picks the candidate (needed when there is more than one).
        distill_tokens: total distillation budget in tokens (``"2M"`` accepted); 0 = none.
        search_tokens: of it, tokens spent on each candidate before the choice (default:
            a tenth of ``distill_tokens`` divided among the candidates); the chosen one is
            distilled for what the search left, so ``distill_tokens`` is the total spent.
        lr, temperature, schedule: distillation: Adam's learning rate (3e-4), the logit KL's
            temperature (1) and ``"cosine"`` (5 % warm-up, then a cosine to 0 over each
            distillation's tokens; the default) or ``"constant"``. Measured on SmolLM2-135M
            cut by 25 % (32k tokens, ``benchmarks/llm_shrink.py``), these beat 1e-4 constant at
            temperature 2 on the calibration text and on an unseen validation text.

    Returns:
        ``(pruned model, ShrinkReport)``.
    """
    start = time.perf_counter()
    if sum(x is not None for x in (params, macs_budget, latency)) != 1:
        raise PruneError("give exactly one budget: params= (e.g. '100M'), macs_budget= or latency= (seconds)")
    if latency is not None:
        latency = V.number("latency", latency, lo=0.0, lo_open=True, hint="seconds of one forward pass over seqlen tokens")
    modes = tuple(V.choice("modes", m, MODES) for m in (modes if isinstance(modes, (tuple, list)) else (modes,)))
    if not modes:
        raise PruneError(f"modes is empty; give one or more of {', '.join(MODES)}")
    seqlen = V.integer("seqlen", seqlen, minimum=1)
    lr = V.number("lr", lr, lo=0.0, lo_open=True)
    temperature = V.number("temperature", temperature, lo=0.0, lo_open=True, hint="e.g. 1")
    schedule = V.choice("schedule", schedule, SCHEDULES)
    batch_size = V.integer("batch_size", batch_size, minimum=1)
    distill_tokens = parse_count("distill_tokens", distill_tokens) if distill_tokens not in (0, "0", None) else 0
    arch, _ = _resolve(model)
    if arch.family != "llama" or not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        raise PruneTypeError(f"shrink needs a causal LM with an LM head (LlamaForCausalLM, Qwen2ForCausalLM, ...); "
                             f"got {type(model).__name__}; use prunekit.llm.apply_shape for encoders")
    b = biases(model, arch)
    measured: dict[str, Any] | None = None
    if latency is not None:
        imp = score(model, calibration, importance=importance, depth_criterion=depth_criterion, batch_size=batch_size)
        target, unit = latency, "latency_s"
        shapes, measured = latency_candidates(model, arch, b, latency, modes, lambda m, s: apply_shape(m, s, imp),
                                              seqlen=seqlen)
    else:
        target, unit, shapes = budget_shapes(arch, b, params=params, macs_budget=macs_budget, seqlen=seqlen, modes=modes)
    train = check_tokens("train", train, model) if train is not None else check_tokens("calibration", calibration, model)
    if len(shapes) > 1 and heldout is None:
        raise PruneError(f"{len(shapes)} candidates ({', '.join(s.mode for s in shapes)}) need heldout= token ids "
                         "to choose between; pass held-out text or a single mode")
    heldout = check_tokens("heldout", heldout, model) if heldout is not None else None
    if search_tokens is None:
        search = distill_tokens // (10 * len(shapes)) if len(shapes) > 1 else 0
    else:
        search = parse_count("search_tokens", search_tokens) if search_tokens not in (0, "0") else 0
    if search * len(shapes) > distill_tokens:
        raise PruneError(f"search_tokens={search_tokens!r} for each of {len(shapes)} candidates is {search * len(shapes):,} "
                         f"tokens, more than distill_tokens={distill_tokens:,}, which they are part of; raise "
                         "distill_tokens or lower search_tokens")
    if latency is None:
        imp = score(model, calibration, importance=importance, depth_criterion=depth_criterion, batch_size=batch_size)
    full = full_shape(arch)
    report = ShrinkReport(budget={unit: target}, importance=importance, depth_criterion=depth_criterion,
                          calibration_tokens=imp.tokens,
                          dense={"shape": full.as_dict(), "params": count_parameters(model),
                                 "macs": macs(arch, full, b, seqlen)})
    if measured is not None:
        report.dense["latency_s"] = measured["dense_s"]
        report.latency_trials = measured["measured"]
    if heldout is not None:
        report.dense["heldout_loss"] = heldout_loss(model, heldout, batch_size)
    teacher = model
    best: tuple[float, nn.Module, dict[str, Any]] | None = None
    spent = 0
    for shape in shapes:
        student = copy.deepcopy(model)
        kept = apply_shape(student, shape, imp)
        row = {"shape": shape.as_dict(), "kept_blocks": kept, "params": count_parameters(student),
               "macs": macs(arch, shape, b, seqlen)}
        if measured is not None:
            row["latency_s"] = prefill_seconds(student, seqlen)
        if heldout is not None:
            row["heldout_loss_pruned"] = heldout_loss(student, heldout, batch_size)
        if search:
            spent += _distill(student, teacher, train, search, lr, batch_size, seed, progress, temperature, schedule)
            row["search_tokens"] = search
        if heldout is not None:
            row["heldout_loss"] = heldout_loss(student, heldout, batch_size)
        report.candidates.append(row)
        loss = row.get("heldout_loss", 0.0)
        if best is None or loss < best[0]:
            best = (loss, student, row)
        else:
            del student
    assert best is not None
    _, student, row = best
    rest = max(0, distill_tokens - spent)  # the search, every candidate's, came out of the budget
    spent += _distill(student, teacher, train, rest, lr, batch_size, seed, progress, temperature, schedule)
    report.chosen = dict(row)
    if heldout is not None and rest:
        report.chosen["heldout_loss"] = heldout_loss(student, heldout, batch_size)
    report.chosen["params"] = count_parameters(student)
    report.distill_tokens = spent
    report.seconds = time.perf_counter() - start
    return student, report
