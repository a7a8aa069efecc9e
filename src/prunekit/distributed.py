"""Pruning under ``torch.distributed``: decide masks once, broadcast them, train with DDP.

Every rank of a data-parallel job must hold the same masks and the same weights, or the
averaged gradients would update different networks. Pruning on every rank from identical
weights gives identical masks for deterministic criteria, but data-driven or random
criteria (and ties broken differently) can disagree; :func:`prune_once` avoids the
question: rank 0 prunes, the other ranks receive its masks and weights.

Typical job (one process per rank, the process group already initialized)::

    import prunekit as pk
    from prunekit import distributed as pkd
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = build_model()                          # same architecture on every rank
    pkd.prune_once(model, sparsity=0.7)            # rank 0 prunes, all ranks get its masks
    ddp = DDP(model)                               # wrap after pruning (see below)
    ... train ddp ...
    if pkd.is_main():                              # one writer: ranks hold identical models
        pk.save(model, "pruned.pt")

Order of DDP and pruning: **register masks before wrapping the model in DDP.** A mask keeps
the trainable tensor (``...parametrizations.weight.original``) the very ``nn.Parameter`` the
module had, but ``torch.nn.utils.parametrize`` re-seats its storage (``Tensor.set_``) when it
registers the parametrization, which gives the parameter a new autograd accumulator. DDP
hooks the accumulators it saw at construction, so after a *new* mask those hooks never fire
and the next step fails with "Expected to have finished reduction in the prior iteration
... Parameter indices which did not receive grad". Hence:

* **Prune, then wrap** (recommended): ``prune_once(model, ...)`` then ``DDP(model)``.
  DDP broadcasts rank 0's parameters and buffers (masks included) when it is built.
* **Wrap, then prune** works only where every pruned weight already carries a mask, e.g.
  all-ones masks registered with :func:`prunekit.masking.apply_masks` before ``DDP(...)``:
  tightening an existing mask changes a buffer in place, not the parameter. That is the
  way to prune gradually during DDP training (re-prune with :func:`prune_once`, or
  follow any pruning with :func:`broadcast_masks` on every rank). :func:`prune_once` and
  :func:`broadcast_masks` given a DDP wrapper raise :class:`prunekit.PruneError` on every
  rank when they would register a new mask under it.

Checkpoints: write them from rank 0 only (``if is_main(): ...``); every rank holds the same
model, and several processes writing one file race each other.

Under ``torchrun`` (``docs/scale.md``): :func:`init_from_env` starts the process group
(gloo on CPUs, nccl on GPUs); :func:`fit` and :func:`distill` train the rank's
:func:`shard` of the data under DDP, with checkpoints written by rank 0 only and resumed
exactly on every rank.

All functions work without an initialized process group (a single process): the rank is
0, the world size 1, and broadcasts do nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from . import masking
from .api import PruneResult, prune
from .errors import PruneError

__all__ = [
    "broadcast_masks", "distill", "fit", "init_from_env", "is_main", "masks_identical", "prune_once", "rank", "shard",
    "world_size",
]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank, 0 when ``torch.distributed`` is not initialized."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """Number of processes in the default group, 1 when not initialized."""
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one rank that should write files/logs."""
    return rank() == 0


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP (and DataParallel) keep the real model in `.module`; masks live on that model, and
    # its parameter names carry no "module." prefix, so names agree across wrapped/unwrapped.
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


def _param_shape(model: nn.Module, name: str) -> torch.Tensor:
    mname, _, pname = name.rpartition(".")
    module = dict(model.named_modules()).get(mname)
    value = getattr(module, pname, None) if module is not None else None
    if not isinstance(value, torch.Tensor):
        raise PruneError(f"rank {rank()}: the source rank masks {name!r}, this rank's model has no such parameter")
    return value


def _raise_if_any(error: str | None) -> None:
    """Raise on every rank if any rank reports an error, so no rank waits in a later collective."""
    errors: list[Any] = [None] * world_size()
    dist.all_gather_object(errors, error)
    bad = [(r, e) for r, e in enumerate(errors) if e is not None]
    if bad:
        raise PruneError("; ".join(f"rank {r}: {e}" for r, e in bad))


def _ddp_message(names: list[str]) -> str:
    return (
        f"new masks on {names} under DistributedDataParallel: registering a mask gives the weight a new "
        "autograd accumulator, so DDP's gradient hooks would never fire. Prune before wrapping the model "
        "in DDP, or register all-ones masks (prunekit.masking.apply_masks) before wrapping"
    )


