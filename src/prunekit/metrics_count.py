"""Counting what a model computes: its example inputs, and the FLOPs of one forward pass.

Part of :mod:`prunekit.metrics` (which re-exports these names; import them from there).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmul- and conv-type ops,
two FLOPs per multiply-accumulate). Per-module attribution uses forward hooks on the given
modules that read the counter's running total before and after the module runs, so a
module called twice is counted twice and names never need matching. Masks are computed
once before counting (:func:`prunekit.masking.cached`), so the mask multiply is not part of
the model's FLOPs (``FlopCounterMode`` would ignore an elementwise ``mul`` anyway).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .criteria.base import batch_rows
from .errors import PruneError, PruneTypeError
from .masking import cached, original, parametrized_names


def check_example_inputs(example_inputs: object) -> tuple[torch.Tensor, ...]:
    """Example inputs as a tuple of tensors, each with a batch dimension.

    Args:
        example_inputs: a tensor, or a non-empty tuple or list of tensors, each with at
            least one sample along dimension 0.

    Returns:
        The tensors as a tuple (a single tensor becomes a 1-tuple).

    Raises:
        PruneTypeError: anything else.
        PruneError: a tensor with no batch dimension or an empty one.
    """
    if isinstance(example_inputs, torch.Tensor):
        inputs: tuple = (example_inputs,)
    elif isinstance(example_inputs, (tuple, list)) and example_inputs and all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        inputs = tuple(example_inputs)
    else:
        raise PruneTypeError(
            "example_inputs must be a torch.Tensor with a batch dimension or a tuple of them, "
            f"got {describe_type(example_inputs)}"
        )
    for t in inputs:
        if t.dim() == 0 or t.shape[0] < 1:
            raise PruneError(
                f"example_inputs need a batch dimension with at least one sample; got shape {tuple(t.shape)}"
            )
    return inputs


def describe_type(obj: object) -> str:
    """A value's type for a message: ``tuple of (Tensor, dict)`` for a sequence."""
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__} of ({', '.join(type(o).__name__ for o in obj)})"
    return type(obj).__name__


def describe_shapes(inputs: tuple[torch.Tensor, ...]) -> str:
    """The inputs' shapes for a message: ``(4, 7)`` for one tensor, a list for several."""
    shapes = [tuple(t.shape) for t in inputs]
    return str(shapes[0]) if len(shapes) == 1 else str(shapes)


