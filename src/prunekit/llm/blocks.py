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

__all__ = ["BLOCK_PATHS", "Chunk", "LayerInputs", "StopForward", "block_output", "capture_first_inputs", "capture_inputs",
           "check_tokens", "layer_types", "learned_positions", "transformer_blocks"]

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
    positions = learned_positions(model) if model is not None else None
    if positions is not None and ids.shape[1] > positions:
        raise PruneError(f"{name} has windows of {ids.shape[1]} tokens; {type(model).__name__} has learned position "
                         f"embeddings for {positions} positions: use a sequence length of at most {positions}")
    return ids.long()


def learned_positions(model: nn.Module) -> int | None:
    """How many positions a model with learned absolute position embeddings (GPT-2's
    ``wpe``, BERT's ``position_embeddings``) can take; ``None`` for rotary or ALiBi models,
    which have no table to run past."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding) and name.rsplit(".", 1)[-1] in ("wpe", "position_embeddings"):
            return int(m.num_embeddings)
    return None


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


def layer_types(model: nn.Module, n: int) -> list[str] | None:
    """The attention type of each of ``model``'s ``n`` blocks (``config.layer_types``:
    ``"sliding_attention"``, ``"full_attention"``, ...) when they differ, else ``None``.
    Blocks of different types are called with different masks (Gemma 2, Qwen2 with sliding
    layers) and rotary tables (Gemma 3)."""
    config = getattr(model, "config", None)
    get = getattr(config, "get_text_config", None)
    text = get() if callable(get) else config
    types = getattr(text, "layer_types", None) or getattr(config, "layer_types", None)
    if isinstance(types, (list, tuple)) and len(types) == n and len(set(map(str, types))) > 1:
        return [str(t) for t in types]
    return None


class LayerInputs:
    """The arguments (besides the hidden states) each block is called with, per calibration
    batch, for models whose blocks of different attention types get different ones
    (:func:`layer_types`); :meth:`apply` puts block ``li``'s into the chunks before it runs.

    Args:
        types: each block's type, or ``None`` (every block gets the first block's arguments).
        by_type: for each type, one ``(args, kwargs)`` per batch, as the model passed them
            to its first block of that type.
    """

    def __init__(self, types: list[str] | None = None,
                 by_type: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] | None = None) -> None:
        self.types, self.by_type = types, by_type or {}

    def apply(self, chunks: Any, li: int) -> None:
        """Give every chunk block ``li``'s arguments (in place; nothing without types)."""
        if self.types is None:
            return
        inputs = self.by_type[self.types[li]]
        for j in range(len(chunks)):
            hidden, args, kwargs = chunks[j]
            if args is not inputs[j][0] or kwargs is not inputs[j][1]:
                chunks[j] = (hidden, *inputs[j])

    def to(self, device: torch.device) -> None:
        """Move every tensor to ``device``, in place."""
        for t, inputs in self.by_type.items():
            self.by_type[t] = [(_moved(a, device), _moved(k, device)) for a, k in inputs]


def _moved(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    return value


def _split_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Chunk:
    """``(hidden, other args, kwargs)`` of a block call, KV caches off."""
    if args:
        hidden, rest = args[0], tuple(args[1:])
    else:
        kwargs = dict(kwargs)
        hidden, rest = kwargs.pop("hidden_states"), ()
    kw = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value")}
    if "use_cache" in kw:
        kw["use_cache"] = False
    return hidden.detach(), rest, kw


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
    return _capture(model, [first], None, ids, batch_size)[0]


def capture_inputs(model: nn.Module, layers: Any, ids: torch.Tensor, batch_size: int) -> tuple[list[Chunk], LayerInputs]:
    """:func:`capture_first_inputs` for the first of ``layers``, and the arguments of the
    first block of each other attention type (:func:`layer_types`), as :class:`LayerInputs`:
    the forward pass goes on to that block, the blocks before it passing their input
    through without computing (their weights may not be loaded: disk offload)."""
    types = layer_types(model, len(layers))
    chunks, by_type = _capture(model, layers, types, ids, batch_size)
    if types is not None:  # the first block's own arguments are the ones its chunks carry
        by_type[types[0]] = [(a, k) for _, a, k in chunks]
    return chunks, LayerInputs(types, by_type)


def _capture(model: nn.Module, layers: Any, types: list[str] | None, ids: torch.Tensor,
             batch_size: int) -> tuple[list[Chunk], dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]]]:
    device = _input_device(model)
    chunks: list[Chunk] = []
    first_of: dict[str, int] = {}
    for i, t in enumerate(types or []):
        first_of.setdefault(t, i)
    by_type: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {t: [] for t in first_of}
    last = max(first_of.values(), default=0)
    watched = {0: layers[0]} if types is None else {i: layers[i] for i in first_of.values()}

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], i: int) -> None:
        hidden, rest, kw = _split_call(args, kwargs)
        if i == 0:
            chunks.append((hidden, rest, kw))
        if types is not None:
            by_type[types[i]].append((rest, kw))
        if i == last:
            raise StopForward

    handles = [m.register_forward_pre_hook(lambda mod, a, k, i=i: hook(mod, a, k, i), with_kwargs=True)
               for i, m in watched.items()]
    skipped = {i: layers[i].__dict__.get("forward") for i in range(last)}
    for i in skipped:
        layers[i].forward = _pass_through
    try:
        for b in range(0, ids.shape[0], batch_size):
            try:
                _forward(model, ids[b : b + batch_size].to(device))
            except StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
        for i, own in skipped.items():
            if own is None:
                del layers[i].forward
            else:
                layers[i].forward = own
    batches = math.ceil(ids.shape[0] / batch_size)
    if len(chunks) != batches or any(len(v) != batches for v in by_type.values()):
        raise PruneError(f"the first decoder block of {type(model).__name__} was not reached by the forward pass")
    return chunks, by_type


def _pass_through(*args: Any, **kwargs: Any) -> torch.Tensor:
    """A block's forward that returns its hidden states unchanged."""
    return args[0] if args else kwargs["hidden_states"]


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
