"""How much each hidden channel, head, MLP neuron and block of a ``transformers`` model matters.

Two criteria, one :class:`Importance` each:

* ``"activation"`` (Minitron, Muralidharan et al., 2024): forward passes over calibration
  tokens only. A **hidden channel**'s score is the mean ``|x|`` of that channel at the
  outputs of every LayerNorm/RMSNorm over the residual stream (each block's norms and the
  final/embedding norm); a **head**'s is the mean L2 norm of its slice of the attention output
  (the input of ``o_proj``); a **neuron**'s the mean ``|x|`` of its activation (the input of
  ``down_proj``).
* ``"taylor"`` (Molchanov et al., 2019): one backward pass of the language-model loss (the
  mean squared last hidden state for models without an LM head); a unit's score is
  ``|Σ w · ∂L/∂w|`` over every weight the unit removes.

Both also measure each block's **influence** (ShortGPT, Men et al., 2024): ``1 − cos(input,
output)`` of the block's hidden states, averaged over calibration tokens; a block that
barely turns the residual stream is the first to go. ``depth_criterion="perplexity"`` uses
instead the rise of the calibration loss when the block is skipped alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .structured_layout import Block

__all__ = ["Importance", "activation_importance", "skip_loss_importance", "taylor_importance"]


@dataclass
class Importance:
    """Scores per unit: higher = keep. ``heads[i]`` has one score per query head of block ``i``."""

    hidden: torch.Tensor
    heads: list[torch.Tensor] = field(default_factory=list)
    neurons: list[torch.Tensor] = field(default_factory=list)
    influence: list[float] = field(default_factory=list)
    tokens: int = 0


def residual_norms(block: Block, family: str) -> list[nn.Module]:
    """The norms over the residual stream inside one block."""
    if family == "bert":
        return [block.layer.attention.output.LayerNorm, block.layer.output.LayerNorm]
    return [m for n, m in block.layer.named_children() if "norm" in n.lower() and hasattr(m, "weight")]


def outer_norms(model: nn.Module, family: str) -> list[nn.Module]:
    """Norms over the residual stream outside the blocks (final norm, embedding LayerNorm)."""
    base = getattr(model, "base_model", model)
    if family == "bert":
        return [base.embeddings.LayerNorm]
    norm = getattr(base, "norm", None)
    return [norm] if isinstance(norm, nn.Module) else []


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _batches(ids: torch.Tensor, batch_size: int):
    for s in range(0, ids.shape[0], batch_size):
        yield ids[s:s + batch_size]


@torch.no_grad()
def activation_importance(model: nn.Module, blocks: list[Block], family: str, ids: torch.Tensor,
                          batch_size: int = 8) -> Importance:
    """Minitron activation statistics and block influence from forward passes over ``ids``."""
    hidden_size = blocks[0].q.in_features
    head_dim = blocks[0].q.out_features // max(1, int(getattr(model.config, "num_attention_heads", 1)))
    hidden = torch.zeros(hidden_size, dtype=torch.float64)
    heads = [torch.zeros(b.o.in_features // head_dim, dtype=torch.float64) for b in blocks]
    neurons = [torch.zeros(b.mlp_out.in_features, dtype=torch.float64) for b in blocks]
    influence = [0.0 for _ in blocks]
    count = {"tokens": 0}
    handles = []

    def norm_hook(m, args, out):
        hidden.add_(_first(out).detach().abs().reshape(-1, hidden_size).double().sum(0).cpu())

    for b in blocks:
        for n in residual_norms(b, family):
            handles.append(n.register_forward_hook(norm_hook))
    for n in outer_norms(model, family):
        handles.append(n.register_forward_hook(norm_hook))
    for i, b in enumerate(blocks):
        def o_hook(m, args, i=i):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            heads[i].add_(x.reshape(x.shape[0], -1, head_dim).norm(dim=-1).sum(0).cpu())

        def down_hook(m, args, i=i):
            neurons[i].add_(args[0].detach().abs().reshape(-1, args[0].shape[-1]).double().sum(0).cpu())

        def layer_hook(m, args, kwargs, out, i=i):
            x = args[0] if args else kwargs["hidden_states"]
            y = _first(out)
            cos = F.cosine_similarity(x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double(), dim=-1)
            influence[i] += float((1.0 - cos).sum())

        handles += [b.o.register_forward_pre_hook(o_hook), b.mlp_out.register_forward_pre_hook(down_hook),
                    b.layer.register_forward_hook(layer_hook, with_kwargs=True)]
    was = model.training
    model.eval()
    try:
        for chunk in _batches(ids, batch_size):
            model(input_ids=chunk, use_cache=False) if family == "llama" else model(input_ids=chunk)
            count["tokens"] += chunk.numel()
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    t = max(1, count["tokens"])
    return Importance(hidden=(hidden / t).float(), heads=[(h / t).float() for h in heads],
                      neurons=[(n / t).float() for n in neurons], influence=[v / t for v in influence],
                      tokens=count["tokens"])


def _loss(model: nn.Module, chunk: torch.Tensor, family: str) -> torch.Tensor:
    if family == "llama" and hasattr(model, "lm_head"):
        return model(input_ids=chunk, labels=chunk, use_cache=False).loss
    kw = {"use_cache": False} if family == "llama" else {}
    out = model(input_ids=chunk, **kw)
    h = out.last_hidden_state if hasattr(out, "last_hidden_state") else _first(out)
    return h.float().pow(2).mean()


def _hidden_params(model: nn.Module, blocks: list[Block], family: str) -> list[tuple[torch.Tensor, int]]:
    """(parameter, dim) pairs whose ``dim`` runs over the hidden channels."""
    base = getattr(model, "base_model", model)
    out: list[tuple[torch.Tensor, int]] = []
    embs = [base.embeddings.word_embeddings, base.embeddings.position_embeddings,
            base.embeddings.token_type_embeddings] if family == "bert" else [model.get_input_embeddings()]
    out += [(e.weight, 1) for e in embs]
    for b in blocks:
        out += [(lin.weight, 1) for lin in (b.q, b.k, b.v, *b.mlp_in)]
        out += [(lin.weight, 0) for lin in (b.o, b.mlp_out)]
        out += [(n.weight, 0) for n in residual_norms(b, family)]
    out += [(n.weight, 0) for n in outer_norms(model, family)]
    return out


def taylor_importance(model: nn.Module, blocks: list[Block], family: str, ids: torch.Tensor,
                      batch_size: int = 8) -> Importance:
    """First-order Taylor scores from gradients of the loss on ``ids`` (block influence included)."""
    influence = activation_importance(model, blocks, family, ids[: max(1, batch_size)], batch_size).influence
    params = [p for p in model.parameters()]
    saved = [(p.requires_grad, p.grad) for p in params]
    was = model.training
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        n = 0
        for chunk in _batches(ids, batch_size):
            (_loss(model, chunk, family) * chunk.shape[0]).backward()
            n += chunk.shape[0]
        with torch.no_grad():
            wg = lambda p: (p.detach() * p.grad.detach()).double() / max(1, n)  # noqa: E731
            hidden = torch.zeros(blocks[0].q.in_features, dtype=torch.float64)
            for p, dim in _hidden_params(model, blocks, family):
                if p.grad is not None:
                    hidden += wg(p).sum(dim=1 - dim).cpu() if p.dim() == 2 else wg(p).cpu()
            heads, neurons = [], []
            nh = int(model.config.num_attention_heads)
            for b in blocks:
                hd = b.q.out_features // nh
                s = wg(b.q.weight).sum(1) + wg(b.o.weight).sum(0)
                heads.append(s.reshape(nh, hd).sum(1).abs().float().cpu())
                s = wg(b.mlp_out.weight).sum(0)
                for lin in b.mlp_in:
                    s = s + wg(lin.weight).sum(1)
                neurons.append(s.abs().float().cpu())
    finally:
        for p, (rg, g) in zip(params, saved):
            p.grad = g
            p.requires_grad_(rg)
        model.train(was)
    return Importance(hidden=hidden.abs().float(), heads=heads, neurons=neurons, influence=influence,
                      tokens=int(ids.numel()))


@torch.no_grad()
def skip_loss_importance(model: nn.Module, blocks: list[Block], family: str, ids: torch.Tensor,
                         batch_size: int = 8) -> list[float]:
    """Per block, the calibration loss with that block skipped alone (higher = more needed)."""
    def loss() -> float:
        return sum(float(_loss(model, c, family)) * c.shape[0] for c in _batches(ids, batch_size)) / ids.shape[0]

    out = []
    for b in blocks:
        def skip(m, args, kwargs, result):
            x = args[0] if args else kwargs["hidden_states"]
            return (x, *result[1:]) if isinstance(result, tuple) else x

        h = b.layer.register_forward_hook(skip, with_kwargs=True)
        try:
            out.append(loss())
        finally:
            h.remove()
    return out
