"""The forms of data :func:`prunekit.train.fit` and :func:`prunekit.train.evaluate` accept,
and the device their batches go to.

``data`` is a Dataset of ``(x, y)``, an iterable of ``(x, y)`` batches (e.g. a DataLoader)
or one ``(x, y)`` pair of tensors (a whole data set, not two batches). :func:`device_of`
stays importable from :mod:`prunekit.train`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from .errors import PruneTypeError

__all__ = ["Data", "batches_of", "device_of", "split_batch"]

Data = Union[Dataset, Iterable[Sequence[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def batches_of(
    data: Data, batch_size: int, shuffle: bool, generator: torch.Generator | None
) -> Iterable[Sequence[torch.Tensor]]:
    """``data`` as an iterable of batches: a Dataset through a DataLoader (``batch_size``,
    ``shuffle`` with ``generator``; an ``IterableDataset`` in its own order, which a
    DataLoader cannot shuffle), an iterable of batches as it is."""
    # A plain (x, y) pair of tensors is a whole data set, not a list of two batches.
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        data = TensorDataset(*data)
    if isinstance(data, IterableDataset):
        return DataLoader(data, batch_size=batch_size)
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
    if not isinstance(data, Iterable):
        raise PruneTypeError(
            "data must be a Dataset, an iterable of (x, y) batches or an (x, y) pair of "
            f"tensors, got {type(data).__name__}"
        )
    return data


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of one batch (a tuple or list; items after the second are ignored)."""
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

