"""Distributed calibration: each process runs its share of the batches, the statistics are summed.

Under ``torchrun`` every rank calls :func:`prunekit.llm.prune_llm` (or
:func:`prunekit.llm.offload.prune_offloaded`) with ``distributed=True`` and the same
arguments. Rank ``r`` of ``w`` captures and runs calibration batches ``r, r + w, r + 2w, ...``
(:func:`share_of`: the very batches one process would form, so every per-batch computation is
the same). After each block's statistics pass, :class:`StatisticsAllReduce` sums over the
ranks what the criteria read: Wanda's and RIA's per-column sums of squares, SparseGPT's
Gram matrices ``X^T X`` (its Hessians), the token counts, and so OWL's outlier counts, which
are computed from the summed squares. The sums are float64 sums of float32 per-batch values,
exact whatever the order in all but pathological cases, so every rank derives the masks a
single process derives (the tests compare them bit for bit).

Each rank still prunes every matrix itself (SparseGPT's sweep runs on every rank): the
forward passes, which grow with the calibration set, are divided among the ranks; the
per-matrix work is not (``docs/scale.md``). The collectives are those of
``torch.distributed`` (gloo on CPUs, nccl on GPUs); nothing here is a transport of its own.
"""

from __future__ import annotations

import math

import torch

from ..criteria.inputs import InputStatistics
from ..distributed import rank, world_size
from ..errors import PruneError

__all__ = ["StatisticsAllReduce", "distributed_reducer", "execution_device", "share_of"]


def execution_device(device: object) -> torch.device | None:
    """``device`` as a ``torch.device`` (``None`` stays ``None``), checked to exist here."""
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise PruneError(f"device must be None, a string such as 'cuda' or a torch.device; got {type(device).__name__}: {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise PruneError(f"device {device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PruneError(f"device {device!r}: CUDA is not available in this process; use 'cpu'")
    if dev.type == "meta":
        raise PruneError("device 'meta' holds no data; use 'cpu', 'cuda' or 'cuda:N'")
    return dev


def share_of(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """This rank's calibration windows: batches ``rank, rank + world, ...`` of ``batch_size`` windows."""
    r, w = rank(), world_size()
    starts = range(r * batch_size, ids.shape[0], w * batch_size)
    return torch.cat([ids[s : s + batch_size] for s in starts])


def distributed_reducer(distributed: object, reconstruct: int, ids: torch.Tensor | None,
                        batch_size: int) -> StatisticsAllReduce | None:
    """The reducer of a ``distributed=True`` run, after checking it can run; ``None`` otherwise."""
    from .. import validate as V

    if not V.boolean("distributed", distributed):
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise PruneError(
            "distributed=True needs an initialized torch.distributed process group: launch with torchrun and call "
            "prunekit.distributed.init_from_env() first (docs/scale.md)"
        )
    if reconstruct:
        raise PruneError(f"reconstruct={reconstruct!r} is not supported with distributed=True (its Adam steps run batch "
                         "by batch); use reconstruct=0")
    if ids is None:
        return None
    batches = math.ceil(ids.shape[0] / batch_size)
    if batches < world_size():
        raise PruneError(f"{ids.shape[0]} calibration windows make {batches} batches of batch_size={batch_size}, fewer "
                         f"than the {world_size()} processes; every process needs one: use more windows or a smaller batch_size")
    return StatisticsAllReduce()


class StatisticsAllReduce:
    """Sum :class:`~prunekit.criteria.inputs.InputStatistics` over every rank, in place.

    Called with the statistics and ``{linear name: in_features}``; a collective (every rank
    calls it with the same names). A rank whose batches never reached a linear contributes
    zeros. Tensors travel on the CPU for gloo and on the GPU for nccl.
    """

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        x = t.to(self.device)
        self.dist.all_reduce(x)
        return x.to(t.device)

    def __call__(self, stats: InputStatistics, dims: dict[str, int]) -> None:
        names = sorted(dims)
        counts = self._sum(torch.tensor([stats.rows.get(n, 0) for n in names], dtype=torch.int64))
        for i, n in enumerate(names):
            d = dims[n]
            sq = stats.squares.get(n)
            stats.squares[n] = self._sum(sq if sq is not None else torch.zeros(1, d, dtype=torch.float64))
            total = stats.sums.get(n)
            stats.sums[n] = self._sum(total if total is not None else torch.zeros(1, d, dtype=torch.float64))
            if stats.gram:
                g = stats.grams.get(n)
                stats.grams[n] = self._sum(g if g is not None else torch.zeros(1, d, d, dtype=torch.float64))
            stats.rows[n] = int(counts[i])
