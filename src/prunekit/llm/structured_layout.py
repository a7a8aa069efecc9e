"""The blocks :func:`prunekit.llm.structured.prune_structured` shrinks, and how much of them it may remove.

* :class:`Layout`: where a family's attention and MLP linears live in a block (Llama-style
  ``self_attn.q_proj ... mlp.down_proj``, BERT-style ``attention.self.query ... output.dense``);
* :func:`resolve_blocks`, :func:`model_config`, :func:`geometry`: the blocks matched to a
  layout, and the per-block sizes read from the config and checked on the weights;
* :func:`plan_heads`, :func:`plan_neurons`: the units a fraction removes per block, rounded
  down to what the config class accepts at save/load time.

Everything here only reads the model: ``prune_structured`` runs it all before it
touches a weight.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from torch import nn

from ..errors import PruneError, PruneTypeError
from ..masking import parametrized_names

__all__ = [
    "Block", "Geometry", "Layout", "check_unmasked", "geometry", "model_config", "plan_heads", "plan_neurons",
    "resolve_blocks",
]


# ---------------------------------------------------------------------- architectures


@dataclass(frozen=True)
class Layout:
    """Where the attention and MLP linears of one block live, relative to the block."""

    family: str
    attn: str
    q: str
    k: str
    v: str
    o: str
    mlp: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    # Whether the config can carry an explicit head size, so fewer heads survive a reload.
    heads_reloadable: bool


_LAYOUTS = (
    Layout(
        "llama", "self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", heads_reloadable=True,
    ),
    Layout(
        "bert", "attention.self", "attention.self.query", "attention.self.key", "attention.self.value",
        "attention.output.dense", "intermediate", ("intermediate.dense",), "output.dense", heads_reloadable=False,
    ),
)


@dataclass
class Block:
    """The modules of one block that :func:`~prunekit.llm.structured.prune_structured` changes."""

    name: str
    layer: nn.Module
    attn: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    mlp: nn.Module
    mlp_in: tuple[nn.Linear, ...]
    mlp_out: nn.Linear

    def linears(self) -> dict[str, nn.Linear]:
        named = {"q": self.q, "k": self.k, "v": self.v, "o": self.o, "mlp_out": self.mlp_out}
        named.update({f"mlp_in{i}": m for i, m in enumerate(self.mlp_in)})
        return named


@dataclass(frozen=True)
class Geometry:
    """Per-block sizes shared by every block (read from the config, checked on the weights)."""

    heads: int
    kv_heads: int
    head_dim: int
    neurons: int

    @property
    def group(self) -> int:
        """Query heads per KV group."""
        return self.heads // self.kv_heads


def _get(module: nn.Module, path: str) -> Any:
    obj: Any = module
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def resolve_blocks(model: nn.Module, layers: nn.ModuleList) -> tuple[Layout, list[Block]]:
    """Match the blocks to a known layout; :class:`PruneTypeError` when none fits."""
    paths = lambda lay: (lay.q, lay.k, lay.v, lay.o, *lay.mlp_in, lay.mlp_out)  # noqa: E731
    layout = next((lay for lay in _LAYOUTS if all(isinstance(_get(layers[0], p), nn.Linear) for p in paths(lay))), None)
    if layout is None:
        raise PruneTypeError(
            f"{type(model).__name__}'s blocks have neither Llama-style linears (self_attn.q_proj/k_proj/v_proj/o_proj, "
            "mlp.gate_proj/up_proj/down_proj) nor BERT-style ones (attention.self.query/key/value, "
            "attention.output.dense, intermediate.dense, output.dense); prune_structured supports those "
            "transformers architectures"
        )
    names = {id(m): n for n, m in model.named_modules()}
    blocks = []
    for i, layer in enumerate(layers):
        missing = [p for p in paths(layout) if not isinstance(_get(layer, p), nn.Linear)]
        if missing:
            raise PruneTypeError(f"block {i} of {type(model).__name__} has no nn.Linear at {', '.join(missing)}")
        blocks.append(
            Block(
                name=names[id(layer)], layer=layer, attn=_get(layer, layout.attn),
                q=_get(layer, layout.q), k=_get(layer, layout.k), v=_get(layer, layout.v), o=_get(layer, layout.o),
                mlp=_get(layer, layout.mlp), mlp_in=tuple(_get(layer, p) for p in layout.mlp_in),
                mlp_out=_get(layer, layout.mlp_out),
            )
        )
    return layout, blocks


def model_config(model: nn.Module) -> Any:
    """The model's ``transformers`` config; :class:`PruneTypeError` without head and MLP sizes."""
    config = getattr(model, "config", None)
    missing = [a for a in ("num_attention_heads", "intermediate_size") if not isinstance(getattr(config, a, None), int)]
    if missing:
        raise PruneTypeError(
            f"{type(model).__name__} has no transformers config with {' and '.join(missing)}; "
            "prune_structured expects a transformers model such as LlamaForCausalLM or BertModel"
        )
    return config


