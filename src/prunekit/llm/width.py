"""Width surgery: narrow the hidden size, the heads and the MLP of a ``transformers`` model.

:func:`narrow` slices a Llama-family decoder or a BERT encoder, in place, to a
:class:`~prunekit.llm.budget.Shape`, keeping the highest-scoring units of an
:class:`~prunekit.llm.importance.Importance`:

* **hidden channels** (one choice for the whole residual stream): columns of the input
  embeddings (and the tied or untied LM head), of every ``q/k/v``, MLP ``gate/up`` (BERT:
  ``query/key/value``, ``intermediate.dense``) and of the pooler; rows of every ``o_proj`` /
  ``down_proj`` (BERT: ``attention.output.dense``, ``output.dense``, the pooler); entries of
  every RMSNorm / LayerNorm over the stream. A norm then normalizes over the kept channels
  only (what the stock module computes; Minitron does the same), so the result differs from
  the dense model by more than the removed channels: recovery by distillation follows.
  BERT's head size is ``hidden_size / num_attention_heads``, so each head also keeps its
  best ``hidden / heads`` query/key dimensions (ranked by ``|W_q row| · |W_k row|``, the
  queries rescaled so that the ``1/sqrt(d)`` softmax scale stays) and value dimensions
  (``|W_v row| · |W_o column|``).
* **heads** and **MLP neurons**: per block, with the slicing of
  :mod:`~prunekit.llm.structured_surgery` (whole KV groups when ``kv_heads`` shrinks, else the
  same number of query heads from every group).

The configs and cached module sizes are written by
:func:`~prunekit.llm.config_update.update_architecture`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import PruneError, PruneTypeError
from .config_update import Architecture, set_ints, update_architecture
from .importance import Importance, outer_norms, residual_norms
from .structured_layout import Block, Geometry
from .structured_scores import kept_heads, top_indices
from .structured_surgery import remove_heads, remove_neurons

__all__ = ["narrow"]


def _rows(lin: nn.Module, idx: torch.Tensor, scale: float = 1.0) -> None:
    idx = idx.to(lin.weight.device)
    w = lin.weight.detach()[idx].clone() * scale
    lin.weight = nn.Parameter(w, requires_grad=lin.weight.requires_grad)
    if getattr(lin, "bias", None) is not None:
        lin.bias = nn.Parameter(lin.bias.detach()[idx].clone() * scale, requires_grad=lin.bias.requires_grad)
    if hasattr(lin, "out_features"):
        lin.out_features = int(idx.numel())


def _cols(lin: nn.Module, idx: torch.Tensor) -> None:
    idx = idx.to(lin.weight.device)
    lin.weight = nn.Parameter(lin.weight.detach()[:, idx].clone(), requires_grad=lin.weight.requires_grad)
    if hasattr(lin, "in_features"):
        lin.in_features = int(idx.numel())
    if hasattr(lin, "embedding_dim"):
        lin.embedding_dim = int(idx.numel())


def _norm(n: nn.Module, idx: torch.Tensor) -> None:
    _rows(n, idx)
    if isinstance(getattr(n, "normalized_shape", None), tuple):
        n.normalized_shape = (int(idx.numel()),)


def _bert_head_dims(b: Block, heads: int, head_dim: int, new_dim: int) -> None:
    """Keep the best ``new_dim`` query/key and value dimensions of every head of a BERT block."""
    q = b.q.weight.detach().float().norm(dim=1).reshape(heads, head_dim)
    k = b.k.weight.detach().float().norm(dim=1).reshape(heads, head_dim)
    v = b.v.weight.detach().float().norm(dim=1).reshape(heads, head_dim)
    o = b.o.weight.detach().float().norm(dim=0).reshape(heads, head_dim)
    qk, vo = [], []
    for h in range(heads):
        qk += [h * head_dim + j for j in top_indices(q[h] * k[h], new_dim)]
        vo += [h * head_dim + j for j in top_indices(v[h] * o[h], new_dim)]
    qk_idx, vo_idx = torch.tensor(qk), torch.tensor(vo)
    _rows(b.q, qk_idx, scale=math.sqrt(new_dim / head_dim))
    _rows(b.k, qk_idx)
    _rows(b.v, vo_idx)
    _cols(b.o, vo_idx)
    set_ints(b.attn, {"attention_head_size": new_dim, "all_head_size": heads * new_dim})
    if hasattr(b.attn, "scaling"):
        b.attn.scaling = new_dim ** -0.5


def _rescale_embeddings(emb: nn.Module, old: int, new: int) -> None:
    """Embeddings that multiply by ``sqrt(hidden_size)`` (Gemma's ``embed_scale``) take the
    new width's factor, as ``from_pretrained`` builds it from the saved config: the model
    scored and distilled here is then the one that reloads."""
    scale = getattr(emb, "embed_scale", None)
    if isinstance(scale, torch.Tensor) and scale.numel() == 1 and math.isclose(float(scale), old ** 0.5, rel_tol=1e-3):
        with torch.no_grad():
            scale.fill_(new ** 0.5)
        if hasattr(emb, "scalar_embed_scale"):
            emb.scalar_embed_scale = new ** 0.5


def _hidden(model: nn.Module, blocks: list[Block], family: str, keep: torch.Tensor, width: int) -> None:
    base = getattr(model, "base_model", model)
    emb = model.get_input_embeddings()
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = out is not None and out.weight is emb.weight
    _rescale_embeddings(emb, emb.weight.shape[-1], width)
    if family == "bert":
        for e in (base.embeddings.word_embeddings, base.embeddings.position_embeddings,
                  base.embeddings.token_type_embeddings):
            _cols(e, keep)
        pooler = getattr(base, "pooler", None)
        if pooler is not None:
            _rows(pooler.dense, keep)
            _cols(pooler.dense, keep)
    else:
        _cols(emb, keep)
    if out is not None:
        if tied:
            out.weight = model.get_input_embeddings().weight
        else:
            _cols(out, keep)
        if hasattr(out, "in_features"):
            out.in_features = width
    for b in blocks:
        for lin in (b.q, b.k, b.v, *b.mlp_in):
            _cols(lin, keep)
        for lin in (b.o, b.mlp_out):
            _rows(lin, keep)
        for n in residual_norms(b, family):
            _norm(n, keep)
        for m in b.layer.modules():
            set_ints(m, {"hidden_size": width, "embed_dim": width})
    for n in outer_norms(model, family):
        _norm(n, keep)


def _check_outside(model: nn.Module, family: str) -> None:
    """Refuse task heads whose hidden-size layers ``narrow`` does not know."""
    known = {"llama": {"model", "lm_head", "embed_tokens", "layers", "norm", "rotary_emb"}, "bert": {"bert", "embeddings", "encoder", "pooler"}}[family]
    extra = [n for n, m in model.named_children() if n not in known and any(True for _ in m.parameters())]
    if extra:
        raise PruneTypeError(
            f"{type(model).__name__} has modules {', '.join(extra)} outside the transformer that read the hidden size; "
            "hidden-size pruning supports Llama-family base and causal-LM models and BertModel"
        )


def narrow(model: nn.Module, blocks: list[Block], arch: Architecture, imp: Importance, layer_ids: list[int], *,
           hidden: int, heads: int, kv_heads: int, intermediate: int) -> None:
    """Slice ``model`` in place to the given widths (``blocks`` are the remaining blocks,
    ``layer_ids`` their original indices into ``imp``)."""
    family = arch.family
    if hidden % heads:
        raise PruneError(f"hidden size {hidden} is not a multiple of {heads} attention heads; the config refuses it")
    geom = Geometry(heads=arch.heads, kv_heads=arch.kv_heads, head_dim=arch.head_dim, neurons=arch.intermediate)
    values: dict[str, int] = {}
    if (heads, kv_heads) != (arch.heads, arch.kv_heads):
        if family == "bert" and heads != arch.heads:
            raise PruneError("BERT keeps all its heads here (its head size is hidden_size / num_attention_heads)")
        gqa = "groups" if kv_heads < arch.kv_heads else "queries"
        removed = arch.kv_heads - kv_heads if gqa == "groups" else (arch.heads - heads) // arch.kv_heads
        for b, li in zip(blocks, layer_ids):
            s = imp.heads[li]
            scores = s if gqa == "queries" else s.reshape(arch.kv_heads, geom.group).sum(1)
            q_kept, kv_kept = kept_heads(scores, geom, gqa, removed)
            remove_heads(b, geom, q_kept, kv_kept)
        values.update(num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=arch.head_dim)
    if intermediate != arch.intermediate:
        for b, li in zip(blocks, layer_ids):
            remove_neurons(b, top_indices(imp.neurons[li], intermediate))
        values["intermediate_size"] = intermediate
    if hidden != arch.hidden:
        _check_outside(model, family)
        keep = torch.tensor(top_indices(imp.hidden, hidden), dtype=torch.long)
        if family == "bert":
            new_dim = hidden // heads
            for b in blocks:
                _bert_head_dims(b, heads, arch.head_dim, new_dim)
        else:
            values.setdefault("head_dim", arch.head_dim)
        _hidden(model, blocks, family, keep, hidden)
        values["hidden_size"] = hidden
    if values:
        update_architecture(model, **values)
