"""Structured removal of attention heads and MLP neurons from ``transformers`` models.

:func:`prune_structured` physically shrinks every block of a Llama-family causal LM
(Llama, Mistral, Qwen2, SmolLM: ``self_attn.q_proj/k_proj/v_proj/o_proj`` and
``mlp.gate_proj/up_proj/down_proj``) or the MLPs of a BERT-style encoder: the weights of
the removed units are sliced out, the modules' head counts and the model config are
updated, and the result runs, generates, and survives ``save_pretrained`` /
``from_pretrained`` with identical outputs.

Units and what removing one removes:

* a **query head** ``h`` (``gqa="queries"``): rows ``h*d .. (h+1)*d`` of ``q_proj`` (and its
  bias) and the same columns of ``o_proj``; the same number goes from every KV group, so the
  key/value heads stay;
* a **KV group** ``g`` (``gqa="groups"``): the key and value head ``g`` (rows of ``k_proj``
  and ``v_proj``) and the query heads that read it, with their ``q_proj`` rows and
  ``o_proj`` columns;
* an **MLP neuron** ``j``: row ``j`` of ``gate_proj`` and ``up_proj`` (``intermediate.dense``
  for BERT) and column ``j`` of ``down_proj`` (``output.dense``).

Scores, per block:

* ``"magnitude"``: the L2 norm of everything the unit removes (weights and biases);
* ``"wanda"``: ``sum_i |W[i, j]| * ||X_j||_2`` over the input columns ``j`` of the consuming
  layer that belong to the unit (``o_proj`` for heads, ``down_proj`` for neurons), ``X_j``
  being that input feature over all calibration tokens. Blocks are processed in order, as
  :func:`prunekit.llm.prune_llm` does: each block's statistics are taken on the outputs of
  the already pruned blocks before it.

The stock configs hold one ``num_attention_heads``, ``num_key_value_heads`` and
``intermediate_size`` for all layers, so every block loses the same number of units.

This module holds the call; the work is in :mod:`~prunekit.llm.structured_layout` (the
blocks, their sizes, the units a fraction removes), :mod:`~prunekit.llm.structured_scores`,
:mod:`~prunekit.llm.structured_surgery` (slicing, head counts, configs) and
:mod:`~prunekit.llm.structured_report`.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .. import validate as V
from ..errors import PruneError, PruneTypeError
from .blocks import block_output, capture_inputs, check_tokens, transformer_blocks
from .scope import block_coverage
from .structured_layout import check_unmasked, geometry, model_config, plan_heads, plan_neurons, resolve_blocks
from .structured_report import StructuredLayerReport, StructuredReport
from .structured_scores import InputNorms, head_scores, kept_heads, neuron_scores, top_indices
from .structured_surgery import remove_heads, remove_neurons, update_configs

__all__ = ["CRITERIA", "GQA_MODES", "StructuredLayerReport", "StructuredReport", "prune_structured"]

CRITERIA = ("magnitude", "wanda")
GQA_MODES = ("groups", "queries")


def _parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# --------------------------------------------------------------------------------- API


@torch.no_grad()
def prune_structured(
    model: nn.Module,
    calibration: torch.Tensor | None = None,
    *,
    heads: float = 0.0,
    neurons: float = 0.0,
    criterion: str = "wanda",
    gqa: str = "groups",
    batch_size: int = 8,
) -> StructuredReport:
    """Remove attention heads and MLP neurons from every block, physically and in place.

    Args:
        model: a ``transformers`` Llama-family model (``LlamaForCausalLM``, Mistral, Qwen2,
            SmolLM, or their base models), or a BERT-style encoder (``BertModel``; neurons
            only). Its linears are shrunk in place, the attention modules' head counts and the
            config (``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``,
            and ``head_dim`` set to the unchanged head size) are updated.
        calibration: token ids ``[n, seqlen]`` (a 1-D tensor is one sequence), needed by
            ``criterion="wanda"``; ignored by ``"magnitude"``.
        heads: fraction of each block's query heads to remove, in ``[0, 1)``, rounded down to
            whole units (see ``gqa``) and to head counts the config class accepts
            (``LlamaConfig`` needs ``hidden_size`` to be a multiple of ``num_attention_heads``).
        neurons: fraction of each block's MLP intermediate neurons to remove, in ``[0, 1)``.
        criterion: ``"wanda"`` (activation-weighted, needs ``calibration``) or ``"magnitude"``.
        gqa: ``"groups"`` removes whole KV groups (a key/value head and the query heads
            sharing it); ``"queries"`` removes the same number of query heads from every KV
            group and keeps all key/value heads. Without grouped-query attention a group is
            one head, so only ``"groups"`` can remove heads.
        batch_size: calibration sequences per forward pass.

    Returns:
        A :class:`StructuredReport`.

    Raises:
        PruneTypeError: ``model`` is not a supported ``transformers`` model, or an argument has
            the wrong type.
        PruneError: a bad value: a fraction outside ``[0, 1)``, one that removes no unit or
            that the config rejects, ``"wanda"`` without calibration, masked (parametrized)
            linears. Everything is checked before the model is touched: on error it is
            unchanged.
    """
    start = time.perf_counter()
    heads = V.fraction("heads", heads, hint="the fraction of units to remove per block")
    neurons = V.fraction("neurons", neurons, hint="the fraction of units to remove per block")
    criterion = V.choice("criterion", criterion, CRITERIA)
    gqa = V.choice("gqa", gqa, GQA_MODES)
    batch_size = V.integer("batch_size", batch_size, minimum=1)
    if heads == 0 and neurons == 0:
        raise PruneError("heads=0 and neurons=0 remove nothing; give heads= and/or neurons= a fraction in (0, 1)")
    if not isinstance(model, nn.Module):
        raise PruneTypeError(f"model must be a transformers nn.Module; got {type(model).__name__}")
    try:
        layers = transformer_blocks(model)
    except PruneTypeError as e:
        raise PruneTypeError(
            f"{type(model).__name__} has no stack of transformer blocks (model.layers, encoder.layer, ...); "
            "prune_structured expects a transformers model such as LlamaForCausalLM or BertModel"
        ) from e
    layout, blocks = resolve_blocks(model, layers)
    config = model_config(model)
    check_unmasked(blocks)
    geom = geometry(config, blocks)
    head_units = plan_heads(heads, gqa, geom, config, layout, model)
    neuron_units = plan_neurons(neurons, geom, config)
    if criterion == "wanda":
        if calibration is None:
            raise PruneError("criterion='wanda' needs calibration token ids [n, seqlen]; use criterion='magnitude' without data")
        ids: torch.Tensor | None = check_tokens("calibration", calibration, model)
    else:
        ids = None

    removed_heads = head_units * (geom.group if gqa == "groups" else geom.kv_heads)
    report = StructuredReport(
        criterion=criterion, gqa=gqa, heads_requested=heads, neurons_requested=neurons,
        heads_removed=removed_heads / geom.heads, neurons_removed=neuron_units / geom.neurons,
        parameters_before=_parameter_count(model), parameters_after=0,
        calibration_tokens=int(ids.numel()) if ids is not None else 0,
    )
    was_training = model.training
    model.eval()
    try:
        # Runs the embeddings only; an error here (say, a token id past the vocabulary) leaves the model as it was.
        chunks, inputs = capture_inputs(model, layers, ids, batch_size) if ids is not None else ([], None)
        for li, b in enumerate(blocks):
            t0 = time.perf_counter()
            if inputs is not None:
                inputs.apply(chunks, li)
            o_stats = InputNorms(b.o) if ids is not None and head_units else None
            down_stats = InputNorms(b.mlp_out) if ids is not None and neuron_units else None
            handles = [lin.register_forward_hook(s.hook) for lin, s in ((b.o, o_stats), (b.mlp_out, down_stats)) if s is not None]
            try:
                for hidden, args, kwargs in chunks:
                    block_output(b.layer, hidden, args, kwargs)
            finally:
                for h in handles:
                    h.remove()
            q_kept, kv_kept = list(range(geom.heads)), list(range(geom.kv_heads))
            if head_units:
                scores = head_scores(b, geom, criterion, gqa, o_stats.norms() if o_stats is not None else None)
                q_kept, kv_kept = kept_heads(scores, geom, gqa, head_units)
                remove_heads(b, geom, q_kept, kv_kept)
            n_kept = list(range(geom.neurons))
            if neuron_units:
                scores = neuron_scores(b, geom, criterion, down_stats.norms() if down_stats is not None else None)
                n_kept = top_indices(scores, geom.neurons - neuron_units)
                remove_neurons(b, n_kept)
            if li + 1 < len(blocks):
                for j, (hidden, args, kwargs) in enumerate(chunks):
                    chunks[j] = (block_output(b.layer, hidden, args, kwargs), args, kwargs)
            report.layers.append(
                StructuredLayerReport(
                    name=b.name, heads=(geom.heads, len(q_kept)), kv_heads=(geom.kv_heads, len(kv_kept)),
                    neurons=(geom.neurons, len(n_kept)), kept_heads=q_kept, kept_kv_heads=kv_kept,
                    kept_neurons=n_kept, seconds=time.perf_counter() - t0,
                )
            )
        values: dict[str, int] = {}
        if head_units:
            values.update(
                num_attention_heads=geom.heads - removed_heads,
                num_key_value_heads=geom.kv_heads - (head_units if gqa == "groups" else 0),
                head_dim=geom.head_dim,
            )
        if neuron_units:
            values["intermediate_size"] = geom.neurons - neuron_units
        update_configs(model, values)
    finally:
        model.train(was_training)
    report.parameters_after = _parameter_count(model)
    report.seconds = time.perf_counter() - start
    names = {id(m): n for n, m in model.named_modules()}
    in_blocks = [(names[id(m)], m) for layer in layers for m in layer.modules() if isinstance(m, nn.Linear)]
    report.coverage = block_coverage(model, in_blocks, [names[id(l)] for l in layers], "prune_structured")
    return report
