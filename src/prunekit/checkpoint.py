"""Training checkpoints: the ``last.pt`` that :func:`prunekit.train.fit` writes and resumes from.

A checkpoint holds the model's ``state_dict`` (masks included), the optimizer's, the step,
epoch and batches done in that epoch, the RNG states, the history and ``state_dict()`` of
every callback that has one. :func:`atomic_save` writes it so that a crash at any moment
leaves either the previous file or the complete new one; :func:`restore_checkpoint` puts a
model, its optimizer and the callbacks back where the checkpointed run was.

The names stay importable from :mod:`prunekit.train` (``CHECKPOINT_FILE``, ``load_checkpoint``).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import PruneError
from .masking import get_masks
from .masking import load_state_dict as _load_masked_state_dict

__all__ = [
    "CHECKPOINT_FILE", "atomic_save", "load_checkpoint", "restore_checkpoint", "rng_state", "set_rng_state",
    "write_checkpoint",
]

CHECKPOINT_FILE = "last.pt"
_CHECKPOINT_FORMAT = 1
_MASK_SUFFIX = ".0.mask"
# Optimizer state entries shaped like their parameter (Adam/AdamW moments, SGD momentum).
_PER_WEIGHT = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    """The global RNG states (torch, CUDA when present, Python, NumPy) and ``generator``'s."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "shuffle": generator.get_state() if generator is not None else None,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None) -> None:
    """Put back the RNG states :func:`rng_state` returned."""
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


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` so that a crash at any moment leaves either the old file
    or the complete new one: write a temp file in the same folder, fsync, ``os.replace``;
    then delete the temp files earlier writes of ``path`` left when killed mid-way
    (:func:`_remove_stale_temp_files`). The file gets the mode a plain ``open`` gives
    (0o666 less the umask; mkstemp's is 0600)."""
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
    _remove_stale_temp_files(path)


def _remove_stale_temp_files(path: Path) -> list[Path]:
    """Delete the temp files that writes of ``path`` killed mid-way (SIGKILL, power loss)
    left beside it, ``.<name>.<8 characters>.tmp`` as :func:`atomic_save` names them, and
    return them. Other files are kept. Only one process may write ``path`` at a time (under
    DDP rank 0 alone writes ``checkpoint_dir``), or a concurrent write's temp file goes too."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    removed = []
    for entry in path.parent.iterdir():
        if pattern.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`prunekit.train.fit` (a ``last.pt``), tensors on the CPU.

    Only for files ``fit`` wrote: they hold Python and NumPy RNG states and callback
    states, which need full unpickling, so never pass a file from an untrusted source.

    Returns:
        A dict with ``model`` (a state_dict, masks included), ``optimizer``, ``step``,
        ``epoch``, ``batch`` (batches done in ``epoch``), ``history``, ``callbacks`` and
        the RNG states.

    Raises:
        PruneError: the file is unreadable (truncated, empty, damaged) or not such a checkpoint.
    """
    # weights_only=False is deliberate and limited to this file format, which fit itself
    # writes: the RNG states (tuples, NumPy arrays) and callback states are plain pickles.
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated, empty or otherwise damaged: torch raises OSError, EOFError, ...
        raise PruneError(
            f"{path} cannot be read as a training checkpoint ({type(e).__name__}: {e}); it is probably "
            "truncated or corrupt: delete it or pass resume=False to start over"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CHECKPOINT_FORMAT:
        raise PruneError(f"{path} is not a prunekit training checkpoint")
    return ckpt


def _callback_states(callbacks: list[Any]) -> list[Any]:
    out = []
    for cb in callbacks:
        get = getattr(cb, "state_dict", None)
        out.append(get() if callable(get) else None)
    return out


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _check_callbacks(callbacks: list[Any], ckpt: dict[str, Any], path: Path) -> None:
    states = ckpt["callbacks"]
    saved = ckpt.get("callback_types")  # absent from checkpoints written before it was recorded
    found = [_class_name(cb) for cb in callbacks]
    if len(states) == len(callbacks) and (saved is None or list(saved) == found):
        return
    expected = ", ".join(t.rpartition(".")[2] for t in saved) if saved is not None else "classes not recorded"
    got = ", ".join(t.rpartition(".")[2] for t in found)
    raise PruneError(
        f"{path} was written with {len(states)} callbacks [{expected}], fit got {len(callbacks)} "
        f"[{got}]; resume with the same callbacks in the same order or pass resume=False"
    )


def _restore_callbacks(callbacks: list[Any], states: list[Any]) -> None:
    for cb, state in zip(callbacks, states):
        load = getattr(cb, "load_state_dict", None)
        # Callbacks without load_state_dict resume without their past state; pure ones
        # (such as a schedule-driven pruning callback) still act exactly as before.
        if state is not None and callable(load):
            load(state)


def _mask_target(key: str) -> str | None:
    """``"fc.parametrizations.weight.0.mask"`` -> ``"fc.weight"``; None for other keys."""
    if not key.endswith(_MASK_SUFFIX):
        return None
    if key.startswith("parametrizations."):
        return key[len("parametrizations.") : -len(_MASK_SUFFIX)]
    owner, sep, rest = key.rpartition(".parametrizations.")
    return f"{owner}.{rest[: -len(_MASK_SUFFIX)]}" if sep else None


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _check_model(model: nn.Module, saved: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse ``saved`` unless loading it (masks registered first) would succeed."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = set(get_masks(model))
    for key in saved:
        name = _mask_target(key)
        if name is None or name in have:
            continue
        if name not in shapes:
            raise PruneError(f"{path} holds a mask for {name}, which the model does not have; "
                             "build the model as in the first run or pass resume=False")
        shape = shapes.pop(name)
        shapes[key[: -len(_MASK_SUFFIX)] + ".original"] = shapes[key] = shape
    missing = sorted(shapes.keys() - saved.keys())
    unexpected = sorted(saved.keys() - shapes.keys())
    wrong = sorted(f"{k} {tuple(saved[k].shape)} vs {shapes[k]}" for k in shapes.keys() & saved.keys()
                   if tuple(saved[k].shape) != shapes[k])
    problems = [f"{label}: {_few(names)}" for label, names in (
        ("missing from the checkpoint", missing), ("not in the model", unexpected),
        ("other shapes (checkpoint vs model)", wrong)) if names]
    if problems:
        raise PruneError(f"{path} does not fit the model ({'; '.join(problems)}); "
                         "build the model as in the first run or pass resume=False")


def _plain_name(name: str) -> str:
    """A parameter's name whether or not it is masked: ``fc.parametrizations.weight.original`` -> ``fc.weight``."""
    if not name.endswith(".original"):
        return name
    if name.startswith("parametrizations."):
        return name[len("parametrizations.") : -len(".original")]
    owner, sep, rest = name.rpartition(".parametrizations.")
    return f"{owner}.{rest[: -len('.original')]}" if sep else name


def _optimizer_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[list[str | None]]:
    names = {id(p): _plain_name(n) for n, p in model.named_parameters()}
    return [[names.get(id(p)) for p in group["params"]] for group in optimizer.param_groups]


def _reorder(state: dict[str, Any], then: list[list[Any]], now: list[list[Any]]) -> dict[str, Any]:
    """``state`` (an optimizer state_dict whose parameters are named ``then``) renumbered
    for an optimizer whose parameters are named ``now`` (the same names, other order)."""
    index = {}
    for names, group in zip(then, state["param_groups"]):
        index.update(zip(names, group["params"]))
    out: dict[int, Any] = {}
    groups = []
    i = 0
    for names, group in zip(now, state["param_groups"]):
        ids = []
        for name in names:
            if index[name] in state["state"]:
                out[i] = state["state"][index[name]]
            ids.append(i)
            i += 1
        groups.append({**group, "params": ids})
    return {"state": out, "param_groups": groups}


def _optimizer_state(
    optimizer: torch.optim.Optimizer, model: nn.Module, ckpt: dict[str, Any], path: Path
) -> dict[str, Any]:
    """The checkpoint's optimizer state, matched to ``optimizer``'s parameters and checked."""
    state = ckpt["optimizer"]
    then, now = ckpt.get("optimizer_params"), _optimizer_names(optimizer, model)
    if then is not None and None not in {n for g in then + now for n in g}:
        if [sorted(g) for g in then] != [sorted(g) for g in now]:
            old, new = {n for g in then for n in g}, {n for g in now for n in g}
            diff = (f"only in the checkpoint: {_few(sorted(old - new)) or '-'}; only in fit's optimizer: "
                    f"{_few(sorted(new - old)) or '-'}") if old != new else f"grouped {then} vs {now}"
            raise PruneError(f"{path} holds an optimizer over other parameters than fit's ({diff}); build "
                             "the optimizer as in the first run or pass resume=False")
        if then != now:
            state = _reorder(state, then, now)
    sizes = [len(g["params"]) for g in state["param_groups"]]
    have = [len(g["params"]) for g in optimizer.param_groups]
    if sizes != have:
        raise PruneError(f"{path} holds an optimizer with parameter groups of sizes {sizes}, fit's optimizer has "
                         f"{have}; build the optimizer as in the first run or pass resume=False")
    params = [(n, p) for names, g in zip(now, optimizer.param_groups) for n, p in zip(names, g["params"])]
    ids = [i for g in state["param_groups"] for i in g["params"]]
    for (name, p), i in zip(params, ids):
        for key, value in state["state"].get(i, {}).items():
            if key in _PER_WEIGHT and isinstance(value, torch.Tensor) and value.shape != p.shape:
                raise PruneError(
                    f"{path}: the optimizer's saved {key} for parameter {name or '#' + str(i)} has shape "
                    f"{tuple(value.shape)}, the parameter {tuple(p.shape)}; build the model and the "
                    "optimizer as in the first run or pass resume=False"
                )
    return state


def write_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    callbacks: list[Any],
    generator: torch.Generator | None,
    *,
    step: int,
    epoch: int,
    batch: int,
    partial: dict[str, float],
    history: dict[str, Any],
    epoch_rng: Any,
) -> None:
    """Write the training state to ``path`` atomically (see :func:`atomic_save`).

    ``batch``: batches done in ``epoch``; ``partial``: that epoch's running loss sum, count
    and time; ``epoch_rng``: the RNG states right before the epoch's data iterator was made.
    """
    atomic_save(
        {
            "format": _CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "epoch": epoch,
            "batch": batch,
            "partial": partial,
            "history": history,
            "callbacks": _callback_states(callbacks),
            "callback_types": [_class_name(cb) for cb in callbacks],
            # Parameter names per group, so a resume can match the optimizer's state to
            # parameters by name (masking changes the order model.parameters() gives).
            "optimizer_params": _optimizer_names(optimizer, model),
            "rng": rng_state(generator),
            # RNG state right before this epoch's data iterator was created: replaying
            # it reproduces the shuffle order, so the batches already done can be skipped.
            "epoch_rng": epoch_rng,
        },
        path,
    )


def restore_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, callbacks: list[Any]
) -> dict[str, Any]:
    """Load ``path`` into ``model`` (its masks registered), ``optimizer`` and ``callbacks``
    (through their ``load_state_dict``, when they have one); return the checkpoint.

    Everything is checked first (the callbacks' classes and order, the model's keys and
    shapes, the optimizer's groups): on a :class:`PruneError` nothing has been changed.
    The optimizer's saved state is matched to its parameters by name, so an optimizer built
    before the masks were registered (another parameter order) gets the right state.
    """
    ckpt = load_checkpoint(path)
    _check_callbacks(callbacks, ckpt, path)
    _check_model(model, ckpt["model"], path)
    opt_state = _optimizer_state(optimizer, model, ckpt, path)
    _restore_callbacks(callbacks, ckpt["callbacks"])
    # Registering masks keeps each parameter object, so the optimizer stays valid.
    _load_masked_state_dict(model, ckpt["model"])
    optimizer.load_state_dict(opt_state)
    return ckpt