def geometry(config: Any, blocks: list[Block]) -> Geometry:
    """The per-block sizes of the config; :class:`PruneError` when a block's weights do not match them."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    neurons = config.intermediate_size
    q_out = blocks[0].q.out_features
    if heads < 1 or q_out % heads or heads % kv:
        raise PruneError(
            f"the config's num_attention_heads={heads} and num_key_value_heads={kv} do not fit "
            f"q_proj's {q_out} outputs (need q outputs = heads x head_dim, heads a multiple of kv heads)"
        )
    d = q_out // heads
    for b in blocks:
        shapes = {
            "query out": (b.q.out_features, heads * d), "key out": (b.k.out_features, kv * d),
            "value out": (b.v.out_features, kv * d), "attention output in": (b.o.in_features, heads * d),
            "MLP output in": (b.mlp_out.in_features, neurons),
            **{f"MLP input {i} out": (m.out_features, neurons) for i, m in enumerate(b.mlp_in)},
        }
        bad = [f"{k} {got} (expected {want})" for k, (got, want) in shapes.items() if got != want]
        if bad:
            raise PruneError(
                f"{b.name} does not match the config ({heads} heads, {kv} kv heads, head size {d}, "
                f"intermediate_size {neurons}): {', '.join(bad)}"
            )
    return Geometry(heads, kv, d, neurons)


# ------------------------------------------------------------------------------ checks


def check_unmasked(blocks: list[Block]) -> None:
    """:class:`PruneError` when a linear of a block is parametrized (a mask not yet committed)."""
    for b in blocks:
        for lin in b.linears().values():
            names = ", ".join(parametrized_names(lin))
            if names:
                raise PruneError(
                    f"a linear layer of {b.name} has a parametrization on {names} (a prunekit mask?); "
                    "call prunekit.commit(model) first to make masks permanent, then prune_structured"
                )


def _config_rejection(config: Any, values: dict[str, int]) -> str | None:
    """Why the model's config class refuses ``values`` at save/load time, or ``None`` if it accepts them.

    ``save_pretrained`` and ``from_pretrained`` run the config's validation (``LlamaConfig``
    for instance insists that ``hidden_size`` is a multiple of ``num_attention_heads``).
    A config that fails its own validation as it is cannot tell, so it accepts everything.
    """
    if not callable(getattr(config, "validate", None)):
        return None
    try:
        copy.deepcopy(config).validate()
    except Exception:  # noqa: BLE001 - the config is already invalid: nothing to compare with
        return None
    candidate = copy.deepcopy(config)
    for k, v in values.items():
        setattr(candidate, k, v)
    try:
        candidate.validate()
    except Exception as e:  # noqa: BLE001 - any validation failure means "not loadable"
        return " ".join(str(e).split())
    return None


def _units_removed(value: float, units: int) -> int:
    """How many of ``units`` a fraction removes, rounded down (with a tolerance for 1/3-style floats)."""
    return int(math.floor(value * units + 1e-9))


def plan_heads(heads: float, gqa: str, geom: Geometry, config: Any, layout: Layout, model: nn.Module) -> int:
    """Units removed per block: KV groups (``groups``) or query heads per KV group (``queries``)."""
    if heads == 0:
        return 0
    if not layout.heads_reloadable:
        raise PruneError(
            f"heads={heads!r}: {type(model).__name__} derives its head size from hidden_size / num_attention_heads, "
            "so a model with fewer heads could not be reloaded with from_pretrained; use heads=0 and prune neurons="
        )
    if gqa == "groups":
        units = geom.kv_heads
        unit = "KV group" if geom.group > 1 else "attention head"
        grain = f"this model has {units} {unit}s per layer, so heads must be a multiple of 1/{units}"
    else:
        units = geom.group
        unit = "query head per KV group"
        grain = (
            f"this model has {units} query head{'s' if units > 1 else ''} per KV group, "
            f"so with gqa='queries' heads must be a multiple of 1/{units}"
        )
        if units == 1:
            grain += "; use gqa='groups' to remove whole heads"
    r = _units_removed(heads, units)
    if r == 0:
        raise PruneError(f"heads={heads!r} removes no {unit}: {grain}")
    if r >= units:
        raise PruneError(f"heads={heads!r} would remove every {unit}; at least one must stay, so heads <= {Fraction(units - 1, units)}")

    def values(n: int) -> dict[str, int]:
        h, kv = (geom.heads - n * geom.group, geom.kv_heads - n) if gqa == "groups" else (geom.heads - n * geom.kv_heads, geom.kv_heads)
        return {"num_attention_heads": h, "num_key_value_heads": kv, "head_dim": geom.head_dim}

    for n in range(r, 0, -1):
        if _config_rejection(config, values(n)) is None:
            return n
    allowed = [str(Fraction(n, units)) for n in range(r + 1, units) if _config_rejection(config, values(n)) is None]
    hint = f"fractions it accepts here: {', '.join(allowed)}" if allowed else "no smaller fraction is accepted either"
    raise PruneError(
        f"heads={heads!r} would leave {values(r)['num_attention_heads']} attention heads per layer, which "
        f"{type(config).__name__} rejects ({_config_rejection(config, values(r))}); {hint}"
    )


def plan_neurons(neurons: float, geom: Geometry, config: Any) -> int:
    """MLP neurons removed per block."""
    if neurons == 0:
        return 0
    r = _units_removed(neurons, geom.neurons)
    grain = f"this model has {geom.neurons} MLP neurons per layer, so neurons must be at least 1/{geom.neurons}"
    if r == 0:
        raise PruneError(f"neurons={neurons!r} removes no MLP neuron: {grain}")
    if r >= geom.neurons:
        raise PruneError(f"neurons={neurons!r} would remove every MLP neuron; at least one must stay")
    why = _config_rejection(config, {"intermediate_size": geom.neurons - r})
    if why is not None:
        raise PruneError(f"neurons={neurons!r} would leave intermediate_size={geom.neurons - r}, which {type(config).__name__} rejects ({why})")
    return r
