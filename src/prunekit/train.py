"""A small train/evaluate loop for fine-tuning models before and after pruning.

Masked models (``torch.nn.utils.parametrize``) train as they are: the loop builds its
optimizer from ``model.parameters()`` and never re-creates a parameter.

With ``checkpoint_dir``, :func:`fit` keeps ``last.pt`` there, written atomically, and a
later call resumes from it to the same final state an uninterrupted run reaches (the file
format, writing and restoring: :mod:`prunekit.checkpoint`). The optimizers it builds by name:
:mod:`prunekit.optimizers`.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .batches import Data, batches_of, device_of, split_batch
from .checkpoint import CHECKPOINT_FILE, load_checkpoint, restore_checkpoint, rng_state, set_rng_state, write_checkpoint
from .errors import PruneError, PruneTypeError
from .optimizers import OPTIMIZERS, make_optimizer
from .validate import integer, number

__all__ = ["CHECKPOINT_FILE", "OPTIMIZERS", "device_of", "evaluate", "fit", "load_checkpoint", "make_optimizer", "set_seed"]


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch, for reproducible runs.

    Args:
        seed: an int in ``[0, 2**32)``.

    Example:
        >>> set_seed(0)
    """
    seed = integer("seed", seed, minimum=0, maximum=2**32 - 1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    # Per module, because callers sometimes keep e.g. BatchNorm frozen inside a training model.
    return [(m, m.training) for m in model.modules()]


def _restore(modes: list[tuple[nn.Module, bool]]) -> None:
    for m, training in modes:
        m.training = training


def evaluate(
    model: nn.Module,
    data: Data,
    *,
    batch_size: int = 1000,
    device: str | torch.device = "cpu",
) -> float:
    """Top-1 accuracy of ``model`` on ``data``, in eval mode and without gradients.

    The train/eval mode of every submodule is restored afterwards. The model is not moved:
    it must already live on ``device``, where the batches are sent.

    Args:
        model: a classifier returning logits ``(N, num_classes)``.
        data: a Dataset of ``(x, y)``, an iterable of ``(x, y)`` batches (e.g. a
            DataLoader) or one ``(x, y)`` pair of tensors.
        batch_size: batch size when ``data`` is a Dataset.
        device: where the batches are evaluated.

    Returns:
        The fraction of correct predictions, in ``[0, 1]``.

    Example:
        >>> from prunekit import datasets, zoo
        >>> evaluate(zoo.create("mnistnet", pretrained=True), datasets.load_mnist("test"))
        0.9905
    """
    if not isinstance(model, nn.Module):
        raise PruneTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    batch_size = integer("batch_size", batch_size, minimum=1)
    device = torch.device(device)
    modes = _modes(model)
    correct = total = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches_of(data, batch_size, shuffle=False, generator=None):
                x, y = split_batch(batch)
                x, y = x.to(device), y.to(device)
                pred = model(x).argmax(dim=1)
                correct += int((pred == y).sum())
                total += int(y.numel())
    finally:
        _restore(modes)
    if total == 0:
        raise PruneError("cannot evaluate on empty data")
    return correct / total


def _progress_bar(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        # A bar written to a log file or a pipe is noise; show it only on a terminal.
        disable=not (enabled and console.is_terminal),
    )


def _stop_requested(callbacks: list[Any], model: nn.Module | None = None) -> bool:
    stop = any(bool(getattr(cb, "stop_training", False)) for cb in callbacks)
    if isinstance(model, nn.parallel.DistributedDataParallel):  # one rank stopping stops them all: a rank
        flag = torch.tensor([float(stop)], device=next(model.parameters()).device)  # left alone would block
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # in its next gradient reduction
        stop = bool(flag.item())
    return stop


def fit(
    model: nn.Module,
    data: Data,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    optimizer: str | torch.optim.Optimizer = "adam",
    batch_size: int = 128,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    weight_decay: float = 0.0,
    seed: int | None = None,
    progress: bool = True,
    callbacks: Iterable[Any] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: bool = True,
) -> dict[str, Any]:
    """Train ``model`` in place on ``data``.

    Batches go to the device of the model's parameters. The train/eval mode of every
    submodule is restored at the end.

    Callbacks are objects with any of these methods, called when present:
    ``on_train_begin(model)`` once before the first step;
    ``on_step_end(step, model, loss)`` after each optimizer step, where ``step`` is the
    0-based index of that step counted over the whole run (so ``step + 1`` steps are done)
    and ``loss`` a float; ``on_epoch_end(epoch, model, logs)`` after each epoch, where
    ``epoch`` is 0-based and ``logs`` holds ``loss`` (mean over the epoch), ``time``
    (seconds) and ``steps`` (done so far).

    Early stop: a callback that sets its attribute ``stop_training`` to True (such as
    :class:`prunekit.callbacks.AccuracyFloor`, which evaluates on held-out data every
    epoch or every N steps and stops once accuracy falls below a floor) ends the run after
    the current step: the rest of that epoch is skipped, the epoch is closed as usual
    (``on_epoch_end`` is called, its mean loss covers the batches done), a checkpoint is
    written when ``checkpoint_dir`` is set, and the history says ``"stopped": True``.
    Resuming from that checkpoint restores the callback, sees it stopped and returns at
    once; pass ``resume=False`` to start over.

    Checkpoints: with ``checkpoint_dir``, ``fit`` writes ``checkpoint_dir/last.pt`` every
    ``checkpoint_every`` steps (0: after each epoch) and once training ends, each time
    atomically (a crash mid-write leaves the previous file). It holds the model's
    ``state_dict`` (masks included), the optimizer's, the step, epoch and batches done in
    that epoch, the RNG states, the history and ``state_dict()`` of every callback that has
    one. When ``resume`` is true and ``last.pt`` exists, ``fit`` continues from it: it
    registers the saved masks, restores the optimizer, RNGs, counters and callbacks (through
    their ``load_state_dict(state)``, when they have one), skips the batches already done and
    does not call ``on_train_begin`` again. Build the model and the optimizer as for the
    first run. The resumed run ends in the state the uninterrupted run reaches, provided the
    data order is reproducible (a Dataset with ``seed``, or batches that do not depend on
    anything but the global RNGs) and the kernels are deterministic.

    Args:
        model: the model to train.
        data: a Dataset of ``(x, y)`` (shuffled each epoch), a re-iterable of ``(x, y)``
            batches such as a DataLoader (used as it is), or one ``(x, y)`` pair of tensors.
        epochs: passes over ``data``, an int >= 1.
        lr: learning rate, > 0; ignored when ``optimizer`` is an instance.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9) or a ready
            ``torch.optim.Optimizer`` over the model's parameters.
        batch_size: batch size when ``data`` is a Dataset.
        loss_fn: ``loss_fn(logits, y) -> scalar``; cross entropy by default.
        weight_decay: L2 penalty, >= 0; ignored when ``optimizer`` is an instance.
        seed: seeds torch, NumPy, ``random`` and the shuffling, for a reproducible run.
        progress: show a progress bar (only when writing to a terminal).
        callbacks: see above.
        checkpoint_dir: folder for ``last.pt`` (created if needed); None: no checkpoints.
        checkpoint_every: steps between checkpoints, an int >= 0; 0: after each epoch.
        resume: continue from ``checkpoint_dir/last.pt`` when it exists; False: start over
            (and overwrite it).

    Returns:
        History: ``{"loss": [mean loss per epoch], "time": [seconds per epoch],
        "epochs": int, "steps": int, "stopped": bool}`` (``stopped``: ended early at a
        callback's request).

    Example:
        >>> from prunekit import datasets, zoo
        >>> model = zoo.create("lenet300100", in_features=64)
        >>> history = fit(model, datasets.load_digits("train"), epochs=5, seed=0)
        >>> len(history["loss"])
        5
    """
    if not isinstance(model, nn.Module):
        raise PruneTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    epochs = integer("epochs", epochs, minimum=1)
    batch_size = integer("batch_size", batch_size, minimum=1)
    lr = number("lr", lr, lo=0, lo_open=True)
    weight_decay = number("weight_decay", weight_decay, lo=0)
    if loss_fn is not None and not callable(loss_fn):
        raise PruneTypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    checkpoint_every = integer("checkpoint_every", checkpoint_every, minimum=0)
    callbacks = list(callbacks)
    opt = make_optimizer(model, optimizer, float(lr), float(weight_decay))
    loss_fn = loss_fn if loss_fn is not None else nn.functional.cross_entropy

    generator = None
    if seed is not None:
        set_seed(seed)
        generator = torch.Generator().manual_seed(seed)
    batches = batches_of(data, batch_size, shuffle=True, generator=generator)
    if epochs > 1 and isinstance(batches, Iterator):
        raise PruneError(
            f"data is a one-pass iterator but epochs={epochs}; pass a Dataset, a DataLoader "
            "or a list of batches"
        )
    try:
        per_epoch = len(batches)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None

    device = device_of(model)
    history: dict[str, Any] = {"loss": [], "time": [], "epochs": 0, "steps": 0, "stopped": False}
    step = 0
    ckpt_path: Path | None = None
    ckpt: dict[str, Any] | None = None
    if checkpoint_dir is not None:
        folder = Path(checkpoint_dir)
        folder.mkdir(parents=True, exist_ok=True)
        ckpt_path = folder / CHECKPOINT_FILE
        if resume and ckpt_path.exists():
            ckpt = restore_checkpoint(ckpt_path, model, opt, callbacks)
            history = {k: (list(v) if isinstance(v, list) else v) for k, v in ckpt["history"].items()}
            history.setdefault("stopped", False)
            step = int(ckpt["step"])
    start_epoch = int(ckpt["epoch"]) if ckpt is not None else 0
    if ckpt is not None and _stop_requested(callbacks, model) and not int(ckpt["batch"]):
        # The run was stopped early and its epoch closed: it is finished, like a completed one.
        history["stopped"] = True
        start_epoch = epochs

    def save_checkpoint(epoch: int, batch: int, epoch_rng: Any, partial: dict[str, float]) -> None:
        assert ckpt_path is not None
        history["steps"] = step
        write_checkpoint(ckpt_path, model, opt, callbacks, generator, step=step, epoch=epoch, batch=batch,
                         partial=partial, history=history, epoch_rng=epoch_rng)

    modes = _modes(model)
    try:
        model.train()
        if ckpt is None:
            for cb in callbacks:
                hook = getattr(cb, "on_train_begin", None)
                if hook is not None:
                    hook(model)
        with _progress_bar(progress) as bar:
            total = per_epoch * epochs if per_epoch is not None else None
            task = bar.add_task("training", total=total, completed=step)
            for epoch in range(start_epoch, epochs):
                skip = 0
                loss_sum, seen, elapsed = 0.0, 0, 0.0
                epoch_rng = None
                if ckpt is not None and epoch == start_epoch:
                    skip = int(ckpt["batch"])
                    loss_sum = float(ckpt["partial"]["loss_sum"])
                    seen = int(ckpt["partial"]["seen"])
                    elapsed = float(ckpt["partial"]["time"])
                    if skip:
                        epoch_rng = ckpt["epoch_rng"]
                        set_rng_state(epoch_rng, generator)
                    else:
                        set_rng_state(ckpt["rng"], generator)
                if epoch_rng is None and ckpt_path is not None:
                    epoch_rng = rng_state(generator)
                start = time.perf_counter()
                iterator = iter(batches)
                if skip:
                    for _ in range(skip):
                        if next(iterator, None) is None:
                            break
                    # Back to where the interrupted run was, after its last checkpointed step
                    # (stopped there by a callback: no more steps, the epoch is only closed).
                    set_rng_state(ckpt["rng"], generator)  # type: ignore[index]
                    iterator = iter(()) if _stop_requested(callbacks, model) else iterator
                done = skip
                for batch in iterator:
                    x, y = split_batch(batch)
                    x, y = x.to(device), y.to(device)
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(model(x), y)
                    loss.backward()
                    opt.step()
                    value = float(loss.detach())
                    n = int(y.shape[0]) if y.ndim > 0 else 1
                    loss_sum += value * n
                    seen += n
                    for cb in callbacks:
                        hook = getattr(cb, "on_step_end", None)
                        if hook is not None:
                            hook(step, model, value)
                    step += 1
                    done += 1
                    if ckpt_path is not None and checkpoint_every and step % checkpoint_every == 0:
                        partial = {
                            "loss_sum": loss_sum,
                            "seen": seen,
                            "time": elapsed + time.perf_counter() - start,
                        }
                        save_checkpoint(epoch, done, epoch_rng, partial)
                    bar.update(
                        task, advance=1, description=f"epoch {epoch + 1}/{epochs} loss {value:.4f}"
                    )
                    if _stop_requested(callbacks, model):
                        break
                if seen == 0:
                    raise PruneError("cannot train on empty data")
                logs = {
                    "loss": loss_sum / seen,
                    "time": elapsed + time.perf_counter() - start,
                    "steps": step,
                }
                history["loss"].append(logs["loss"])
                history["time"].append(logs["time"])
                history["epochs"] = epoch + 1
                history["steps"] = step
                for cb in callbacks:
                    hook = getattr(cb, "on_epoch_end", None)
                    if hook is not None:
                        hook(epoch, model, logs)
                stop = _stop_requested(callbacks, model)
                history["stopped"] = stop
                # Each epoch end when checkpoint_every is 0; the last one (or the one a
                # callback stopped) always, so that a finished run resumes as finished
                # instead of redoing its tail.
                if ckpt_path is not None and (not checkpoint_every or epoch == epochs - 1 or stop):
                    save_checkpoint(epoch + 1, 0, None, {"loss_sum": 0.0, "seen": 0, "time": 0.0})
                if stop:
                    break
    finally:
        _restore(modes)
    return history
