"""A small train/evaluate loop for fine-tuning models before and after pruning.

Masked models (``torch.nn.utils.parametrize``) train as they are: the loop builds its
optimizer from ``model.parameters()`` and never re-creates a parameter.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .errors import PruneError, PruneTypeError, unknown

__all__ = ["OPTIMIZERS", "evaluate", "fit", "set_seed"]

OPTIMIZERS = ("adam", "adamw", "sgd")

Data = Union[Dataset, Iterable[Sequence[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch, for reproducible runs.

    Args:
        seed: an int in ``[0, 2**32)``.

    Example:
        >>> set_seed(0)
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PruneTypeError(f"seed must be an int, got {seed!r}")
    if not 0 <= seed < 2**32:
        raise PruneError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _pos_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PruneTypeError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise PruneError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _batches(
    data: Data, batch_size: int, shuffle: bool, generator: torch.Generator | None
) -> Iterable[Sequence[torch.Tensor]]:
    # A plain (x, y) pair of tensors is a whole data set, not a list of two batches.
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        data = TensorDataset(*data)
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
    if not isinstance(data, Iterable):
        raise PruneTypeError(
            "data must be a Dataset, an iterable of (x, y) batches or an (x, y) pair of "
            f"tensors, got {type(data).__name__}"
        )
    return data


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise PruneTypeError(
            f"each batch must be an (x, y) pair, got {type(batch).__name__}"
        )
    return batch[0], batch[1]


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


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
    batch_size = _pos_int("batch_size", batch_size)
    device = torch.device(device)
    modes = _modes(model)
    correct = total = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in _batches(data, batch_size, shuffle=False, generator=None):
                x, y = _split_batch(batch)
                x, y = x.to(device), y.to(device)
                pred = model(x).argmax(dim=1)
                correct += int((pred == y).sum())
                total += int(y.numel())
    finally:
        _restore(modes)
    if total == 0:
        raise PruneError("cannot evaluate on empty data")
    return correct / total


def _make_optimizer(
    model: nn.Module, optimizer: str | torch.optim.Optimizer, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if not isinstance(optimizer, str):
        raise PruneTypeError(
            "optimizer must be a name or a torch.optim.Optimizer, got "
            f"{type(optimizer).__name__}: {optimizer!r}"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PruneError("the model has no trainable parameters")
    name = optimizer.lower()
    # The fused kernel is 2-3x faster on CPU, and the default one slows down on the exact
    # zeros that masked weights leave in Adam's moments (torch.sqrt of 0 takes a slow path).
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise unknown("optimizer", optimizer, OPTIMIZERS)


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

    Returns:
        History: ``{"loss": [mean loss per epoch], "time": [seconds per epoch],
        "epochs": int, "steps": int}``.

    Example:
        >>> from prunekit import datasets, zoo
        >>> model = zoo.create("lenet300100", in_features=64)
        >>> history = fit(model, datasets.load_digits("train"), epochs=5, seed=0)
        >>> len(history["loss"])
        5
    """
    if not isinstance(model, nn.Module):
        raise PruneTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    epochs = _pos_int("epochs", epochs)
    batch_size = _pos_int("batch_size", batch_size)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise PruneTypeError(f"lr must be a number > 0, got {lr!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise PruneError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
        raise PruneTypeError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise PruneError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if loss_fn is not None and not callable(loss_fn):
        raise PruneTypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    callbacks = list(callbacks)
    opt = _make_optimizer(model, optimizer, float(lr), float(weight_decay))
    loss_fn = loss_fn if loss_fn is not None else nn.functional.cross_entropy

    generator = None
    if seed is not None:
        set_seed(seed)
        generator = torch.Generator().manual_seed(seed)
    batches = _batches(data, batch_size, shuffle=True, generator=generator)
    if epochs > 1 and isinstance(batches, Iterator):
        raise PruneError(
            f"data is a one-pass iterator but epochs={epochs}; pass a Dataset, a DataLoader "
            "or a list of batches"
        )
    try:
        per_epoch = len(batches)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None

    device = _device_of(model)
    history: dict[str, Any] = {"loss": [], "time": [], "epochs": 0, "steps": 0}
    step = 0
    modes = _modes(model)
    try:
        model.train()
        for cb in callbacks:
            hook = getattr(cb, "on_train_begin", None)
            if hook is not None:
                hook(model)
        with _progress_bar(progress) as bar:
            total = per_epoch * epochs if per_epoch is not None else None
            task = bar.add_task("training", total=total)
            for epoch in range(epochs):
                start = time.perf_counter()
                loss_sum, seen = 0.0, 0
                for batch in batches:
                    x, y = _split_batch(batch)
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
                    bar.update(
                        task, advance=1, description=f"epoch {epoch + 1}/{epochs} loss {value:.4f}"
                    )
                if seen == 0:
                    raise PruneError("cannot train on empty data")
                logs = {
                    "loss": loss_sum / seen,
                    "time": time.perf_counter() - start,
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
    finally:
        _restore(modes)
    return history
