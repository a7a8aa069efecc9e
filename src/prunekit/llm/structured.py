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
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from ..coverage import Coverage
from ..errors import PruneError, PruneTypeError
from ..masking import parametrized_names
from .blocks import block_output, capture_first_inputs, check_tokens, transformer_blocks
from .scope import block_coverage

__all__ = ["CRITERIA", "GQA_MODES", "StructuredLayerReport", "StructuredReport", "prune_structured"]

CRITERIA = ("magnitude", "wanda")
GQA_MODES = ("groups", "queries")


# ------------------------------------------------------------------------------ report


@dataclass
class StructuredLayerReport:
    """What :func:`prune_structured` did to one block.

    Attributes:
        name: the block's module name (``"model.layers.0"``).
        heads: query heads ``(before, after)``.
        kv_heads: key/value heads ``(before, after)``.
        neurons: MLP intermediate neurons ``(before, after)``.
        kept_heads: indices (original numbering) of the query heads kept, ascending.
        kept_kv_heads: indices of the key/value heads kept, ascending.
        kept_neurons: indices of the MLP neurons kept, ascending.
        seconds: time spent on this block (statistics, scores, slicing, recomputing outputs).
    """

    name: str
    heads: tuple[int, int]
    kv_heads: tuple[int, int]
    neurons: tuple[int, int]
    kept_heads: list[int]
    kept_kv_heads: list[int]
    kept_neurons: list[int]
    seconds: float


@dataclass
class StructuredReport:
    """What :func:`prune_structured` did.

    Attributes:
        criterion: ``"magnitude"`` or ``"wanda"``.
        gqa: ``"groups"`` or ``"queries"``.
        heads_requested, neurons_requested: the fractions asked for.
        heads_removed: fraction of each block's query heads actually removed (the request
            rounded down to whole KV groups, or whole query heads per group, that the config
            accepts).
        neurons_removed: fraction of each block's MLP neurons actually removed.
        parameters_before, parameters_after: distinct parameters of the model (tied weights once).
        layers: one entry per block, in model order.
        seconds: wall time of the whole call.
        calibration_tokens: tokens the statistics were computed on (0 for magnitude).
        coverage: the block linears in scope; embeddings and the LM head left dense.
    """

    criterion: str
    gqa: str
    heads_requested: float
    neurons_requested: float
    heads_removed: float
    neurons_removed: float
    parameters_before: int
    parameters_after: int
    layers: list[StructuredLayerReport] = field(default_factory=list)
    seconds: float = 0.0
    calibration_tokens: int = 0
    coverage: Coverage | None = None

    def summary(self) -> str:
        """A short text: totals, then one line per block with its kept heads."""
        first = self.layers[0]
        removed = 1 - self.parameters_after / self.parameters_before
        lines = [
            f"structured {self.criterion} (gqa={self.gqa!r}): {len(self.layers)} blocks, {self.seconds:.2f} s",
            f"  heads per block    {first.heads[0]} -> {first.heads[1]} (kv {first.kv_heads[0]} -> {first.kv_heads[1]}),"
            f" removed {self.heads_removed:.2%} (requested {self.heads_requested:.2%})",
            f"  neurons per block  {first.neurons[0]} -> {first.neurons[1]},"
            f" removed {self.neurons_removed:.2%} (requested {self.neurons_requested:.2%})",
            f"  parameters         {self.parameters_before:,} -> {self.parameters_after:,} ({removed:.2%} removed)",
        ]
        for r in self.layers:
            lines.append(f"  {r.name:<22} kept heads {r.kept_heads}  kv {r.kept_kv_heads}  {r.seconds:7.3f} s")
        return "\n".join(lines)


# ---------------------------------------------------------------------- architectures


