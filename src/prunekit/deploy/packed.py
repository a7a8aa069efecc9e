"""The packed weight format: zeros leave the file, values shrink, a codec squeezes the rest.

Each tensor is stored as *positions* of its non-zero entries plus their *values*:

* positions: nothing (dense), a bitmask (one bit per entry), or relative indices (one
  byte per non-zero: the gap since the previous one; 255 means "skip 255 entries"), which
  ever is smallest;
* values: raw (bit-exact), ``fp16``, ``int8`` (symmetric, one scale per output channel;
  zeros stay zero), or ``codebook`` (``bits``-bit indices into 2**bits shared values per
  tensor found by 1-D k-means, Deep Compression's weight sharing).

Everything is concatenated and compressed with zstd. The file starts with a magic, a
version and a JSON header holding the layout and sha256 checksums of the compressed and
uncompressed payload; a truncated or tampered file fails with a clear error.

Only floating-point tensors of at least ``MIN_NUMEL`` entries are quantized; small ones
(biases, norm parameters) and integer buffers are stored raw.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import numpy as np
import torch

from ..errors import PruneError

MAGIC = b"PKPACK\x00"
VERSION = 1
MIN_NUMEL = 256
SCHEMES = ("none", "fp16", "int8", "codebook")


def _zstd():
    try:
        import zstandard
    except ImportError as e:  # pragma: no cover - depends on the install
        raise PruneError("the packed format needs zstandard: pip install prunekit[export]") from e
    return zstandard


def parse_scheme(quantize: str | None) -> tuple[str, int]:
    """``None``/"none", "fp16", "int8", "codebook" (4 bits) or "codebook:B" (B in 1..8)."""
    if quantize is None:
        return "none", 0
    if not isinstance(quantize, str):
        raise PruneError(f"quantize must be a string or None, got {type(quantize).__name__}")
    name, _, bits = quantize.partition(":")
    if name not in SCHEMES or (bits and name != "codebook"):
        raise PruneError(f"quantize={quantize!r} is not one of None, 'fp16', 'int8', 'codebook', 'codebook:<bits>'")
    if name == "codebook":
        b = 4 if not bits else int(bits) if bits.isdigit() else -1
        if not 1 <= b <= 8:
            raise PruneError(f"codebook bits must be an integer in 1..8, got {bits!r}")
        return name, b
    return name, 0


# -- positions -----------------------------------------------------------------------------
def _encode_relative(pos: np.ndarray) -> np.ndarray:
    gaps = np.diff(pos, prepend=-1) - 1
    escapes = gaps // 255
    out = np.full(int(escapes.sum()) + pos.size, 255, dtype=np.uint8)
    where = np.cumsum(escapes + 1) - 1  # each real entry follows its escapes
    out[where] = (gaps % 255).astype(np.uint8)
    return out


def _decode_relative(codes: np.ndarray) -> np.ndarray:
    real = codes != 255
    step = np.where(real, codes.astype(np.int64) + 1, 255)
    return (np.cumsum(step) - 1)[real]


def _positions(flat_nz: np.ndarray, n: int) -> tuple[str, bytes]:
    pos = np.flatnonzero(flat_nz)
    if pos.size == n:
        return "dense", b""
    rel = _encode_relative(pos)
    bitmask = np.packbits(flat_nz)
    return ("relative", rel.tobytes()) if rel.size < bitmask.size else ("bitmask", bitmask.tobytes())


def _unpositions(kind: str, blob: bytes, n: int) -> np.ndarray:
    if kind == "dense":
        return np.arange(n)
    if kind == "bitmask":
        return np.flatnonzero(np.unpackbits(np.frombuffer(blob, np.uint8), count=n))
    if kind == "relative":
        pos = _decode_relative(np.frombuffer(blob, np.uint8))
        if pos.size and (pos[-1] >= n or pos[0] < 0):
            raise PruneError("packed positions point outside the tensor")
        return pos
    raise PruneError(f"unknown position encoding {kind!r}")


# -- values --------------------------------------------------------------------------------
def kmeans_1d(values: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (sorted) and the index of each value; linear initialization over
    [min, max], which Deep Compression found best for weight sharing."""
    lo, hi = float(values.min()), float(values.max())
    k = max(1, min(k, np.unique(values).size))
    cent = np.linspace(lo, hi, k) if k > 1 else np.array([values.mean()])
    idx = np.zeros(values.size, dtype=np.int64)
    for _ in range(iters):
        idx = np.searchsorted((cent[1:] + cent[:-1]) / 2, values)
        sums = np.bincount(idx, weights=values, minlength=k)
        counts = np.bincount(idx, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), cent)
        if np.allclose(new, cent):
            break
        cent = np.sort(new)
    idx = np.searchsorted((cent[1:] + cent[:-1]) / 2, values)
    return cent.astype(np.float32), idx


