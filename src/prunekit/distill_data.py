"""What :func:`prunekit.distillation.distill` and :func:`~prunekit.distillation.recalibrate_bn`
accept as data, turned into ``(inputs, labels)`` for :func:`prunekit.train.fit`: inputs that
came without labels get :data:`NO_LABEL`, so that a loss that reads labels can tell."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from .errors import PruneTypeError

__all__ = ["NO_LABEL", "as_pairs"]


#: The label given to inputs that came without one: no class, so a loss that reads labels
#: (``alpha > 0``) can tell and refuse instead of training toward a made-up class.
NO_LABEL = -1


class _Unlabelled(Dataset):
    """Inputs without labels, as ``(x, NO_LABEL)`` pairs for :func:`prunekit.train.fit`."""

    def __init__(self, inputs: torch.Tensor) -> None:
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[i], torch.tensor(NO_LABEL)


class _PairedItems(Dataset):
    """A Dataset whose items may be bare inputs (a tensor, or a 1-tuple as ``TensorDataset(x)``
    gives): those become ``(x, NO_LABEL)``; ``(x, y)`` items pass through."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        return _item_pair(self.data[i])


class _PairedStream(IterableDataset):
    """:class:`_PairedItems` for an ``IterableDataset`` (items in the stream's order)."""

    def __init__(self, data: IterableDataset) -> None:
        self.data = data

    def __iter__(self) -> Iterator[Any]:
        return map(_item_pair, self.data)


def _item_pair(item: Any) -> Any:
    if isinstance(item, (tuple, list)) and len(item) == 1:
        item = item[0]
    return (item, torch.tensor(NO_LABEL)) if isinstance(item, torch.Tensor) else item


def _paired(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)) and len(batch) == 1 and isinstance(batch[0], torch.Tensor):
        batch = batch[0]
    return (batch, torch.full((len(batch),), NO_LABEL, dtype=torch.long)) if isinstance(batch, torch.Tensor) else batch


class _Paired:
    """A re-iterable of batches read anew at every pass (an augmenting loader draws new
    batches each epoch), bare tensors given ``(x, 0)`` labels as they come."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Any]:
        return map(_paired, self.batches)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]  # a TypeError tells fit the length is unknown


def as_pairs(data: Any) -> Any:
    """``data`` in a form :func:`fit` takes: a tensor of inputs becomes ``(x, 0)`` pairs, and
    batches that are bare tensors become ``(x, 0)`` batches (a one-pass iterator is read
    once into a list, so that it lasts several epochs)."""
    if isinstance(data, torch.Tensor):
        return _Unlabelled(data)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data
    if isinstance(data, IterableDataset):
        return _PairedStream(data)
    if isinstance(data, (Dataset, TensorDataset)):
        return _PairedItems(data)
    if isinstance(data, Iterator):
        return [_paired(b) for b in data]
    if isinstance(data, Iterable):
        return _Paired(data)
    raise PruneTypeError(f"data must be a tensor of inputs, a Dataset or an iterable of batches; got {type(data).__name__}")