@dataclass(frozen=True)
class _Layout:
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
    _Layout(
        "llama", "self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", heads_reloadable=True,
    ),
    _Layout(
        "bert", "attention.self", "attention.self.query", "attention.self.key", "attention.self.value",
        "attention.output.dense", "intermediate", ("intermediate.dense",), "output.dense", heads_reloadable=False,
    ),
)


@dataclass
class _Block:
    """The modules of one block that :func:`prune_structured` changes."""

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
class _Geometry:
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


def _resolve_blocks(model: nn.Module, layers: nn.ModuleList) -> tuple[_Layout, list[_Block]]:
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
            _Block(
                name=names[id(layer)], layer=layer, attn=_get(layer, layout.attn),
                q=_get(layer, layout.q), k=_get(layer, layout.k), v=_get(layer, layout.v), o=_get(layer, layout.o),
                mlp=_get(layer, layout.mlp), mlp_in=tuple(_get(layer, p) for p in layout.mlp_in),
                mlp_out=_get(layer, layout.mlp_out),
            )
        )
    return layout, blocks


def _model_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    missing = [a for a in ("num_attention_heads", "intermediate_size") if not isinstance(getattr(config, a, None), int)]
    if missing:
        raise PruneTypeError(
            f"{type(model).__name__} has no transformers config with {' and '.join(missing)}; "
            "prune_structured expects a transformers model such as LlamaForCausalLM or BertModel"
        )
    return config


def _geometry(config: Any, blocks: list[_Block]) -> _Geometry:
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
    return _Geometry(heads, kv, d, neurons)


# ------------------------------------------------------------------------------ checks


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PruneTypeError(f"{name} must be a number in [0, 1), the fraction to remove; got {type(value).__name__}: {value!r}")
    if not (0.0 <= float(value) < 1.0):
        raise PruneError(f"{name}={value!r} must be in [0, 1): the fraction of units to remove per block")
    return float(value)


