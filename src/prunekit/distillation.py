"""Recovery by distillation: the dense model teaches the pruned one, on any inputs.

:func:`distill` trains ``student`` (the pruned model: masks stay enforced, compacted shapes
stay as they are) to reproduce ``teacher``'s outputs (the dense model, frozen) with
:func:`prunekit.train.fit`, so it has the same optimizers, progress line, callbacks and
checkpoint/resume. The loss on each batch is

    (1 - alpha) * T² * KL(softmax(teacher / T) || softmax(student / T))
    + alpha * cross_entropy(student, labels)
    + feature_weight * Σ MSE(student feature, teacher feature)

with ``T`` the temperature (Hinton et al., 2015). With ``alpha=0`` (the default) labels are
never read: unlabelled inputs are enough. Outputs are logits ``[..., classes]``: a
``transformers`` output's ``.logits`` is used, and sequence outputs ``[batch, tokens,
vocab]`` are compared token by token.

Models whose outputs are not logits (sentence encoders, regressors) take
``objective="cosine"`` (``1 - cos`` between the two outputs' last axes, averaged over rows)
or ``objective="mse"`` in place of the KL term.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import validate as V
from .batches import device_of
from .distill_data import NO_LABEL as NO_LABEL  # public here, as before
from .distill_data import as_pairs
from .errors import PruneError, PruneTypeError
from .train import fit

__all__ = ["BATCH_NORMS", "OBJECTIVES", "Budget", "distill", "distillation_loss", "output_loss", "recalibrate_bn"]

OBJECTIVES = ("kl", "cosine", "mse")


def _logits(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", out)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if not isinstance(logits, torch.Tensor):
        raise PruneTypeError(f"the models must return logits (a tensor, or an object with .logits); got {type(out).__name__}")
    return logits


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, averaged over every row (sample
    or token) of logits ``[..., classes]``."""
    s = student.float().reshape(-1, student.shape[-1]) / temperature
    t = teacher.float().reshape(-1, teacher.shape[-1]) / temperature
    if s.shape != t.shape:
        raise PruneError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ in shape")
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True, reduction="batchmean")
    return kl * temperature**2


def output_loss(student: torch.Tensor, teacher: torch.Tensor, objective: str, temperature: float = 1.0) -> torch.Tensor:
    """The distance between two outputs ``[..., features]`` under ``objective``: ``"kl"``
    (:func:`distillation_loss`), ``"cosine"`` (mean of ``1 - cos`` over rows) or ``"mse"``."""
    if objective == "kl":
        return distillation_loss(student, teacher, temperature)
    if student.shape != teacher.shape:
        raise PruneError(f"student output {tuple(student.shape)} and teacher output {tuple(teacher.shape)} differ in shape")
    if objective == "cosine":
        return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()
    return F.mse_loss(student.float(), teacher.float())


