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
"""

from __future__ import annotations

import copy
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
from .masking import Mask, apply_masks, get_masks, is_pruned, parametrizations, parametrized_names, plain_class
from .masking import effective_state_dict as effective_state_dict  # defined in masking; public here too
from .targets import check_module, find_targets

FORMAT = "prunekit"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
PACKED_FILE = "model.pkpack"
SPEC_FILE = "spec.json"
_SHOWN = 5  # mismatched keys listed in an error before "and N more"


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


#: Module attributes a saved surgery record may set on load (integers only).
SURGERY_ATTRS = frozenset({
    "out_channels", "in_channels", "groups", "out_features", "in_features", "num_features",
    "num_channels", "num_groups", "embedding_dim", "num_parameters", "num_heads", "head_dim",
    "n_heads", "heads", "n_head", "num_attention_heads", "nhead", "hidden_size", "input_size",
})


def _history(model: nn.Module) -> list[dict[str, Any]]:
    from .surgery.compact import HISTORY_ATTR

    return [
        {"modules": r.get("modules", {}), "created": list(r.get("created", [])), "replaced": r.get("replaced", {}),
         "shapes": r.get("shapes", {})}
        for r in getattr(model, HISTORY_ATTR, [])
    ]


def _replay(model: nn.Module, surgery: list[dict[str, Any]], tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Give a fresh, unpruned ``model`` the shapes a compacted save has: resize what the
    recorded surgery touched and set the recorded module attributes. Checked fully first."""
    from .surgery.compact import HISTORY_ATTR

    from .surgery.attention import PrunedMultiheadAttention

    modules = dict(model.named_modules())
    for rec in surgery:
        for mname, spec in (rec.get("replaced") or {}).items() if isinstance(rec, dict) else ():
            old = modules.get(mname)
            ok = isinstance(spec, dict) and spec.get("class") == "PrunedMultiheadAttention"
            ints = ok and all(isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool) and spec[k] > 0
                              for k in ("num_heads", "head_dim"))
            if not ints or not isinstance(old, (nn.MultiheadAttention, PrunedMultiheadAttention)):
                raise PruneError(f"{path}: surgery replaces {mname!r} with {spec!r}, which does not fit {type(old).__name__}")
            new = PrunedMultiheadAttention(old.embed_dim, spec["num_heads"], spec["head_dim"],
                                           bias=old.in_proj_bias is not None, batch_first=old.batch_first,
                                           dropout=old.dropout)
            parent, _, child = mname.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
            modules = dict(model.named_modules())
    resize: dict[str, tuple[int, ...]] = {}
    attrs: dict[str, dict[str, int]] = {}
    for rec in surgery:
        if not isinstance(rec, dict):
            raise PruneError(f"{path / SPEC_FILE}: a surgery record must be an object, got {rec!r}")
        for name in list(rec.get("shapes", {})) + list(rec.get("created", [])):
            if name not in tensors:
                raise PruneError(f"{path}: surgery touches {name!r}, which is not in the saved weights")
            mname, _, pname = name.rpartition(".")
            if mname not in modules:
                raise PruneError(f"{path}: surgery touches module {mname!r}, which {type(model).__name__} does not have")
            resize[name] = tuple(tensors[name].shape)
        for mname, values in rec.get("modules", {}).items():
            if mname not in modules:
                raise PruneError(f"{path}: surgery changes module {mname!r}, which {type(model).__name__} does not have")
            for k, v in values.items():
                if k not in SURGERY_ATTRS or isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise PruneError(f"{path}: surgery attribute {mname}.{k}={v!r} is not accepted")
                attrs.setdefault(mname, {})[k] = v
    for name, shape in resize.items():
        mname, _, pname = name.rpartition(".")
        mod = modules[mname]
        old = getattr(mod, pname, None)
        like = old if isinstance(old, torch.Tensor) else tensors[name]
        new = torch.zeros(shape, dtype=tensors[name].dtype, device=like.device)
        if pname in mod._buffers:
            mod._buffers[pname] = new
        else:
            mod._parameters[pname] = nn.Parameter(new, requires_grad=True if old is None else old.requires_grad)
    for mname, values in attrs.items():
        for k, v in values.items():
            setattr(modules[mname], k, v)
    object.__setattr__(model, HISTORY_ATTR, list(surgery))


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


def load(path: str | os.PathLike, model: nn.Module | None = None, *, masks: bool = False) -> nn.Module:
    """Load a folder written by :func:`save`.

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
    if not isinstance(masks, bool):
        raise PruneTypeError(f"masks must be a bool, got {type(masks).__name__}")
    path = Path(path)
    spec = _read_spec(path)
    tensors = _read_weights(path, spec)
    missing = [n for n in spec["masked"] if n not in tensors]
    if missing:
        raise PruneError(f"{path / SPEC_FILE}: masked names {missing} are not in the saved weights")
    rebuilt = model is None and not spec.get("zoo") and bool(spec.get("architecture"))
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
    model.load_state_dict(tensors, strict=True)
    if masks and spec["masked"]:
        apply_masks(model, {n: tensors[n] != 0 for n in spec["masked"]})
    return model
