"""The criterion interface and the context every criterion receives.

A criterion turns the model (and, for some, data) into importance scores, one tensor per
prunable weight: either **element** scores (same shape as the weight) or **channel** scores
(one value per output unit: conv filter / linear neuron). Higher means more important.
Granularities then turn element scores into unit scores with :meth:`Criterion.reduce`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import PruneError
from ..registry import set_base
from ..targets import Target, check_module, find_targets


@dataclass
class Context:
    """Everything a criterion may look at. Built by the pruner; criteria never mutate it."""

    model: nn.Module
    targets: list[Target]
    data: Iterable | None = None
    loss_fn: Callable[..., torch.Tensor] | None = None
    example_inputs: Any = None
    max_batches: int | None = None
    seed: int = 0
    cache: dict = field(default_factory=dict)
    #: input statistics gathered by the caller (a :class:`~prunekit.criteria.inputs.InputStatistics`):
    #: calibrated criteria read them instead of running ``model`` (adapters whose models
    #: torch cannot run, e.g. Keras on TensorFlow or JAX, gather them with their own forward)
    statistics: Any = None

    def batches(self) -> Iterable[tuple[Any, Any]]:
        """Yield ``(inputs, labels)`` pairs from ``data``, at most ``max_batches`` of them."""
        if self.data is None:
            raise PruneError("this criterion needs data: pass data=<iterable of (inputs, labels) batches>")
        if isinstance(self.data, torch.Tensor):
            raise PruneError("data must be an iterable of (inputs, labels) batches, not one tensor")
        n = 0
        for batch in self.data:
            if self.max_batches is not None and n >= self.max_batches:
                break
            if isinstance(batch, dict):
                inputs, labels = _split_dict(batch)
                if isinstance(inputs, dict):
                    _check_keywords(self.model, inputs)
            elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
                inputs, labels = batch[0], batch[1]
            elif isinstance(batch, (tuple, list)) and len(batch) == 1:
                inputs, labels = batch[0], None
            elif isinstance(batch, torch.Tensor):
                inputs, labels = batch, None
            else:
                raise PruneError(
                    f"each data batch must be (inputs, labels), a dict with inputs/labels, or a tensor; "
                    f"got {type(batch).__name__}"
                )
            n += 1
            yield inputs, labels
        if n == 0:
            raise PruneError("data yielded no batches; pass a non-empty iterable of (inputs, labels)")

    def forward_inputs(self) -> Iterable[Any]:
        """Inputs to run forward passes on: data batches, else the example inputs."""
        if self.data is not None:
            for inputs, _ in self.batches():
                yield inputs
        elif self.example_inputs is not None:
            yield self.example_inputs
        else:
            raise PruneError("this criterion needs inputs: pass data=<batches> or example_inputs=<tensor>")


_INPUT_KEYS, _LABEL_KEYS = ("inputs", "x"), ("labels", "y")


def _split_dict(batch: dict) -> tuple[Any, Any]:
    """``(inputs, labels)`` of a dict batch: ``{"inputs"/"x": ..., "labels"/"y": ...}`` gives
    the one input tensor; a dict with any other key is keyword arguments of the model's
    forward (``{"input_ids": ..., "attention_mask": ..., "labels": ...}``), labels taken out."""
    labels = next((batch[k] for k in _LABEL_KEYS if k in batch), None)
    if set(batch) <= set(_INPUT_KEYS + _LABEL_KEYS):
        inputs = next((batch[k] for k in _INPUT_KEYS if k in batch), None)
        if inputs is None:
            raise PruneError(f"a dict batch needs an 'inputs' (or 'x') key, or the model's keyword arguments; "
                             f"got keys {sorted(batch)}")
        return inputs, labels
    return {k: v for k, v in batch.items() if k not in _LABEL_KEYS}, labels


def _check_keywords(model: nn.Module, inputs: dict) -> None:
    """Refuse keyword inputs ``model.forward`` does not take (a misspelt ``"input"``)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(k for k in inputs if k not in params)
    if unknown:
        raise PruneError(
            f"a dict batch is the model's keyword arguments unless its keys are 'inputs'/'x' and 'labels'/'y'; "
            f"{type(model).__name__}.forward takes no {', '.join(map(repr, unknown))} (it takes "
            f"{', '.join(map(repr, params))}); got keys {sorted(inputs)}")


