"""Keep a shrunk ``transformers`` model a stock one: its config and module attributes.

After the weights of a model were sliced (:mod:`~prunekit.llm.width`) or whole blocks
removed (:mod:`~prunekit.llm.depth`), :func:`update_architecture` writes the new sizes into
every config object the model holds (``hidden_size``, ``intermediate_size``,
``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``num_hidden_layers``,
``layer_types``) and into the modules that cache them (``num_heads``, ``head_dim``,
``hidden_size``, ``layer_idx`` of attention modules, ...), so that ``save_pretrained`` →
``AutoModel*.from_pretrained`` rebuilds the same model with no prunekit code.

:func:`architecture` reads the sizes back (what a budget is computed from).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..errors import PruneTypeError

__all__ = ["Architecture", "architecture", "configs", "set_ints", "update_architecture"]


@dataclass(frozen=True)
class Architecture:
    """The sizes of a Llama-family or BERT-style model that width and depth pruning change."""

    family: str  # "llama" or "bert"
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    layers: int
    vocab: int
    tied: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_attention_heads") or not hasattr(config, "hidden_size"):
        raise PruneTypeError(
            f"{type(model).__name__} has no transformers config with hidden_size and num_attention_heads; "
            "expected a model such as LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM or BertModel"
        )
    return config


def architecture(model: nn.Module, family: str) -> Architecture:
    """The model's sizes, read from its config (``head_dim`` defaults to ``hidden // heads``)."""
    c = _config(model)
    heads = int(c.num_attention_heads)
    kv = int(getattr(c, "num_key_value_heads", None) or heads)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = emb is not None and out is not None and out.weight is emb.weight
    return Architecture(family=family, hidden=int(c.hidden_size), heads=heads, kv_heads=kv, head_dim=int(head_dim),
                        intermediate=int(c.intermediate_size), layers=int(c.num_hidden_layers),
                        vocab=int(c.vocab_size), tied=bool(tied))


def configs(model: nn.Module) -> list[Any]:
    """Every distinct config object the model and its modules hold (usually one, shared)."""
    found = {id(_config(model)): model.config}
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "num_attention_heads"):
            found.setdefault(id(c), c)
    return list(found.values())


def set_ints(module: nn.Module, values: dict[str, int]) -> None:
    """Update those integer attributes of ``values`` that ``module`` has (not all families keep all)."""
    for name, value in values.items():
        old = getattr(module, name, None)
        if isinstance(old, int) and not isinstance(old, bool):
            setattr(module, name, value)


def update_architecture(model: nn.Module, *, kept_layers: list[int] | None = None, **values: int) -> None:
    """Write new sizes into every config of ``model`` and renumber its blocks.

    Args:
        model: the shrunk model.
        kept_layers: the original indices of the blocks that remain, in order (after depth
            removal): ``num_hidden_layers``, ``layer_types`` and the attention modules'
            ``layer_idx`` follow.
        values: config fields to set (``hidden_size``, ``intermediate_size``,
            ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``).
    """
    for c in configs(model):
        for k, v in values.items():
            setattr(c, k, int(v))
        if kept_layers is not None:
            types = getattr(c, "layer_types", None)
            if isinstance(types, (list, tuple)) and len(types) > max(kept_layers, default=-1):
                c.layer_types = [types[i] for i in kept_layers]
            c.num_hidden_layers = len(kept_layers)
            if isinstance(getattr(c, "max_window_layers", None), int):
                c.max_window_layers = min(c.max_window_layers, len(kept_layers))
    if kept_layers is not None:
        from .blocks import transformer_blocks

        for new_idx, layer in enumerate(transformer_blocks(model)):
            for m in layer.modules():
                set_ints(m, {"layer_idx": new_idx})
                if hasattr(m, "layer_type") and isinstance(getattr(m, "layer_type"), str):
                    types = getattr(model.config, "layer_types", None)
                    if isinstance(types, (list, tuple)) and new_idx < len(types):
                        m.layer_type = types[new_idx]
