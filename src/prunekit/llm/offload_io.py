"""Files of the offloaded pruning path: lazy safetensors shards in, one shard per block out.

:class:`ShardReader` opens the ``*.safetensors`` files of a ``save_pretrained`` folder lazily
(``safetensors.safe_open`` memory-maps them; a tensor is read when asked for, and the
read-only mapping is page cache, not process memory). :class:`ShardWriter` writes the pruned
model one shard file at a time, with the ``model.safetensors.index.json`` that stock
``from_pretrained`` reads. :class:`SpilledChunks` keeps calibration activations in files
when they do not fit the memory budget. :func:`parse_bytes` reads ``--max-memory`` values.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, MutableSequence
from pathlib import Path
from typing import Any

import torch

from ..errors import PruneError
from .blocks import Chunk

__all__ = ["INDEX", "ShardReader", "ShardWriter", "SpilledChunks", "parse_bytes", "publish"]

INDEX = "model.safetensors.index.json"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)


def parse_bytes(name: str, value: object) -> int | None:
    """A memory size: ``None``, a positive int of bytes, or a string such as ``"8GB"``, ``"512MiB"``."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = _SIZE.match(value) if isinstance(value, str) else None
    size = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]) if m is not None else 0
    if size < 1:  # also a fraction of a byte such as "0.5"
        raise PruneError(f"{name} {value!r} is not a memory size; give bytes (an int > 0) or e.g. '8GB', '512MiB', '1.5TB'")
    return size


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it at 1 or more: '37.1 KiB', '2.0 GiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


class ShardReader:
    """The tensors of a ``save_pretrained`` folder's safetensors files, read one at a time."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        self.folder = folder
        index = folder / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        elif (folder / "model.safetensors").is_file():
            weight_map = None
        else:
            found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".gguf"))
            raise PruneError(
                f"{str(folder)!r} holds no model.safetensors nor {INDEX}"
                + (f" (it has {', '.join(found)})" if found else "")
                + "; offloaded pruning reads safetensors checkpoints: re-save the model with save_pretrained"
            )
        self._open = safe_open
        self._current: tuple[str, Any] | None = None  # one open file: its mapping counts as process memory
        self._headers: dict[str, dict[str, Any]] = {}
        if weight_map is None:
            self.files = {k: "model.safetensors" for k in self._header("model.safetensors") if k != "__metadata__"}
        else:
            self.files = dict(weight_map)

    def _header(self, file: str) -> dict[str, Any]:
        """The JSON header of a safetensors file (names, dtypes, shapes), read without mapping the file."""
        if file not in self._headers:
            with open(self.folder / file, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                self._headers[file] = json.loads(f.read(size))
        return self._headers[file]

    def names(self) -> list[str]:
        return list(self.files)

    def get(self, name: str) -> torch.Tensor:
        file = self.files[name]
        if self._current is None or self._current[0] != file:
            self._current = None
            self._current = (file, self._open(str(self.folder / file), framework="pt", device="cpu"))
        return self._current[1].get_tensor(name)

    def release(self) -> None:
        """Close the open file."""
        self._current = None

    def dtype(self, name: str) -> torch.dtype:
        return _DTYPES[self._header(self.files[name])[name]["dtype"]]

    def nbytes(self, name: str) -> int:
        entry = self._header(self.files[name])[name]
        start, end = entry["data_offsets"]
        return int(end) - int(start)


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class ShardWriter:
    """Writes ``count`` shard files into ``folder``, one call of :meth:`write` each, then the index."""

    def __init__(self, folder: Path, count: int) -> None:
        self.folder, self.count = folder, count
        self.weight_map: dict[str, str] = {}
        self.total = 0
        self.written = 0

    def write(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        name = f"model-{index + 1:05d}-of-{self.count:05d}.safetensors"
        plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(plain, str(self.folder / name), metadata={"format": "pt"})
        for k, v in plain.items():
            self.weight_map[k] = name
            self.total += v.numel() * v.element_size()
        self.written += 1

    def finish(self) -> None:
        if self.written != self.count:
            raise PruneError(f"wrote {self.written} of {self.count} shards")
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.folder / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


class SpilledChunks(MutableSequence):
    """Calibration batches whose hidden states live in files of ``folder`` (the rest in memory).

    A drop-in for the list of :data:`~prunekit.llm.blocks.Chunk` the block loop reads and
    replaces: reading item ``j`` loads its hidden states onto ``device``, assigning writes them.
    """

    def __init__(self, chunks: list[Chunk], folder: Path, device: torch.device) -> None:
        self.folder, self.device = folder, device
        self._rest: list[tuple[Any, Any]] = []
        for j, (h, a, k) in enumerate(chunks):
            self._rest.append((a, k))
            self._save(j, h)

    def _path(self, j: int) -> Path:
        return self.folder / f"hidden-{j:06d}.pt"

    def _save(self, j: int, hidden: torch.Tensor) -> None:
        tmp = self._path(j).with_suffix(".tmp")
        torch.save(hidden.detach().to("cpu"), tmp)
        os.replace(tmp, self._path(j))

    def __len__(self) -> int:
        return len(self._rest)

    def __getitem__(self, j: int) -> Chunk:  # type: ignore[override]
        if j < 0:
            j += len(self)
        a, k = self._rest[j]
        return torch.load(self._path(j), map_location=self.device, weights_only=True), a, k

    def __setitem__(self, j: int, chunk: Chunk) -> None:  # type: ignore[override]
        h, a, k = chunk
        self._save(j, h)
        self._rest[j] = (a, k)

    def __delitem__(self, j: int) -> None:  # type: ignore[override]
        raise PruneError("spilled calibration batches cannot be removed")

    def insert(self, j: int, chunk: Chunk) -> None:
        raise PruneError("spilled calibration batches cannot be added")

    def __iter__(self) -> Iterator[Chunk]:
        for j in range(len(self)):
            yield self[j]

    def copy(self) -> SpilledChunks:
        """An independent spilled copy in a new folder inside this one (OWL's pass over the dense model)."""
        folder = Path(tempfile.mkdtemp(dir=self.folder, prefix="copy-"))
        out = SpilledChunks([], folder, self.device)
        for j in range(len(self)):
            shutil.copyfile(self._path(j), out._path(j))
            out._rest.append(self._rest[j])
        return out


def make_parents(dest: Path) -> Path | None:
    """Create ``dest``'s missing parent folders; the topmost one created (None when none was)."""
    top = None
    for p in dest.parent.absolute().parents[::-1] + (dest.parent.absolute(),):
        if not p.exists():
            top = p
            break
    dest.parent.mkdir(parents=True, exist_ok=True)
    return top


def remove_parents(top: Path | None, dest: Path) -> None:
    """Remove the folders :func:`make_parents` created for ``dest`` when nothing was written into them."""
    if top is None or dest.exists():
        return
    p = dest.parent.absolute()
    while True:
        try:
            p.rmdir()
        except OSError:
            return
        if p == top:
            return
        p = p.parent


def publish(tmp: Path, dest: Path, problem: str | None) -> None:
    """Rename the finished folder ``tmp`` to ``dest`` (new, empty, or an earlier output to replace)."""
    if problem:
        raise PruneError(f"output folder {str(dest)!r} {problem}")
    from .output import follow_umask

    follow_umask(tmp)  # the modes mkdir and open give, not mkdtemp's 0700
    old: Path | None = None
    try:
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
            os.replace(dest, old / "x")
        os.replace(tmp, dest)
    except BaseException:
        if old is not None and (old / "x").exists() and not dest.exists():
            os.replace(old / "x", dest)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