def resize_batch(inputs: tuple[torch.Tensor, ...], n: int) -> tuple[torch.Tensor, ...]:
    """The inputs with exactly ``n`` samples, their rows repeated or cut as needed.

    Args:
        inputs: tensors with a batch dimension, as :func:`check_example_inputs` returns.
        n: the batch size wanted, at least 1.

    Returns:
        One tensor per input, each with ``n`` rows along dimension 0; an input whose
        dimension 0 is not the batch's (the first input's) goes as it is.
    """
    rows, out = batch_rows(inputs), []
    for t in inputs:
        if t.shape[0] != rows:  # not batched (an (L, L) attention mask): as it is
            out.append(t)
            continue
        reps = -(-n // t.shape[0])
        out.append(t.repeat(reps, *([1] * (t.dim() - 1)))[:n] if reps > 1 else t[:n])
    return tuple(out)


def _numel(obj: object) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel()
    if isinstance(obj, (tuple, list)):
        return sum(_numel(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_numel(o) for o in obj.values())
    return 0


def effective_by_param(model: nn.Module) -> dict[int, torch.Tensor]:
    """``{id(trainable parameter): effective tensor}`` for parametrized parameters."""
    out: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for pname in parametrized_names(module):
            stored = original(module, pname)
            if isinstance(stored, torch.Tensor):
                out[id(stored)] = getattr(module, pname).detach()
    return out


def _dims(t: Any) -> tuple[int, ...] | None:
    """The shape of a dense tensor (``None`` for anything else, a nested tensor included)."""
    if not isinstance(t, torch.Tensor) or t.is_nested:
        return None
    return tuple(t.shape)


def _rows(shape: tuple[int, ...] | None) -> int:
    """Vectors along the last dimension: time steps × batch of a sequence."""
    n = 1
    for d in (shape or (0,))[:-1]:
        n *= d
    return n


def _rnn_flops(x: Any, weights: list[Any]) -> int:
    """Every time step multiplies its input and hidden state by the 2-D weight matrices
    (one layer and direction: ``weight_ih``, ``weight_hh``, and ``weight_hr`` with a
    projection), 2 FLOPs per multiply-accumulate."""
    mats = [d for d in map(_dims, weights) if d is not None and len(d) == 2]
    return 2 * _rows(_dims(x)) * sum(a * b for a, b in mats)


def _mkldnn_rnn_layer(x, w_ih, w_hh, *args, out_val=None, **kwargs) -> int:
    return _rnn_flops(x, [w_ih, w_hh])


def _cudnn_rnn(x, weights, *args, out_val=None, **kwargs) -> int:
    return _rnn_flops(x, list(weights))


def _attention_flops(q: Any, k: Any, e: int) -> int:
    """Projections of queries, keys, values and output, scores and weighted values."""
    dq, dk = _dims(q), _dims(k)
    if dq is None or dk is None:
        return 0
    batch = dq[0] if len(dq) == 3 else 1
    lq, lk = _rows(dq), _rows(dk)
    return 2 * e * e * (2 * lq + 2 * lk) + 2 * 2 * lq * (lk // max(batch, 1)) * e


def _native_mha(q, k, v, embed_dim, *args, out_val=None, **kwargs) -> int:
    return _attention_flops(q, k, int(embed_dim))


def _encoder_layer(src, embed_dim, num_heads, qkv_w, qkv_b, proj_w, proj_b, use_gelu, norm_first, eps,
                   nw1, nb1, nw2, nb2, ffn_w1, ffn_b1, ffn_w2, *args, out_val=None, **kwargs) -> int:
    ffn = sum(a * b for a, b in (d for d in map(_dims, (ffn_w1, ffn_w2)) if d is not None and len(d) == 2))
    return _attention_flops(src, src, int(embed_dim)) + 2 * _rows(_dims(src)) * ffn


def _sdpa_cpu(q, k, v, *args, out_val=None, **kwargs) -> int:
    """Scores (``q @ kᵀ``) and weighted values (``· v``) of every head."""
    dq, dk, dv = _dims(q), _dims(k), _dims(v)
    if dq is None or dk is None or dv is None or len(dq) < 2:
        return 0
    return 2 * _rows(dq[:-1]) * dq[-2] * dk[-2] * (dq[-1] + dv[-1])


def _sparse_addmm(bias, a, b, *args, out_val=None, **kwargs) -> int:
    """A sparse matrix times a dense one (``SparseLinear``'s CSR kernel): only the stored
    entries are multiplied."""
    if isinstance(a, torch.Tensor) and a.layout != torch.strided and isinstance(b, torch.Tensor):
        return 2 * int(a._nnz()) * int(b.shape[-1])
    if isinstance(b, torch.Tensor) and b.layout != torch.strided and isinstance(a, torch.Tensor):
        return 2 * int(b._nnz()) * int(a.shape[0])
    return 0


def _fused_ops() -> dict[Any, Any]:
    """FLOP formulas for the fused kernels ``FlopCounterMode`` has none for, which whole
    modules dispatch to: ``nn.LSTM`` on the CPU (oneDNN) and on CUDA (cuDNN, every RNN
    kind), the inference fast paths of ``nn.MultiheadAttention`` and
    ``nn.TransformerEncoderLayer``, and scaled dot-product attention on the CPU (what
    ``F.scaled_dot_product_attention`` runs there, ``transformers``' default attention
    included), and a sparse matrix times a dense one (what ``SparseLinear`` runs: the stored
    entries only). They read the tensors themselves (a nested tensor counts 0)."""
    aten = torch.ops.aten
    formulas = {"mkldnn_rnn_layer": _mkldnn_rnn_layer, "_cudnn_rnn": _cudnn_rnn,
                "_scaled_dot_product_flash_attention_for_cpu": _sdpa_cpu, "_sparse_addmm": _sparse_addmm,
                "_native_multi_head_attention": _native_mha, "_transformer_encoder_layer_fwd": _encoder_layer}
    out = {}
    for name, fn in formulas.items():
        if hasattr(aten, name):
            fn._get_raw = True  # FlopCounterMode passes the tensors, not their shapes
            out[getattr(aten, name)] = fn
    return out


def attention_core_flops(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """FLOPs of an attention module's scores (``q @ kᵀ``) and weighted values, which read no
    weight: a pruned projection does not make them cheaper (``nn.MultiheadAttention`` and
    its pruned form; 0 for other modules)."""
    heads, head_dim = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    q = args[0] if args else kwargs.get("query")
    k = args[1] if len(args) > 1 else kwargs.get("key")
    if not (isinstance(heads, int) and isinstance(head_dim, int) and isinstance(q, torch.Tensor)
            and isinstance(k, torch.Tensor)) or q.dim() not in (2, 3):
        return 0
    if q.dim() == 2:
        b, lq, lk = 1, q.shape[0], k.shape[0]
    elif getattr(module, "batch_first", False):
        b, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    else:
        b, lq, lk = q.shape[1], q.shape[0], k.shape[0]
    return 4 * b * lq * lk * heads * head_dim


def count_flops(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], modules: list[nn.Module], fixed: dict[int, int] | None = None
) -> tuple[int, dict[int, int], dict[int, int]]:
    """Run one forward pass and count its FLOPs, in total and per module.

    Masks are computed before counting, so the mask multiply is not counted.

    Args:
        model: the model.
        inputs: the forward pass's inputs (callers pass batch 1).
        modules: the modules to attribute FLOPs to (forward hooks read the running total).
        fixed: when given, filled with the FLOPs of each attention module that read no
            weight (:func:`attention_core_flops`), per ``id(module)``.

    Returns:
        ``(total, flops, activations)``: the total FLOPs, and per ``id(module)`` its FLOPs
        and the elements of its inputs plus outputs.
    """
    flops: dict[int, int] = {}
    acts: dict[int, int] = {}
    start: dict[int, int] = {}
    counter = FlopCounterMode(display=False, custom_mapping=_fused_ops())

    def pre(mod: nn.Module, args: Any) -> None:
        start[id(mod)] = counter.get_total_flops()

    def post(mod: nn.Module, args: Any, kwargs: dict[str, Any], out: Any) -> None:
        key = id(mod)
        flops[key] = flops.get(key, 0) + counter.get_total_flops() - start.pop(key)
        acts[key] = acts.get(key, 0) + _numel(args) + _numel(out)
        if fixed is not None:
            core = attention_core_flops(mod, args, kwargs)
            if core:
                fixed[key] = fixed.get(key, 0) + core

    handles = []
    for m in modules:
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        # no_grad, not inference_mode: FlopCounterMode's module tracker fails to read
        # parametrized weights under inference_mode.
        with torch.no_grad(), cached():
            for m in model.modules():
                for pname in parametrized_names(m):
                    getattr(m, pname)  # fill the cache outside the counter
            with counter:
                model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return int(counter.get_total_flops()), flops, acts


def uncounted(model: nn.Module, flops: dict[int, int], activations: dict[int, int]) -> list[str]:
    """Names of the modules :func:`count_flops` saw run (they are in ``activations``) but
    counted no FLOPs for, lookups (``nn.Embedding``, ``nn.EmbeddingBag``) aside: a kernel
    torch's counter has no formula for (on another device, say)."""
    lookups = (nn.Embedding, nn.EmbeddingBag)
    return [name or type(m).__name__ for name, m in model.named_modules()
            if id(m) in activations and not flops.get(id(m)) and not isinstance(m, lookups)]
