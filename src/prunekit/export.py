"""Save and load models as data: safetensors weights plus a JSON spec, no pickle.

A saved model is a folder::

    out/model/
      model.safetensors   effective dense state (masks folded in), canonical keys ("fc1.weight")
      spec.json           format, version, zoo spec, class, shapes, masked names, sparsity,
                          user metadata, sha256 of model.safetensors

Zoo models rebuild themselves from ``spec["zoo"]``; models ``torch.fx`` can trace are
rebuilt from ``spec["architecture"]`` (a JSON graph, see ``prunekit.graph.spec``); any
other model is loaded into an
instance the caller provides, after its keys and shapes are checked.

This module writes the folder (:func:`save`); :mod:`prunekit.export_load` reads it back
(:func:`load`, re-exported here) and defines the names of its files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .errors import PruneError, PruneTypeError
from .export_load import FORMAT, PACKED_FILE, SPEC_FILE, VERSION, WEIGHTS_FILE
from .masking import Mask, get_masks, parametrizations, parametrized_names, plain_class
from .state_dicts import effective_state_dict as effective_state_dict  # defined in state_dicts; public here too
from .targets import check_module, find_targets

# Defined in prunekit.export_load and public here too:
from .export_load import SURGERY_ATTRS as SURGERY_ATTRS
from .export_load import load as load


def _plain_class(model: nn.Module) -> str:
    cls = plain_class(model)  # not the generated Parametrized<X> subclass
    return f"{cls.__module__}.{cls.__qualname__}"


def _zoo_spec(model: nn.Module) -> dict | None:
    spec = getattr(model, "zoo_spec", None)
    if spec is None:
        return None
    if not (isinstance(spec, Mapping) and isinstance(spec.get("name"), str) and isinstance(spec.get("kwargs", {}), Mapping)):
        raise PruneError(f"model.zoo_spec must be {{'name': str, 'kwargs': dict}}, got {spec!r}")
    return {"name": spec["name"], "kwargs": dict(spec.get("kwargs", {}))}


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _is_prunekit_folder(path: Path) -> bool:
    if not any(path.iterdir()):
        return True
    try:
        return json.loads((path / SPEC_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_parametrizations(model: nn.Module) -> None:
    """Refuse models whose weights carry parametrizations other than prunekit's masks
    (``weight_norm``, ``spectral_norm``...): a save holds effective values, which cannot be
    loaded back into the parametrization that computes them."""
    for mname, module in model.named_modules():
        for pname in parametrized_names(module):
            kinds = [type(p).__name__ for p in parametrizations(module, pname) if not isinstance(p, Mask)]
            if kinds:
                name = f"{mname}.{pname}" if mname else pname
                raise PruneError(
                    f"cannot save: {name} is parametrized by {kinds}; a prunekit save stores effective weights, "
                    "which cannot be loaded back into that parametrization. Remove it first "
                    f"(torch.nn.utils.parametrize.remove_parametrizations(model.get_submodule({mname!r}), {pname!r})) "
                    "or save the state_dict with torch.save"
                )


def _describe_inputs(example_inputs: Any) -> dict[str, Any]:
    """``input_shape``/``input_dtype`` (batch of 1) of one tensor, or the lists for several."""
    tensors = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not tensors or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in tensors):
        raise PruneTypeError(
            f"example_inputs must be a tensor with a batch dimension or a tuple of them, got {type(example_inputs).__name__}"
        )
    shapes = [[1, *t.shape[1:]] for t in tensors]
    dtypes = [str(t.dtype) for t in tensors]
    if len(tensors) == 1:
        return {"input_shape": shapes[0], "input_dtype": dtypes[0]}
    return {"input_shapes": shapes, "input_dtypes": dtypes}


def save(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    metadata: dict | None = None,
    format: str = "safetensors",
    quantize: str | None = None,
    example_inputs: Any = None,
) -> Path:
    """Write ``model`` to the folder ``path`` as safetensors + JSON spec, atomically.

    Everything is written into a temporary folder beside ``path`` and renamed into place,
    so a failure leaves an existing save untouched. The folder and its files get the modes
    ``mkdir`` and ``open`` would give them (0755 and 0644 under the usual umask 022). An existing folder is replaced only if
    it is empty or holds a previous prunekit save.

    Args:
        model: the model; masks are folded into the saved values (the model is unchanged).
            A ``DistributedDataParallel`` or ``DataParallel`` wrapper saves the model it wraps.
        path: the folder to create or replace.
        metadata: JSON-serializable extra information stored in ``spec["metadata"]``.
        format: "safetensors" (``model.safetensors``, exact) or "packed" (``model.pkpack``:
            zeros left out, values optionally quantized, zstd-compressed; see
            ``prunekit.deploy.packed``).
        quantize: with ``format="packed"``: None (exact), "fp16", "int8" (per output
            channel), "codebook" (4-bit shared values per tensor) or "codebook:<bits>".
        example_inputs: a tensor (or tuple of tensors) the model takes: its shape with a
            batch of 1 and its dtype are recorded in ``spec["metadata"]`` (``input_shape``,
            ``input_dtype``; ``input_shapes``/``input_dtypes`` for several inputs), so the
            folder can be measured and evaluated without being told its input.

    Returns:
        The folder's path.

    Example:
        >>> save(model, "out/lenet", metadata={"accuracy": 0.98})
        PosixPath('out/lenet')
    """
    check_module(model)
    # DDP and DataParallel keep the model in .module; its keys and zoo spec are what load reads.
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    if not isinstance(path, (str, os.PathLike)):
        raise PruneTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if metadata is None:
        metadata = {}
    if example_inputs is not None:
        metadata = {**(metadata or {}), **_describe_inputs(example_inputs)}
    if not isinstance(metadata, dict):
        raise PruneTypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise PruneTypeError(f"metadata must be JSON-serializable: {e}") from e
    _check_parametrizations(model)
    if path.exists() and not path.is_dir():
        raise PruneError(f"cannot save to {path}: it exists and is not a folder")
    if path.is_dir() and not _is_prunekit_folder(path):
        raise PruneError(f"refusing to replace {path}: it is a non-empty folder that is not a prunekit save")

    if format not in ("safetensors", "packed"):
        raise PruneError(f"format={format!r} is not one of ['packed', 'safetensors']")
    if quantize is not None and format != "packed":
        raise PruneError(f"quantize={quantize!r} needs format='packed'")
    state = effective_state_dict(model)
    if format == "packed":
        from .deploy.packed import encode

        blob = encode(state, quantize)
    else:
        blob = safetensors.torch.save(state)
    masked = list(get_masks(model))
    sparsity = {}
    with torch.no_grad():
        for name in [t.name for t in find_targets(model)] + masked:
            t = state[name]
            sparsity[name] = 1.0 - int(torch.count_nonzero(t)) / t.numel() if t.numel() else 0.0
    spec = {
        "format": FORMAT,
        "version": VERSION,
        "zoo": _zoo_spec(model),
        "class": _plain_class(model),
        "shapes": {k: list(v.shape) for k, v in state.items()},
        "masked": masked,
        "surgery": _history(model),
        **_architecture(model),
        "sparsity": sparsity,
        "metadata": metadata,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "weights": PACKED_FILE if format == "packed" else WEIGHTS_FILE,
        "quantize": quantize,
    }
    text = json.dumps(spec, indent=2)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # a plain folder once in place, not mkdtemp's private 0700
        _write_bytes(tmp / spec["weights"], blob)
        _write_bytes(tmp / SPEC_FILE, text.encode("utf-8"))
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _history(model: nn.Module) -> list[dict[str, Any]]:
    from .surgery.compact import HISTORY_ATTR

    return [
        {"modules": r.get("modules", {}), "created": list(r.get("created", [])), "replaced": r.get("replaced", {}),
         "shapes": r.get("shapes", {})}
        for r in getattr(model, HISTORY_ATTR, [])
    ]


def _architecture(model: nn.Module) -> dict[str, Any]:
    """``{"architecture": graph spec}`` for non-zoo models torch.fx can trace, else a note
    saying why ``pk.load`` will need ``model=``."""
    if _zoo_spec(model) is not None:
        return {}
    from .graph.spec import describe

    try:
        return {"architecture": describe(model)}
    except PruneError as e:
        return {"architecture_note": str(e)}


def _swap_into_place(tmp: Path, path: Path) -> None:
    # os.replace cannot overwrite a non-empty folder, so the old one steps aside first
    # and comes back if the new one cannot take its place.
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)