def broadcast_masks(model: nn.Module, src: int = 0) -> dict[str, torch.Tensor]:
    """Make every rank's masks, parameters and buffers equal to rank ``src``'s.

    Call it on every rank (it is a collective). Ranks without masks get them registered
    (:func:`prunekit.masking.apply_masks`); ranks with masks get them overwritten with the
    source's, not intersected, so the result is the source's masks exactly. Then every
    parameter (the trainable ``original`` values included) and buffer is broadcast, since
    pruning zeroes the source's weights where masked.

    Args:
        model: the model, or a ``DistributedDataParallel`` wrapping it; same architecture
            on every rank.
        src: the rank whose masks and weights win.

    Returns:
        This rank's masks after the broadcast (``{param_name: mask}``).

    Raises:
        PruneError: on every rank, if a rank masks a parameter the source does not, or
            lacks a parameter the source masks.
    """
    wrapped = _unwrap(model) is not model
    model = _unwrap(model)
    if world_size() == 1:
        return masking.get_masks(model)
    local = masking.get_masks(model)
    # Names (and dtypes) first: a rank without masks cannot guess which tensors will come.
    header: list[Any] = [sorted(local) if rank() == src else None]
    dist.broadcast_object_list(header, src=src)
    names: list[str] = header[0]

    error = None
    extra = sorted(set(local) - set(names))
    if extra:
        error = f"masks {extra} that rank {src} does not have; remove them (prunekit.masking.remove_masks) first"
    try:
        shapes = {n: _param_shape(model, n) for n in names}
    except PruneError as e:
        error = str(e)
    new = sorted(set(names) - set(local))
    if wrapped and new:
        error = _ddp_message(new)
    _raise_if_any(error)

    received: dict[str, torch.Tensor] = {}
    for n in names:
        # Same dtype/shape on every rank: the source's mask buffer, or a placeholder.
        buf = local[n].detach().clone() if rank() == src else torch.empty_like(shapes[n].detach())
        if rank() != src and n in local:
            buf = buf.to(local[n].dtype)
        dist.broadcast(buf, src=src)
        received[n] = buf
    if rank() != src:
        missing = {n: m for n, m in received.items() if n not in local}
        masking.apply_masks(model, missing)
        for n, m in received.items():
            if n in local:
                # Overwrite, not AND: a rank's own earlier zeros must not survive if the
                # source kept those weights.
                local[n].copy_(m)

    # The structure now agrees across ranks, so named parameters/buffers line up one to one.
    with torch.no_grad():
        for _, t in sorted(list(model.named_parameters()) + list(model.named_buffers()), key=lambda kv: kv[0]):
            dist.broadcast(t.data, src=src)
    return masking.get_masks(model)


def prune_once(model: nn.Module, *args: Any, src: int = 0, **kwargs: Any) -> PruneResult | None:
    """Prune on rank ``src`` only, then broadcast masks and weights to every rank.

    Call it on every rank with the same arguments (they are used on ``src`` only). Pruning
    decisions are made once, so data-driven or random criteria cannot make ranks disagree.

    Args:
        model: the model or a ``DistributedDataParallel`` wrapping it.
        *args, **kwargs: passed to :func:`prunekit.prune` (e.g. ``sparsity=0.7``).
        src: the rank that prunes.

    Returns:
        The :class:`prunekit.PruneResult` on rank ``src``, ``None`` on the other ranks.

    Raises:
        PruneError: on every rank when pruning fails on ``src`` (the other ranks would
            otherwise wait for masks that never come), or when ``model`` is a DDP wrapper
            and pruning registered a mask on a weight that had none (see the module notes).
    """
    outer = model
    wrapped = _unwrap(model) is not model
    model = _unwrap(model)
    before = set(masking.get_masks(model))
    if world_size() == 1:
        result = prune(model, *args, **kwargs)
        new = sorted(set(result.masks) - before)
        if wrapped and new:
            raise PruneError(_ddp_message(new))
        return result
    result: PruneResult | None = None
    error: str | None = None
    failure: Exception | None = None
    if rank() == src:
        try:
            result = prune(model, *args, **kwargs)
            new = sorted(set(result.masks) - before)
            if wrapped and new:
                # Checked after the fact: only pruning knows which weights it masks.
                failure = PruneError(_ddp_message(new))
        except Exception as e:  # re-raised on every rank below
            failure = e
        if failure is not None:
            error = f"{type(failure).__name__}: {failure}"
    status: list[Any] = [error]
    dist.broadcast_object_list(status, src=src)
    if status[0] is not None:
        if failure is not None:
            raise failure
        raise PruneError(f"pruning failed on rank {src}: {status[0]}")
    # The wrapper, if any: the other ranks must not register new masks under DDP either.
    broadcast_masks(outer, src=src)
    return result


def _digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, mask in sorted(masking.get_masks(_unwrap(model)).items()):
        h.update(name.encode())
        h.update(str(tuple(mask.shape)).encode())
        # Compare as 0/1 bytes, independent of the mask's float dtype.
        h.update((mask.detach().cpu() != 0).numpy().tobytes())
    return h.hexdigest()


def masks_identical(model: nn.Module) -> bool:
    """True on every rank iff all ranks hold the same mask names, shapes and values.

    A collective: call it on every rank. Gathers one SHA-256 digest per rank.
    """
    digest = _digest(model)
    if world_size() == 1:
        return True
    digests: list[Any] = [None] * world_size()
    dist.all_gather_object(digests, digest)
    return all(d == digests[0] for d in digests)