def _pack_bits(idx: np.ndarray, bits: int) -> bytes:
    if bits == 8:
        return idx.astype(np.uint8).tobytes()
    b = np.unpackbits(idx.astype(np.uint8)[:, None], axis=1)[:, 8 - bits :]
    return np.packbits(b.reshape(-1)).tobytes()


def _unpack_bits(blob: bytes, bits: int, count: int) -> np.ndarray:
    if bits == 8:
        return np.frombuffer(blob, np.uint8)[:count].astype(np.int64)
    b = np.unpackbits(np.frombuffer(blob, np.uint8), count=count * bits).reshape(count, bits)
    return (b.astype(np.int64) << np.arange(bits - 1, -1, -1)).sum(1)


def _encode_values(t: torch.Tensor, pos: np.ndarray, scheme: str, bits: int) -> tuple[dict[str, Any], list[bytes]]:
    flat = t.reshape(-1).numpy()
    vals = flat[pos]
    if scheme == "none" or t.numel() < MIN_NUMEL or not t.is_floating_point():
        return {"values": "raw"}, [vals.tobytes()]
    if scheme == "fp16":
        return {"values": "fp16"}, [vals.astype(np.float16).tobytes()]
    if scheme == "int8":
        rows = t.shape[0] if t.dim() > 1 else 1
        per_row = t.numel() // rows
        amax = np.abs(flat.reshape(rows, per_row)).max(1).astype(np.float32)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(vals / scale[pos // per_row]), -127, 127).astype(np.int8)
        # a kept weight below half a step keeps its sign at one step: the zeros stay the mask's
        q = np.where((q == 0) & (vals != 0), np.sign(vals), q).astype(np.int8)
        return {"values": "int8"}, [scale.tobytes(), q.tobytes()]
    uniq = np.unique(vals)
    if uniq.size <= 1 << bits:  # already shared (share_weights): the codebook is exact
        cent, idx = uniq.astype(np.float32), np.searchsorted(uniq, vals)
    else:
        cent, idx = kmeans_1d(vals.astype(np.float64), 1 << bits)
    return {"values": "codebook", "bits": bits, "k": int(cent.size)}, [cent.tobytes(), _pack_bits(idx, bits)]


def _decode_values(meta: dict[str, Any], blobs: list[bytes], pos: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    kind, count = meta["values"], pos.size
    if kind == "raw":
        return np.frombuffer(blobs[0], dtype)[:count]
    if kind == "fp16":
        return np.frombuffer(blobs[0], np.float16)[:count].astype(dtype)
    n = int(np.prod(shape)) if shape else 1
    if kind == "int8":
        rows = shape[0] if len(shape) > 1 else 1
        scale = np.frombuffer(blobs[0], np.float32)
        q = np.frombuffer(blobs[1], np.int8)[:count]
        return (q.astype(np.float32) * scale[pos // (n // rows)]).astype(dtype)
    if kind == "codebook":
        cent = np.frombuffer(blobs[0], np.float32)
        idx = _unpack_bits(blobs[1], int(meta["bits"]), count)
        if idx.size and idx.max() >= cent.size:
            raise PruneError("packed codebook index out of range")
        return cent[idx].astype(dtype)
    raise PruneError(f"unknown value encoding {kind!r}")


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
           "int64": torch.int64, "int32": torch.int32, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool}


def encode(tensors: dict[str, torch.Tensor], quantize: str | None = None, level: int = 19) -> bytes:
    """The packed bytes of ``{name: tensor}`` (CPU tensors)."""
    scheme, bits = parse_scheme(quantize)
    entries, chunks, offset = [], [], 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        extra = {}
        if dtype == "bfloat16":  # numpy has no bfloat16: its values go as float32 (exact), read back as bfloat16
            t, extra = t.float(), {"values_dtype": "float32"}
        elif dtype not in _DTYPES:
            t = t.float() if t.is_floating_point() else t
            dtype = str(t.dtype).removeprefix("torch.")
        arr_nz = (t != 0).reshape(-1).numpy()
        kind, pblob = _positions(arr_nz, t.numel())
        pos = np.flatnonzero(arr_nz) if kind != "dense" else np.arange(t.numel())
        src = t if t.dtype != torch.bool else t.to(torch.uint8)
        meta, vblobs = _encode_values(src, pos, scheme, bits)
        sections = [pblob] + vblobs
        sizes = [len(b) for b in sections]
        entries.append({"name": name, "shape": list(t.shape), "dtype": dtype, **extra, "positions": kind,
                        "count": int(pos.size), "offset": offset, "sizes": sizes, **meta})
        chunks.extend(sections)
        offset += sum(sizes)
    payload = b"".join(chunks)
    packed = _zstd().ZstdCompressor(level=level).compress(payload)
    header = json.dumps({
        "version": VERSION, "quantize": quantize or "none", "tensors": entries,
        "payload_bytes": len(payload), "sha256_payload": hashlib.sha256(payload).hexdigest(),
        "packed_bytes": len(packed), "sha256_packed": hashlib.sha256(packed).hexdigest(),
    }).encode("utf-8")
    return MAGIC + struct.pack("<HI", VERSION, len(header)) + header + packed


def decode(blob: bytes, where: str = "packed file") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``({name: tensor}, header)`` from :func:`encode`'s bytes; clear errors for anything wrong."""
    if len(blob) < len(MAGIC) + 6 or not blob.startswith(MAGIC):
        raise PruneError(f"{where} is not a prunekit packed file (bad magic)")
    version, hlen = struct.unpack("<HI", blob[len(MAGIC) : len(MAGIC) + 6])
    if version != VERSION:
        raise PruneError(f"{where} has packed format version {version}; this prunekit reads {VERSION}")
    start = len(MAGIC) + 6
    if len(blob) < start + hlen:
        raise PruneError(f"{where} is truncated (header)")
    try:
        header = json.loads(blob[start : start + hlen])
    except ValueError as e:
        raise PruneError(f"{where}: header is not valid JSON ({e})") from e
    packed = blob[start + hlen :]
    if len(packed) != header.get("packed_bytes"):
        raise PruneError(f"{where} is truncated or padded: {len(packed)} payload bytes, header says {header.get('packed_bytes')}")
    if hashlib.sha256(packed).hexdigest() != header.get("sha256_packed"):
        raise PruneError(f"{where}: checksum mismatch; the file is corrupted or was modified")
    try:
        payload = _zstd().ZstdDecompressor().decompress(packed, max_output_size=int(header["payload_bytes"]))
    except Exception as e:
        raise PruneError(f"{where}: payload could not be decompressed ({e})") from e
    if hashlib.sha256(payload).hexdigest() != header.get("sha256_payload"):
        raise PruneError(f"{where}: payload checksum mismatch")
    out: dict[str, torch.Tensor] = {}
    for e in header["tensors"]:
        shape, n = tuple(e["shape"]), int(np.prod(e["shape"])) if e["shape"] else 1
        dtype, stored = _DTYPES.get(e["dtype"]), _DTYPES.get(e.get("values_dtype", e["dtype"]))
        if dtype is None or stored is None or (stored != dtype and stored != torch.float32):
            raise PruneError(f"{where}: unknown dtype {e['dtype']!r} for {e['name']}")
        np_dtype = np.uint8 if stored == torch.bool else torch.empty(0, dtype=stored).numpy().dtype
        o, blobs = int(e["offset"]), []
        for size in e["sizes"]:
            blobs.append(payload[o : o + size])
            o += size
        pos = _unpositions(e["positions"], blobs[0], n)
        if pos.size != e["count"]:
            raise PruneError(f"{where}: {e['name']} has {pos.size} positions, header says {e['count']}")
        vals = _decode_values(e, blobs[1:], pos, shape, np_dtype)
        flat = np.zeros(n, dtype=np_dtype)
        flat[pos] = vals
        t = torch.from_numpy(flat.copy()).reshape(shape)
        out[e["name"]] = t.to(dtype) if dtype != stored or dtype == torch.bool else t
    return out, header