class Budget:
    """Stops :func:`distill` once ``limit`` samples or tokens have been trained on.

    A :func:`prunekit.train.fit` callback: the loss counts every batch it sees, the step
    that reaches the limit is the last one. Its state (what was spent) is saved in
    checkpoints, so a resumed run stops where the uninterrupted one would.
    """

    def __init__(self, limit: int, unit: str) -> None:
        self.limit = V.integer(f"max_{unit}", limit, minimum=1)
        self.unit = unit
        self.spent = 0
        self.stop_training = False

    def count(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        x = args[0] if args else kwargs.get("input_ids")
        if not isinstance(x, torch.Tensor):
            raise PruneTypeError(f"max_{self.unit} needs tensor inputs; got {type(x).__name__}")
        if self.unit == "samples":
            self.spent += int(x.shape[0])
            return
        if x.is_floating_point():
            raise PruneError("max_tokens counts token ids and the inputs are not integer tensors; use max_samples=")
        mask = kwargs.get("attention_mask")
        self.spent += int(mask.sum()) if isinstance(mask, torch.Tensor) else int(x.numel())

    def on_step_end(self, step: int, model: nn.Module, loss: float) -> None:
        self.stop_training = self.spent >= self.limit

    def state_dict(self) -> dict[str, Any]:
        return {"spent": self.spent, "stop_training": self.stop_training}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.spent, self.stop_training = int(state["spent"]), bool(state["stop_training"])


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    optimizer: str | torch.optim.Optimizer = "adam",
    batch_size: int = 128,
    temperature: float = 2.0,
    alpha: float = 0.0,
    objective: str = "kl",
    features: Mapping[str, str] | None = None,
    feature_weight: float = 1.0,
    weight_decay: float = 0.0,
    seed: int | None = None,
    progress: bool = True,
    callbacks: Iterable[Any] = (),
    checkpoint_dir: Any = None,
    checkpoint_every: int = 0,
    resume: bool = True,
    max_samples: int | None = None,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """Train ``student`` in place to reproduce ``teacher`` on ``data``.

    Args:
        student: the pruned model (masked or compacted); its masks stay exact.
        teacher: the dense model, on the same device; never changed (eval mode, no gradients).
        data: a tensor of inputs (unlabelled), a Dataset of ``(x, y)`` or of inputs, an
            iterable of ``(x, y)`` batches or of input batches, or an ``(x, y)`` pair.
        epochs, lr, optimizer, batch_size, weight_decay, seed, progress, callbacks,
        checkpoint_dir, checkpoint_every, resume: as in :func:`prunekit.train.fit`.
        temperature: softens both distributions; > 0 (2 by default). Used by ``"kl"`` only.
        alpha: weight of the cross entropy with the labels, in ``[0, 1]``; 0 (default)
            reads no label. Needs ``objective="kl"`` (the outputs must be logits).
        objective: how outputs are compared: ``"kl"`` (logits, the default), ``"cosine"``
            (embeddings: ``1 - cos`` over the last axis) or ``"mse"``.
        features: ``{student module name: teacher module name}``: their outputs (same
            shape) are pulled together by mean squared error.
        feature_weight: the weight of the feature terms, >= 0.
        max_samples, max_tokens: a budget (at most one): stop after the step that reaches
            this many training samples, or tokens (token-id inputs; the attention mask's ones
            when one is passed), or after ``epochs``, whichever comes first.

    Returns:
        What :func:`prunekit.train.fit` returns, with ``"samples"`` or ``"tokens"`` (what
        was spent) when a budget was given.

    Raises:
        PruneError: a bad option, models on different devices, a feature module that does
            not exist or outputs of different shapes.
    """
    for name, m in (("student", student), ("teacher", teacher)):
        if not isinstance(m, nn.Module):
            raise PruneTypeError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")
    if student is teacher:
        raise PruneError("student and teacher are the same module; pass a copy of the dense model as the teacher")
    temperature = V.number("temperature", temperature, lo=0.0, lo_open=True, hint="e.g. 2")
    alpha = V.fraction("alpha", alpha, one=True, hint="the weight of the labels; 0 reads none")
    feature_weight = V.number("feature_weight", feature_weight, lo=0.0)
    objective = V.choice("objective", objective, OBJECTIVES)
    if alpha and objective != "kl":
        raise PruneError(f"alpha={alpha} reads labels through a cross entropy on logits; it needs objective='kl', "
                         f"not {objective!r}")
    if alpha and isinstance(data, torch.Tensor):
        raise PruneError(f"alpha={alpha} weighs a cross entropy on labels, but data is a tensor of inputs without "
                         "labels; pass (x, y) pairs, or use alpha=0")
    if device_of(student) != device_of(teacher):
        raise PruneError(f"student is on {device_of(student)} and teacher on {device_of(teacher)}; move them to one device")
    if max_samples is not None and max_tokens is not None:
        raise PruneError(f"give max_samples= or max_tokens=, not both (got {max_samples!r} and {max_tokens!r})")
    budget = None
    if max_samples is not None or max_tokens is not None:
        budget = Budget(max_samples, "samples") if max_samples is not None else Budget(max_tokens, "tokens")
    pairs = dict(features or {})
    s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
    missing = [f"student {s!r}" for s in pairs if s not in s_mods] + [f"teacher {t!r}" for t in pairs.values() if t not in t_mods]
    if missing:
        raise PruneError(f"features: no module {', '.join(missing)}; use names from model.named_modules()")

    seen: dict[str, Any] = {}
    s_feats: dict[str, torch.Tensor] = {}
    t_feats: dict[str, torch.Tensor] = {}
    t_dtype = next((p.dtype for p in teacher.parameters() if p.is_floating_point()), None)

    def before_student(module: nn.Module, args: tuple, kwargs: dict) -> None:
        # The teacher runs first, on copies: a student (or teacher) that changes its input in
        # place must not change what the other one reads.
        seen.update(args=args, kwargs=kwargs, teacher=None)
        if module.training:
            with torch.no_grad():
                seen["teacher"] = teacher(*_copies(args, t_dtype), **_copies(kwargs, t_dtype))

    hooks = [student.register_forward_pre_hook(before_student, with_kwargs=True)]
    for s_name, t_name in pairs.items():
        hooks.append(s_mods[s_name].register_forward_hook(lambda m, i, o, n=s_name: s_feats.__setitem__(n, _logits(o))))
        hooks.append(t_mods[t_name].register_forward_hook(lambda m, i, o, n=s_name: t_feats.__setitem__(n, _logits(o))))

    def loss(out: Any, y: torch.Tensor) -> torch.Tensor:
        if budget is not None and student.training:
            budget.count(seen["args"], seen["kwargs"])
        t_out = seen["teacher"]
        if t_out is None:  # the student ran in eval mode
            with torch.no_grad():
                t_out = teacher(*_copies(seen["args"], t_dtype), **_copies(seen["kwargs"], t_dtype))
        s_logits = _logits(out)
        total = (1.0 - alpha) * output_loss(s_logits, _logits(t_out), objective, temperature)
        if alpha:
            if bool((y == NO_LABEL).any()):
                raise PruneError(f"alpha={alpha} weighs a cross entropy on labels, but the data came without labels "
                                 "(a tensor of inputs, or batches/items that are bare inputs); pass (x, y) pairs, "
                                 "or use alpha=0")
            total = total + alpha * F.cross_entropy(s_logits.float().reshape(-1, s_logits.shape[-1]), y.reshape(-1))
        for name in pairs:
            s, t = s_feats[name], t_feats[name]
            if s.shape != t.shape:
                raise PruneError(f"features: student {name!r} gives {tuple(s.shape)}, teacher gives {tuple(t.shape)}; "
                                 "pair modules whose outputs have the same shape")
            total = total + feature_weight * F.mse_loss(s.float(), t.float())
        checked[0] = True
        return total

    was_training = teacher.training
    teacher.eval()
    checked = [False]  # set once a loss was computed: a refusal before that restores the buffers
    buffers = {k: v.detach().clone() for k, v in student.named_buffers()}
    try:
        history = fit(student, as_pairs(data), epochs=epochs, lr=lr, optimizer=optimizer, batch_size=batch_size,
                      loss_fn=loss, weight_decay=weight_decay, seed=seed, progress=progress,
                      callbacks=[*callbacks, *([budget] if budget is not None else [])],
                      checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume)
        if budget is not None:
            history[budget.unit] = budget.spent
        return history
    except PruneError:
        if not checked[0]:  # refused in the first loss: no step was taken, but BatchNorm statistics moved
            with torch.no_grad():
                for k, v in student.named_buffers():
                    if k in buffers:
                        v.copy_(buffers[k])
        raise
    finally:
        for h in hooks:
            h.remove()
        teacher.train(was_training)


def _copies(obj: Any, dtype: torch.dtype | None = None) -> Any:
    """``obj`` with every tensor in it (through tuples, lists and dicts) cloned, floating
    ones in ``dtype`` when given (a teacher kept in another precision)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if dtype is not None and obj.is_floating_point() and obj.dtype != dtype else obj.clone()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_copies(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _copies(v, dtype) for k, v in obj.items()}
    return obj


#: The norms `recalibrate_bn` re-estimates (and that `prunekit.latency.distortion` recalibrates).
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Any, *, batch_size: int = 128, max_batches: int | None = None) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``data`` (AdaBN), with no
    training: what flows into a BatchNorm changes when channels or weights before it are
    removed, and its stored statistics no longer fit. Needs inputs only (no labels).

    Each BatchNorm that tracks running statistics restarts them and averages them over the
    batches (cumulative average, ``momentum=None``); the rest of the model runs in eval mode
    (no dropout). A batch of one sample (a last, short batch) is skipped: it has no batch
    variance. Momentum and every module's train/eval mode are restored afterwards.

    Args:
        model: the model (masked or compacted), changed in place.
        data: a tensor of inputs (batched by ``batch_size``), a Dataset, or an iterable of
            input batches or ``(x, y)`` batches (the labels are ignored).
        max_batches: stop after this many batches (default: all).

    Returns:
        How many BatchNorm layers were re-estimated.

    Raises:
        PruneError: no BatchNorm tracks running statistics, a bad ``max_batches``, or no
            batch in ``data`` (the statistics are then left as they were).
    """
    if not isinstance(model, nn.Module):
        raise PruneTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    norms = [m for m in model.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats]
    if not norms:
        raise PruneError(f"{type(model).__name__} has no BatchNorm layer that tracks running statistics; "
                         "nothing to recalibrate")
    batch_size = V.integer("batch_size", batch_size, minimum=1)
    if max_batches is not None:
        max_batches = V.integer("max_batches", max_batches, minimum=1)
    from .batches import batches_of, split_batch

    device = device_of(model)
    modes = [(m, m.training) for m in model.modules()]
    saved = [(bn, bn.momentum, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for bn in norms]
    seen = 0
    try:
        model.eval()
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        single = 0
        for batch in batches_of(as_pairs(data), batch_size, shuffle=False, generator=None):
            x = split_batch(batch)[0]
            if isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == 1:
                single += 1  # one sample has no batch variance (BatchNorm1d refuses it): skipped
                continue
            model(x.to(device))
            seen += 1
            if max_batches is not None and seen >= max_batches:
                break
        if not seen:
            raise PruneError("data holds no batch of two or more samples" + (f" ({single} of one sample)" if single else "")
                             + "; the BatchNorm statistics were left as they were")
    except BaseException:
        for bn, _, mean, var, count in saved:
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(count)
        raise
    finally:
        for bn, momentum, *_ in saved:
            bn.momentum = momentum
        for m, training in modes:
            m.training = training
    return len(norms)
