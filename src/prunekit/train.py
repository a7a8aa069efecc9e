"""A small train/evaluate loop for fine-tuning models before and after pruning.

Masked models (``torch.nn.utils.parametrize``) train as they are: the loop builds its
optimizer from ``model.parameters()`` and never re-creates a parameter.

With ``checkpoint_dir``, :func:`fit` keeps ``last.pt`` there, written atomically, and a
later call resumes from it to the same final state an uninterrupted run reaches.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .errors import PruneError, PruneTypeError, unknown
from .masking import load_state_dict as _load_masked_state_dict

__all__ = ["CHECKPOINT_FILE", "OPTIMIZERS", "device_of", "evaluate", "fit", "load_checkpoint", "make_optimizer", "set_seed"]

OPTIMIZERS = ("adam", "adamw", "sgd")

CHECKPOINT_FILE = "last.pt"
_CHECKPOINT_FORMAT = 1

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


def device_of(model: nn.Module) -> torch.device:
    """The device a model lives on.

    Args:
        model: any ``nn.Module``.

    Returns:
        The device of its first parameter, else of its first buffer, else the CPU.
    """
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


def make_optimizer(
    model: nn.Module, optimizer: str | torch.optim.Optimizer, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The optimizer :func:`fit` trains with.

    Args:
        model: the model whose trainable parameters (``requires_grad``) are optimized.
        optimizer: a name from :data:`OPTIMIZERS` (``"adam"``, ``"adamw"``, ``"sgd"`` with
            momentum 0.9), or a ready ``torch.optim.Optimizer``, returned as it is.
        lr: learning rate.
        weight_decay: weight decay.

    Returns:
        The optimizer (Adam and AdamW use the fused kernel where every parameter allows it).

    Raises:
        PruneTypeError: ``optimizer`` is neither a name nor an optimizer.
        PruneError: an unknown name, or no trainable parameters.
    """
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


def _rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "shuffle": generator.get_state() if generator is not None else None,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if generator is not None and state.get("shuffle") is not None:
        generator.set_state(state["shuffle"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable on POSIX; some platforms cannot open a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` so that a crash at any moment leaves either the old file
    or the complete new one: write a temp file in the same folder, fsync, ``os.replace``.
    The file gets the mode a plain ``open`` gives (0o666 less the umask; mkstemp's is 0600)."""
    from .export import current_umask

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`fit` (a ``last.pt``), tensors on the CPU.

    Only for files :func:`fit` wrote: they hold Python and NumPy RNG states and callback
    states, which need full unpickling, so never pass a file from an untrusted source.

    Returns:
        A dict with ``model`` (a state_dict, masks included), ``optimizer``, ``step``,
        ``epoch``, ``batch`` (batches done in ``epoch``), ``history``, ``callbacks`` and
        the RNG states.
    """
    # weights_only=False is deliberate and limited to this file format, which fit itself
    # writes: the RNG states (tuples, NumPy arrays) and callback states are plain pickles.
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CHECKPOINT_FORMAT:
        raise PruneError(f"{path} is not a prunekit training checkpoint")
    return ckpt


def _callback_states(callbacks: list[Any]) -> list[Any]:
    out = []
    for cb in callbacks:
        get = getattr(cb, "state_dict", None)
        out.append(get() if callable(get) else None)
    return out


def _restore_callbacks(callbacks: list[Any], states: list[Any], path: Path) -> None:
    if len(states) != len(callbacks):
        raise PruneError(
            f"{path} was written with {len(states)} callbacks, fit got {len(callbacks)}; "
            "resume with the same callbacks or pass resume=False"
        )
    for cb, state in zip(callbacks, states):
        load = getattr(cb, "load_state_dict", None)
        # Callbacks without load_state_dict resume without their past state; pure ones
        # (such as a schedule-driven pruning callback) still act exactly as before.
        if state is not None and callable(load):
            load(state)


def _stop_requested(callbacks: list[Any]) -> bool:
    return any(bool(getattr(cb, "stop_training", False)) for cb in callbacks)


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
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int):
        raise PruneTypeError(f"checkpoint_every must be an int >= 0, got {checkpoint_every!r}")
    if checkpoint_every < 0:
        raise PruneError(f"checkpoint_every must be an int >= 0, got {checkpoint_every!r}")
    callbacks = list(callbacks)
    opt = make_optimizer(model, optimizer, float(lr), float(weight_decay))
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
            ckpt = load_checkpoint(ckpt_path)
            # The optimizer exists already, built from the unmasked model exactly as in the
            # first run, so its parameter order (which its state_dict relies on) matches;
            # registering masks keeps each parameter object, so the optimizer stays valid.
            _load_masked_state_dict(model, ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            _restore_callbacks(callbacks, ckpt["callbacks"], ckpt_path)
            history = {k: (list(v) if isinstance(v, list) else v) for k, v in ckpt["history"].items()}
            history.setdefault("stopped", False)
            step = int(ckpt["step"])
    start_epoch = int(ckpt["epoch"]) if ckpt is not None else 0
    if ckpt is not None and _stop_requested(callbacks):
        # The checkpointed run was stopped early: it is finished, like a completed one.
        history["stopped"] = True
        start_epoch = epochs

    def save_checkpoint(epoch: int, batch: int, epoch_rng: Any, partial: dict[str, float]) -> None:
        assert ckpt_path is not None
        _atomic_save(
            {
                "format": _CHECKPOINT_FORMAT,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "epoch": epoch,
                "batch": batch,
                "partial": partial,
                "history": history,
                "callbacks": _callback_states(callbacks),
                "rng": _rng_state(generator),
                # RNG state right before this epoch's data iterator was created: replaying
                # it reproduces the shuffle order, so the batches already done can be skipped.
                "epoch_rng": epoch_rng,
            },
            ckpt_path,
        )

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
                        _set_rng_state(epoch_rng, generator)
                    else:
                        _set_rng_state(ckpt["rng"], generator)
                if epoch_rng is None and ckpt_path is not None:
                    epoch_rng = _rng_state(generator)
                start = time.perf_counter()
                iterator = iter(batches)
                if skip:
                    for _ in range(skip):
                        if next(iterator, None) is None:
                            break
                    # Back to where the interrupted run was, after its last checkpointed step.
                    _set_rng_state(ckpt["rng"], generator)  # type: ignore[index]
                done = skip
                for batch in iterator:
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
                    if _stop_requested(callbacks):
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
                stop = _stop_requested(callbacks)
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
