"""The transformer blocks of a ``transformers`` model, and running them one at a time.

:func:`prunekit.llm.prune_llm` and :func:`prunekit.llm.prune_structured` both work block by
block: they find the stack of blocks (:func:`transformer_blocks`), record what the first
block is called with on the calibration tokens (:func:`capture_first_inputs`), and run each
block on those inputs (:func:`block_output`) to get the next block's inputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import PruneError, PruneTypeError

__all__ = ["BLOCK_PATHS", "Chunk", "StopForward", "block_output", "capture_first_inputs", "check_tokens", "transformer_blocks"]

#: Where transformers keeps the stack of blocks: decoders (Llama, Mistral, Qwen2, SmolLM, ...)
#: at model.model.layers, GPT-2 at transformer.h, BERT-style encoders at encoder.layer.
BLOCK_PATHS = ("model.layers", "layers", "transformer.h", "encoder.layer", "bert.encoder.layer", "roberta.encoder.layer", "model.encoder.layer")

#: One batch of a block's inputs: ``(hidden_states, other positional args, keyword args)``.
Chunk = tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]


class StopForward(Exception):
    """Raised from a forward hook to end a forward pass once what it needed was recorded."""


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of a ``transformers`` model.

    Args:
        model: a decoder (``LlamaForCausalLM``, GPT-2, ...) or a BERT-style encoder.

    Returns:
        The first non-empty ``nn.ModuleList`` found at one of :data:`BLOCK_PATHS`.

    Raises:
        PruneTypeError: the model has no such stack.
    """
    for path in BLOCK_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise PruneTypeError(
        f"{type(model).__name__} has no stack of transformer blocks at any of "
        f"{', '.join('model.' + p for p in BLOCK_PATHS)}; prune_llm expects a transformers decoder "
        "such as LlamaForCausalLM or an encoder such as BertModel"
    )


def check_tokens(name: str, ids: object, model: nn.Module | None = None) -> torch.Tensor:
    """Token ids checked and shaped ``[n, seqlen]``.

    Args:
        name: the argument's name, for the error message.
        ids: an int64 or int32 tensor, 1-D (one sequence) or ``[n, seqlen]``.
        model: when given, the ids must lie in its input embedding's vocabulary.

    Returns:
        The ids as a 2-D int64 tensor.

    Raises:
        PruneTypeError: ``ids`` is not an integer tensor.
        PruneError: it is empty, has neither one nor two dimensions, or holds ids outside
            ``model``'s vocabulary.
    """
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
        got = f"{ids.dtype} tensor" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise PruneTypeError(f"{name} must be a LongTensor of token ids [n, seqlen]; got {got}")
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.numel() == 0:
        raise PruneError(f"{name} must have shape [n, seqlen] with n, seqlen >= 1; got {tuple(ids.shape)}")
    emb = model.get_input_embeddings() if model is not None and hasattr(model, "get_input_embeddings") else None
    vocab = getattr(emb, "num_embeddings", None)
    if vocab:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab:
            raise PruneError(f"{name} holds token ids in [{lo}, {hi}], outside the model's vocabulary [0, {vocab - 1}]; "
                             "tokenize with the model's own tokenizer")
    return ids.long()


def block_output(layer: nn.Module, hidden: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """Run one block and return its hidden states.

    Args:
        layer: the block.
        hidden: its input hidden states.
        args: its other positional arguments, as captured.
        kwargs: its keyword arguments, as captured.

    Returns:
        The block's output hidden states (the first element when it returns a tuple).
    """
    out = layer(hidden, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def capture_first_inputs(model: nn.Module, first: nn.Module, ids: torch.Tensor, batch_size: int) -> list[Chunk]:
    """Run the embedding part of ``model`` and record what the first block is called with.

    The forward pass stops at the first block; KV caches are turned off in what is recorded.

    Args:
        model: the whole model, called as ``model(input_ids=...)``.
        first: its first block.
        ids: token ids ``[n, seqlen]`` (see :func:`check_tokens`).
        batch_size: sequences per forward pass.

    Returns:
        One :data:`Chunk` per batch of ``batch_size`` sequences.

    Raises:
        PruneError: a forward pass never reached ``first``.
    """
    device = _input_device(model)
    chunks: list[Chunk] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            kwargs = dict(kwargs)
            hidden, rest = kwargs.pop("hidden_states"), ()
        kw = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value")}
        if "use_cache" in kw:
            kw["use_cache"] = False
        chunks.append((hidden.detach(), rest, kw))
        raise StopForward

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for b in range(0, ids.shape[0], batch_size):
            try:
                _forward(model, ids[b : b + batch_size].to(device))
            except StopForward:
                pass
    finally:
        handle.remove()
    if len(chunks) != math.ceil(ids.shape[0] / batch_size):
        raise PruneError(f"the first decoder block of {type(model).__name__} was not reached by the forward pass")
    return chunks


def _input_device(model: nn.Module) -> torch.device:
    """Where the token ids go: the input embeddings' device (the blocks may be elsewhere, or empty)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    weight = getattr(emb, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
        return weight.device
    return next(model.parameters()).device


def _forward(model: nn.Module, ids: torch.Tensor) -> Any:
    """``model(input_ids=ids)``, without a KV cache where the model has one."""
    if getattr(getattr(model, "config", None), "use_cache", None) is not None:
        return model(input_ids=ids, use_cache=False)
    return model(input_ids=ids)
