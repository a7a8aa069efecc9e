"""Loading a folder written by :func:`prunekit.export.save`: its spec and weights checked,
the recorded surgery replayed on a fresh model, the weights loaded.

Part of :mod:`prunekit.export` (which re-exports :func:`load` and the names of the folder
format; import them from there). The folder format, which :func:`prunekit.export.save`
writes, is defined here, where it is checked.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .errors import PruneError, PruneTypeError
from .masking import apply_masks, is_pruned
from .targets import check_module
from .validate import boolean

FORMAT = "prunekit"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
PACKED_FILE = "model.pkpack"
SPEC_FILE = "spec.json"
_SHOWN = 5  # mismatched keys listed in an error before "and N more"


#: Module attributes a saved surgery record may set on load: integers, a narrowed norm's
#: epsilon and ``normalized_shape`` (checked by :mod:`prunekit.surgery.replay`, which
#: defines the same names as ``INT_ATTRS | FLOAT_ATTRS | SHAPE_ATTRS``).
SURGERY_ATTRS = frozenset({
    "out_channels", "in_channels", "groups", "out_features", "in_features", "num_features",
    "num_channels", "num_groups", "embedding_dim", "num_parameters", "num_heads", "head_dim",
    "n_heads", "heads", "n_head", "num_attention_heads", "nhead", "hidden_size", "input_size", "d_model",
    "eps", "variance_epsilon", "epsilon", "layer_norm_eps", "rms_norm_eps", "normalized_shape",
})


def _replay(model: nn.Module, surgery: list[dict[str, Any]], tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Give a fresh, unpruned ``model`` the shapes a compacted save has: the recorded
    surgery (replaced modules, new shapes, attributes), checked fully first."""
    from .surgery.replay import replay

    replay(model, surgery, tensors, path)