def _check_choice(name: str, value: object, accepted: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in accepted:
        raise PruneError(f"{name}={value!r} is not supported; use one of {', '.join(map(repr, accepted))}")
    return value


def _check_unmasked(blocks: list[_Block]) -> None:
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


def _plan_heads(heads: float, gqa: str, geom: _Geometry, config: Any, layout: _Layout, model: nn.Module) -> int:
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


def _plan_neurons(neurons: float, geom: _Geometry, config: Any) -> int:
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


# ---------------------------------------------------------------------------- scoring


class _InputNorms:
    """Sum of squares of every input feature of a linear layer, filled by a forward hook."""

    def __init__(self, module: nn.Linear) -> None:
        self.sq = torch.zeros(module.in_features, dtype=torch.float64, device=module.weight.device)

    def hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        x = inputs[0].detach()
        self.sq += x.reshape(-1, x.shape[-1]).to(torch.float32).square().sum(0).to(torch.float64)

    def norms(self) -> torch.Tensor:
        """``||X_j||_2`` per input feature, float32."""
        return self.sq.sqrt().to(torch.float32)


def _sq_rows(lin: nn.Linear, units: int) -> torch.Tensor:
    """Sum of squares of the weights (and bias) of each of ``units`` equal slices of output rows."""
    w = lin.weight.detach().to(torch.float32)
    s = w.square().sum(1)
    if lin.bias is not None:
        s = s + lin.bias.detach().to(torch.float32).square()
    return s.reshape(units, -1).sum(1)


def _sq_cols(lin: nn.Linear, units: int) -> torch.Tensor:
    """Sum of squares of the weights of each of ``units`` equal slices of input columns."""
    return lin.weight.detach().to(torch.float32).square().sum(0).reshape(units, -1).sum(1)


def _wanda_cols(lin: nn.Linear, norms: torch.Tensor, units: int) -> torch.Tensor:
    """``sum_i |W[i, j]| * ||X_j||`` summed over each of ``units`` equal slices of input columns."""
    return (lin.weight.detach().to(torch.float32).abs().sum(0) * norms).reshape(units, -1).sum(1)


def _head_scores(b: _Block, geom: _Geometry, criterion: str, gqa: str, o_norms: torch.Tensor | None) -> torch.Tensor:
    """One score per query head (``queries``) or per KV group (``groups``)."""
    if criterion == "wanda":
        assert o_norms is not None
        per_head = _wanda_cols(b.o, o_norms, geom.heads)
        return per_head if gqa == "queries" else per_head.reshape(geom.kv_heads, geom.group).sum(1)
    per_head = _sq_rows(b.q, geom.heads) + _sq_cols(b.o, geom.heads)
    if gqa == "queries":
        return per_head.sqrt()
    kv = _sq_rows(b.k, geom.kv_heads) + _sq_rows(b.v, geom.kv_heads)
    return (per_head.reshape(geom.kv_heads, geom.group).sum(1) + kv).sqrt()


def _neuron_scores(b: _Block, geom: _Geometry, criterion: str, down_norms: torch.Tensor | None) -> torch.Tensor:
    if criterion == "wanda":
        assert down_norms is not None
        return _wanda_cols(b.mlp_out, down_norms, geom.neurons)
    sq = sum((_sq_rows(m, geom.neurons) for m in b.mlp_in), _sq_cols(b.mlp_out, geom.neurons))
    return sq.sqrt()


def _top(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores, ascending (ties go to the lower index)."""
    return sorted(torch.argsort(scores, descending=True, stable=True)[:keep].tolist())


def _kept_heads(scores: torch.Tensor, geom: _Geometry, gqa: str, removed: int) -> tuple[list[int], list[int]]:
    """``(kept query heads, kept kv heads)`` for one block."""
    if gqa == "groups":
        kv = _top(scores, geom.kv_heads - removed)
        return [g * geom.group + i for g in kv for i in range(geom.group)], kv
    per_group = scores.reshape(geom.kv_heads, geom.group)
    q = [g * geom.group + i for g in range(geom.kv_heads) for i in _top(per_group[g], geom.group - removed)]
    return q, list(range(geom.kv_heads))


# ---------------------------------------------------------------------------- surgery


def _slices(units: list[int], size: int, device: torch.device) -> torch.Tensor:
    """Row/column indices of the kept ``units``, each ``size`` wide."""
    idx = torch.tensor(units, dtype=torch.long, device=device)
    return (idx.unsqueeze(1) * size + torch.arange(size, device=device)).reshape(-1)


def _keep_rows(lin: nn.Linear, idx: torch.Tensor) -> None:
    lin.weight = nn.Parameter(lin.weight.detach()[idx].clone(), requires_grad=lin.weight.requires_grad)
    if lin.bias is not None:
        lin.bias = nn.Parameter(lin.bias.detach()[idx].clone(), requires_grad=lin.bias.requires_grad)
    lin.out_features = int(idx.numel())


def _keep_cols(lin: nn.Linear, idx: torch.Tensor) -> None:
    lin.weight = nn.Parameter(lin.weight.detach()[:, idx].clone(), requires_grad=lin.weight.requires_grad)
    lin.in_features = int(idx.numel())


def _set_ints(module: nn.Module, values: dict[str, int]) -> None:
    """Update the integer attributes of ``values`` that ``module`` has (not all families keep all)."""
    for name, value in values.items():
        if isinstance(getattr(module, name, None), int) and not isinstance(getattr(module, name), bool):
            setattr(module, name, value)


def _remove_heads(b: _Block, geom: _Geometry, q_kept: list[int], kv_kept: list[int]) -> None:
    dev = b.q.weight.device
    q_idx = _slices(q_kept, geom.head_dim, dev)
    _keep_rows(b.q, q_idx)
    _keep_cols(b.o, q_idx)
    if len(kv_kept) < geom.kv_heads:
        kv_idx = _slices(kv_kept, geom.head_dim, dev)
        _keep_rows(b.k, kv_idx)
        _keep_rows(b.v, kv_idx)
    heads, kv = len(q_kept), len(kv_kept)
    _set_ints(b.attn, {"num_heads": heads, "num_key_value_heads": kv, "num_key_value_groups": heads // kv})


def _remove_neurons(b: _Block, kept: list[int]) -> None:
    idx = torch.tensor(kept, dtype=torch.long, device=b.mlp_out.weight.device)
    for lin in b.mlp_in:
        _keep_rows(lin, idx)
    _keep_cols(b.mlp_out, idx)
    _set_ints(b.mlp, {"intermediate_size": len(kept)})


def _configs(model: nn.Module) -> list[Any]:
    """Every distinct config object the model and its modules hold (usually one, shared)."""
    found = {id(model.config): model.config}
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "num_attention_heads"):
            found.setdefault(id(c), c)
    return list(found.values())


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
    heads = _check_fraction("heads", heads)
    neurons = _check_fraction("neurons", neurons)
    criterion = _check_choice("criterion", criterion, CRITERIA)
    gqa = _check_choice("gqa", gqa, GQA_MODES)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PruneError(f"batch_size={batch_size!r} must be a positive integer")
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
    layout, blocks = _resolve_blocks(model, layers)
    config = _model_config(model)
    _check_unmasked(blocks)
    geom = _geometry(config, blocks)
    head_units = _plan_heads(heads, gqa, geom, config, layout, model)
    neuron_units = _plan_neurons(neurons, geom, config)
    if criterion == "wanda":
        if calibration is None:
            raise PruneError("criterion='wanda' needs calibration token ids [n, seqlen]; use criterion='magnitude' without data")
        ids: torch.Tensor | None = check_tokens("calibration", calibration)
        vocab = getattr(config, "vocab_size", None)
        if isinstance(vocab, int) and not (0 <= int(ids.min()) and int(ids.max()) < vocab):
            raise PruneError(
                f"calibration holds token ids from {int(ids.min())} to {int(ids.max())}; the vocabulary is 0..{vocab - 1}"
            )
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
        chunks = capture_first_inputs(model, layers[0], ids, batch_size) if ids is not None else []
        for li, b in enumerate(blocks):
            t0 = time.perf_counter()
            o_stats = _InputNorms(b.o) if ids is not None and head_units else None
            down_stats = _InputNorms(b.mlp_out) if ids is not None and neuron_units else None
            handles = [lin.register_forward_hook(s.hook) for lin, s in ((b.o, o_stats), (b.mlp_out, down_stats)) if s is not None]
            try:
                for hidden, args, kwargs in chunks:
                    block_output(b.layer, hidden, args, kwargs)
            finally:
                for h in handles:
                    h.remove()
            q_kept, kv_kept = list(range(geom.heads)), list(range(geom.kv_heads))
            if head_units:
                scores = _head_scores(b, geom, criterion, gqa, o_stats.norms() if o_stats is not None else None)
                q_kept, kv_kept = _kept_heads(scores, geom, gqa, head_units)
                _remove_heads(b, geom, q_kept, kv_kept)
            n_kept = list(range(geom.neurons))
            if neuron_units:
                scores = _neuron_scores(b, geom, criterion, down_stats.norms() if down_stats is not None else None)
                n_kept = _top(scores, geom.neurons - neuron_units)
                _remove_neurons(b, n_kept)
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
        for c in _configs(model):
            for k, v in values.items():
                setattr(c, k, v)
    finally:
        model.train(was_training)
    report.parameters_after = _parameter_count(model)
    report.seconds = time.perf_counter() - start
    names = {id(m): n for n, m in model.named_modules()}
    in_blocks = [(names[id(m)], m) for layer in layers for m in layer.modules() if isinstance(m, nn.Linear)]
    report.coverage = block_coverage(model, in_blocks, [names[id(l)] for l in layers], "prune_structured")
    return report