def call_model(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def batch_rows(inputs: Any) -> int | None:
    """The batch size of a model's inputs: dimension 0 of the first tensor with one
    (in argument order, through tuples, lists and dicts); ``None`` when there is none."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() > 0 else None
    items = inputs.values() if isinstance(inputs, dict) else inputs if isinstance(inputs, (tuple, list)) else ()
    for item in items:
        rows = batch_rows(item)
        if rows is not None:
            return rows
    return None


def rows_of(inputs: Any, index: slice | torch.Tensor, rows: int | None = None) -> Any:
    """``inputs`` with ``index`` applied along dimension 0 of every tensor that has the
    batch's rows (:func:`batch_rows`); others (an ``(L, L)`` attention mask, a scalar) go
    as they are."""
    rows = batch_rows(inputs) if rows is None else rows
    if isinstance(inputs, torch.Tensor):
        return inputs[index] if inputs.dim() > 0 and inputs.shape[0] == rows else inputs
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(rows_of(t, index, rows) for t in inputs)
    if isinstance(inputs, dict):
        return {k: rows_of(v, index, rows) for k, v in inputs.items()}
    return inputs


class Criterion:
    """Base class: subclass, implement :meth:`scores`, decorate with ``@register``.

    Class attributes:
        needs_data: the criterion runs the model on ``data`` (or example inputs).
        needs_loss: the criterion differentiates ``loss_fn(model(x), y)``.
        level: ``"element"`` (scores shaped like the weight) or ``"channel"`` (one score
            per output unit; only channel granularity accepts these).
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    needs_loss: ClassVar[bool] = False
    level: ClassVar[str] = "element"
    #: granularity names the criterion works with; ``None``: every one its level allows
    granularities: ClassVar[tuple[str, ...] | None] = None
    #: ``finalize`` changes the weights the masks keep (SparseGPT's sweep)
    updates_weights: ClassVar[bool] = False
    #: what a *local* criterion reads besides one weight matrix: ``"none"``, the input
    #: columns' sums of squares (``"squares"``), their Gram matrix (``"gram"``), or the sums
    #: of squares and the gradient of the region's output norm (``"regional"``, passed to
    #: ``matrix_scores`` as ``gradient``); ``None``:
    #: not local (it needs the whole model). Local criteria also run block by block in
    #: :func:`prunekit.llm.prune_llm`, which lists them as its methods.
    statistics: ClassVar[str | None] = None

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        """Return ``{target_name: scores}``; higher = more important."""
        raise NotImplementedError

    def matrix_scores(self, weight2d: torch.Tensor, squares: torch.Tensor | None) -> torch.Tensor:
        """Local criteria: float32 scores of a weight matrix ``[out, cols]`` from the sums
        of squares ``[groups, cols]`` of its input columns (``None`` when ``statistics`` is
        ``"none"``)."""
        raise NotImplementedError(f"criterion {self.name!r} is not local")

    def check(self) -> None:
        """Validate the criterion's options; raise :class:`PruneError` naming the bad one.
        Runs before any model is touched. Nothing to check by default."""

    def finalize(self, ctx: Context, masks: dict[str, torch.Tensor], nm: tuple[int, int] | None) -> dict[str, torch.Tensor]:
        """After the allocation chose ``masks`` (``{target: keep}``), return the masks to
        apply; ``nm`` is the N:M pattern or ``None``. The default keeps them. A criterion
        with ``updates_weights`` may rewrite the kept weights here (and must check
        everything before it writes anything)."""
        return masks

    def reduce(self, scores: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """Combine element scores of a group (channel, block) into one score. Sum by default."""
        return scores.sum(dim=dims)

    def get_config(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __call__(
        self,
        model: nn.Module,
        *,
        data: Iterable | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        example_inputs: Any = None,
        ignore: Iterable[str] = (),
        max_batches: int | None = None,
        seed: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Score every prunable weight of ``model`` without changing it."""
        check_module(model)
        ctx = Context(model, find_targets(model, ignore), data, loss_fn, example_inputs, max_batches, seed)
        check_requirements(self, ctx)
        with preserved(model):
            return self.scores(ctx)


def check_requirements(criterion: Criterion, ctx: Context) -> None:
    """Raise a clear error when a data-hungry criterion is missing data or a loss."""
    if criterion.needs_loss:
        if ctx.data is None:
            raise PruneError(
                f"criterion {criterion.name!r} needs data: pass data=<iterable of (inputs, labels) batches>"
            )
        if ctx.loss_fn is None:
            raise PruneError(
                f"criterion {criterion.name!r} needs a loss: pass loss_fn=<callable(outputs, labels) -> scalar>, "
                "e.g. torch.nn.functional.cross_entropy"
            )
        if not callable(ctx.loss_fn):
            raise PruneError(f"loss_fn must be callable, got {type(ctx.loss_fn).__name__}")
    elif criterion.needs_data and ctx.data is None and ctx.example_inputs is None:
        raise PruneError(
            f"criterion {criterion.name!r} needs data: pass data=<iterable of batches> (or example_inputs)"
        )


class preserved:
    """Context manager: run criteria in eval mode, leave mode, grads and requires_grad as found."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.modes = {m: m.training for m in self.model.modules()}
        self.params = list(self.model.parameters())
        self.grads = [p.grad for p in self.params]
        self.req = [p.requires_grad for p in self.params]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes.items():
            m.training = mode
        for p, g, r in zip(self.params, self.grads, self.req):
            p.grad = g
            p.requires_grad_(r)


set_base("criterion", Criterion)
