"""Calibration and evaluation windows cut from a token stream."""

from __future__ import annotations

import torch

from .. import validate as V
from ..errors import PruneError, PruneTypeError


def _check_windows(name: str, stream: object, n: object, seqlen: object) -> tuple[torch.Tensor, int, int]:
    if not isinstance(stream, torch.Tensor) or stream.dtype not in (torch.int64, torch.int32):
        raise PruneTypeError(f"{name} stream must be a LongTensor of token ids; got {type(stream).__name__}")
    n = V.integer("n", n, minimum=1)
    seqlen = V.integer("seqlen", seqlen, minimum=1)
    return stream.reshape(-1).long(), n, seqlen


def calibration_windows(stream: torch.Tensor, n: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``[n, seqlen]`` windows starting at random offsets of a 1-D token stream (may overlap)."""
    stream, n, seqlen = _check_windows("calibration", stream, n, seqlen)
    if stream.numel() < seqlen:
        raise PruneError(f"the calibration stream has {stream.numel()} tokens, fewer than seqlen={seqlen}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seqlen + 1, (n,), generator=g)
    return torch.stack([stream[s : s + seqlen] for s in starts.tolist()])


def eval_windows(stream: torch.Tensor, n: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``[n, seqlen]`` distinct non-overlapping chunks of a 1-D token stream, drawn at random, in stream order."""
    stream, n, seqlen = _check_windows("evaluation", stream, n, seqlen)
    chunks = stream.numel() // seqlen
    if chunks < n:
        raise PruneError(f"the evaluation stream has {chunks} windows of {seqlen} tokens; {n} requested")
    g = torch.Generator().manual_seed(seed + 1)
    pick = torch.randperm(chunks, generator=g)[:n].sort().values
    return stream[: chunks * seqlen].reshape(chunks, seqlen)[pick].clone()