def _read_spec(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise PruneError(f"no saved model at {path}: the folder does not exist")
    if not path.is_dir():
        raise PruneError(f"{path} is not a folder; pass the folder written by prunekit.save")
    spec_path = path / SPEC_FILE
    if not spec_path.is_file():
        raise PruneError(f"{spec_path} is missing; {path} is not a prunekit save")
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise PruneError(f"{spec_path} is not valid JSON: {e}") from e
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        got = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
        raise PruneError(f"{spec_path}: unknown format {got!r}; expected {FORMAT!r}")
    if spec.get("version") != VERSION:
        raise PruneError(
            f"{spec_path}: unsupported version {spec.get('version')!r}; this prunekit reads version {VERSION}"
        )
    for key, kind in (("shapes", dict), ("sha256", str), ("masked", list)):
        if not isinstance(spec.get(key), kind):
            raise PruneError(f"{spec_path}: field {key!r} is missing or not a {kind.__name__}")
    return spec


def _read_weights(path: Path, spec: dict[str, Any]) -> dict[str, torch.Tensor]:
    name = spec.get("weights", WEIGHTS_FILE)
    if name not in (WEIGHTS_FILE, PACKED_FILE):
        raise PruneError(f"{path / SPEC_FILE}: weights file {name!r} is not one of {[WEIGHTS_FILE, PACKED_FILE]}")
    file = path / name
    if not file.is_file():
        raise PruneError(f"{file} is missing")
    blob = file.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != spec["sha256"]:
        raise PruneError(
            f"checksum mismatch for {file}: spec.json expects sha256 {spec['sha256'][:16]}…, "
            f"the file has {digest[:16]}…; the file is corrupted or was modified"
        )
    if name == PACKED_FILE:
        from .deploy.packed import decode

        tensors, _ = decode(blob, str(file))
        return _check_shapes(tensors, spec, path, file)
    try:
        tensors = safetensors.torch.load(blob)
    except Exception as e:  # safetensors raises its own error types
        raise PruneError(f"{file} could not be read as safetensors: {e}") from e
    return _check_shapes(tensors, spec, path, file)


def _check_shapes(tensors: dict[str, torch.Tensor], spec: dict[str, Any], path: Path, file: Path) -> dict[str, torch.Tensor]:
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    if shapes != spec["shapes"]:
        raise PruneError(f"{file} does not match the shapes recorded in {path / SPEC_FILE}")
    return tensors


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _check_fits(model: nn.Module, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = []
    # The model's own key order: safetensors does not promise one, and the first keys listed
    # should be the first layers.
    mismatched = [
        f"{k} (saved {tuple(tensors[k].shape)}, model {shape})"
        for k, shape in expected.items()
        if k in tensors and tuple(tensors[k].shape) != shape
    ]
    missing = [k for k in expected if k not in tensors]
    unexpected = sorted(k for k in tensors if k not in expected)
    if mismatched:
        problems.append(f"shape mismatch: {_listed(mismatched)}")
    if missing:
        problems.append(f"missing from the save: {_listed(missing)}")
    if unexpected:
        problems.append(f"not in the model: {_listed(unexpected)}")
    if problems:
        raise PruneError(f"{path} does not fit {type(model).__name__}: " + "; ".join(problems))


def _build_from_zoo(spec: dict[str, Any], path: Path) -> nn.Module:
    zoo_spec = spec.get("zoo")
    if not zoo_spec and spec.get("architecture"):
        from .graph.spec import build

        return build(spec["architecture"])
    if not zoo_spec:
        why = spec.get("architecture_note", "it was saved without an architecture")
        raise PruneError(
            f"{path} holds a {spec.get('class', 'model')} that is not a prunekit zoo model and cannot be rebuilt "
            f"from the file ({why}); pass model=<a fresh instance of that class> to load into it"
        )
    from . import zoo  # local: the zoo is only needed for zoo saves

    try:
        return zoo.create(zoo_spec["name"], **zoo_spec.get("kwargs", {}))
    except PruneError:
        raise
    except Exception as e:
        raise PruneError(f"{path}: could not rebuild zoo model {zoo_spec!r}: {e}") from e


def match_dtypes(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Cast each floating parameter and buffer of ``model`` to the dtype of its saved tensor."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        saved = tensors.get(name)
        if saved is not None and saved.dtype.is_floating_point and t.dtype.is_floating_point and t.dtype != saved.dtype:
            t.data = t.data.to(saved.dtype)


def load(path: str | os.PathLike, model: nn.Module | None = None, *, masks: bool = False) -> nn.Module:
    """Load a folder written by :func:`prunekit.export.save`.

    Args:
        path: the folder.
        model: an instance to load into (keys and shapes must match, and it must carry no
            masks). ``None`` rebuilds a zoo model, or any model saved with an
            architecture graph (a ``torch.fx.GraphModule``). A compacted save replays
            its recorded surgery (new shapes, ``out_channels``/``in_features``...) on a
            fresh, unpruned instance first.
        masks: re-register masks equal to ``weight != 0`` on the parameters that were
            masked when saved, so fine-tuning keeps the zeros. A weight that was exactly
            zero without being masked also gets masked.

    Returns:
        The model with the saved weights (``model`` itself when given).

    Example:
        >>> small = load("out/lenet")
        >>> mine = load("out/custom", model=MyNet())
    """
    if not isinstance(path, (str, os.PathLike)):
        raise PruneTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    boolean("masks", masks)
    path = Path(path)
    spec = _read_spec(path)
    tensors = _read_weights(path, spec)
    missing = [n for n in spec["masked"] if n not in tensors]
    if missing:
        raise PruneError(f"{path / SPEC_FILE}: masked names {missing} are not in the saved weights")
    rebuilt = model is None and not spec.get("zoo") and bool(spec.get("architecture"))
    built = model is None
    if model is None:
        model = _build_from_zoo(spec, path)
    else:
        check_module(model)
        if is_pruned(model):
            raise PruneError(
                "load into a model without masks (a fresh instance, or call prunekit.masking.remove_masks first)"
            )
    surgery = spec.get("surgery") or []
    if surgery and not rebuilt:  # a rebuilt architecture already has the compacted shapes
        if not isinstance(surgery, list):
            raise PruneError(f"{path / SPEC_FILE}: 'surgery' must be a list, got {type(surgery).__name__}")
        trial = copy.deepcopy(model)  # a dry run: a save that does not fit leaves model as it was
        _replay(trial, surgery, tensors, path)
        _check_fits(trial, tensors, path)
        _replay(model, surgery, tensors, path)
    _check_fits(model, tensors, path)
    if built:  # a model load() builds takes the saved dtypes: a bfloat16 save loads as bfloat16
        match_dtypes(model, tensors)
    model.load_state_dict(tensors, strict=True)
    if masks and spec["masked"]:
        apply_masks(model, {n: tensors[n] != 0 for n in spec["masked"]})
    return model