def init_from_env(backend: str | None = None, timeout_s: float = 300.0) -> bool:
    """Start the default process group from the environment ``torchrun`` sets.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default nccl when CUDA is available, else gloo.
            With nccl, the rank's GPU is ``LOCAL_RANK`` (made the current device).
        timeout_s: how long a collective may wait for the other ranks.

    Returns:
        True when this call started the group; False when one was running already.

    Raises:
        PruneError: the environment lacks ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``
            (not launched by ``torchrun``), or ``backend`` is neither gloo nor nccl.
    """
    import os
    from datetime import timedelta

    if _active():
        return False
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise PruneError(f"init_from_env: {', '.join(missing)} not set; launch with torchrun "
                         "(e.g. torchrun --nproc_per_node 2 script.py)")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise PruneError(f"backend {backend!r} is not supported; use 'gloo' (CPUs) or 'nccl' (GPUs)")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=float(timeout_s)))
    return True


def shard(data: Any) -> Any:
    """This rank's share of ``data``: items ``rank, rank + world, ...``, every rank the same count.

    ``data`` is a Dataset, a tensor, an ``(x, y)`` pair of tensors or a list of batches; the
    last ``len % world`` items are left out so that every rank runs the same number of steps
    (DDP needs it). With one process, ``data`` itself.
    """
    from torch.utils.data import Dataset, Subset

    r, w = rank(), world_size()
    if w == 1:
        return data
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        n = len(data[0]) // w * w
        return data[0][r:n:w], data[1][r:n:w]
    if isinstance(data, (torch.Tensor, list)):
        n = len(data) // w * w
        return data[r:n:w]
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return Subset(data, range(r, len(data) // w * w, w))
    raise PruneError(f"shard takes a Dataset, a tensor, an (x, y) pair of tensors or a list of batches; got {type(data).__name__}")


def _ddp(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    if isinstance(model, DDP) or world_size() == 1:
        return model
    device = next(model.parameters()).device
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def _rank0_checkpoints(train: Any, model: nn.Module, checkpoint_dir: Any, resume: bool) -> Any:
    """Run ``train(ddp_model, folder, resume)`` with checkpoints written by rank 0 only.

    The other ranks train with a scratch folder (deleted afterwards) that holds, when rank 0
    resumes, a copy of rank 0's ``last.pt`` (sent over the process group, so no shared file
    system is needed); every rank thus resumes from the same state.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from .checkpoint import CHECKPOINT_FILE

    ddp = _ddp(model)
    if checkpoint_dir is None or world_size() == 1:
        return train(ddp, checkpoint_dir, resume)
    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    payload: list[Any] = [path.read_bytes() if is_main() and resume and path.is_file() else None]
    dist.broadcast_object_list(payload, src=0)
    if is_main():
        return train(ddp, checkpoint_dir, resume)
    scratch = Path(tempfile.mkdtemp(prefix=f"prunekit-rank{rank()}-"))
    try:
        if payload[0] is not None:
            (scratch / CHECKPOINT_FILE).write_bytes(payload[0])
        return train(ddp, scratch, resume)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fit(model: nn.Module, data: Any, *, checkpoint_dir: Any = None, resume: bool = True, **kwargs: Any) -> dict[str, Any]:
    """:func:`prunekit.train.fit` under DDP: this rank trains on ``data`` (give it :func:`shard`'s share).

    ``model`` is wrapped in ``DistributedDataParallel`` (prune before: see the module notes)
    unless it is one already; gradients are averaged over the ranks, so the masks and weights
    stay identical on every rank. ``batch_size`` is per rank. Checkpoints go to
    ``checkpoint_dir/last.pt`` from rank 0 only (their keys carry DDP's ``module.`` prefix);
    with ``resume`` every rank continues from that file, exactly where the interrupted run was
    (same ``seed`` and data on every rank as in the first run). With one process, plain ``fit``.
    """
    from .train import fit as train_fit

    return _rank0_checkpoints(lambda m, folder, again: train_fit(m, data, checkpoint_dir=folder, resume=again, **kwargs),
                              model, checkpoint_dir, resume)


def distill(student: nn.Module, teacher: nn.Module, data: Any, *, checkpoint_dir: Any = None, resume: bool = True,
            **kwargs: Any) -> dict[str, Any]:
    """:func:`prunekit.distillation.distill` under DDP, as :func:`fit`: the student is wrapped and
    trained on this rank's data; the teacher runs locally on every rank (never wrapped). Names in
    ``features`` are the student's module names under the wrapper (``module.`` prefix)."""
    from .distillation import distill as train_distill

    return _rank0_checkpoints(
        lambda m, folder, again: train_distill(m, teacher, data, checkpoint_dir=folder, resume=again, **kwargs),
        student, checkpoint_dir, resume,
    )
