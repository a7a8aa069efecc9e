"""The output folder of an llm run: ``save_pretrained`` + tokenizer, written atomically.

:func:`save_model` writes into a temporary folder beside the destination and renames it
into place, with a record (:data:`RECORD`) of what it wrote; :func:`output_problem` says why
a folder may not be written (a folder prunekit did not write is never replaced, and no file
it did not write is ever deleted).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import PruneError, PruneTypeError

__all__ = ["RECORD", "follow_umask", "is_empty_dir", "output_problem", "save_model"]


def _save_pretrained(model: Any, folder: Path) -> None:
    """``model.save_pretrained``, also for a model dequantized from GGUF (whose weights are plain fp32)."""
    q = getattr(model, "hf_quantizer", None)
    if q is not None:
        method = getattr(getattr(q, "quantization_config", None), "quant_method", None)
        if str(getattr(method, "value", method)).lower() == "gguf":
            # transformers marks GGUF-loaded models as quantized and refuses to save them,
            # but the weights were dequantized to fp32 on load: save them as a plain model.
            model.hf_quantizer = None
            for obj in (model, getattr(model, "config", None)):
                if obj is not None and "quantization_config" in getattr(obj, "__dict__", {}):
                    delattr(obj, "quantization_config")
            if hasattr(model, "is_quantized"):
                try:
                    model.is_quantized = False
                except AttributeError:
                    pass
    model.save_pretrained(folder)


def is_empty_dir(path: Path) -> bool:
    """``path`` is a folder with nothing in it."""
    return path.is_dir() and not any(path.iterdir())


#: The record :func:`save_model` writes into every folder it writes: the caller's payload
#: (``prunekit llm prune``: its settings and metrics) and ``"files"``, the names written.
RECORD = "prunekit-llm.json"
#: What ``save_pretrained`` and a tokenizer write: the files of a record that does not list
#: its own (one written by an earlier prunekit version).
_PRETRAINED = re.compile(
    r"(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|added_tokens|vocab|merges"
    r"|chat_template)\.(json|txt|jinja)|tokenizer\.model|spiece\.model"
    r"|(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?|model\.safetensors\.index\.json"
)
_SHOWN = 3  # names listed in a message before "and N more"


def _listing(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _written(folder: Path) -> set[str] | None:
    """The names an earlier :func:`save_model` wrote into ``folder``, read from its record;
    None when the folder holds no record (prunekit did not write it)."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    files = record.get("files")
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        return {*files, RECORD}
    if str(record.get("command", "")).startswith("prunekit llm"):  # a record that does not list its files
        return {p.name for p in folder.iterdir() if _PRETRAINED.fullmatch(p.name)} | {RECORD}
    return None


def output_problem(dest: str | os.PathLike[str], replace: bool, flag: str = "force=True") -> str | None:
    """Why :func:`save_model` may not write the folder ``dest``, or None when it may.

    It may write a new or empty folder and, with ``replace``, an earlier output of
    :func:`save_model` that holds nothing but what that save wrote (its record lists the
    files). A non-empty folder prunekit did not write, or an earlier output with other
    files in it, is refused even with ``replace``: the output replaces the whole folder,
    and no file prunekit did not write is ever deleted.

    Returns:
        The end of a sentence that starts with the folder's path ("is a file; ...");
        ``flag`` is what it tells the caller to pass to replace an earlier output.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        return "is a file, not a folder; give a folder path"
    if not dest.is_dir() or is_empty_dir(dest):
        return None
    names = sorted(p.name for p in dest.iterdir())
    written = _written(dest)
    if written is None:
        return (f"is a non-empty folder that prunekit did not write ({_listing(names)}); choose a new or empty "
                f"folder (the output replaces the whole folder, so {flag} does not apply to a folder of yours)")
    others = [n for n in names if n not in written]
    if others:
        return (f"holds an earlier prunekit output and files prunekit did not write ({_listing(others)}); "
                "move them or choose another folder (the output replaces the whole folder)")
    if not replace:
        return f"holds an earlier prunekit output; pass {flag} to replace it"
    return None


def follow_umask(folder: Path) -> None:
    """Give ``folder``, the folders in it and its files the modes ``mkdir`` and ``open``
    give (0o777 and 0o666 less the umask): ``mkdtemp`` makes 0700, and some writers 0600."""
    from ..export import current_umask

    umask = current_umask()
    os.chmod(folder, 0o777 & ~umask)
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~umask)
        for n in names:
            os.chmod(os.path.join(root, n), 0o666 & ~umask)


def save_model(model: Any, tokenizer: Any, dest: str | os.PathLike[str], *, files: dict[str, Any] | None = None,
               force: bool = False) -> Path:
    """Write ``save_pretrained`` + tokenizer (+ JSON ``files``) to the folder ``dest`` atomically.

    Everything goes to a temporary folder beside ``dest`` that is renamed into place, so a
    failed or interrupted save leaves ``dest`` as it was. The folder also gets the record
    ``prunekit-llm.json``: ``files["prunekit-llm.json"]`` (a dict) if given, plus
    ``"files"``, the names this save wrote. ``dest`` may be new or empty; an earlier output
    of ``save_model`` is replaced, as a whole, only with ``force=True``, and any other
    non-empty folder (or an earlier output holding files it did not write) is refused even
    then (see :func:`output_problem`). The folder and its files get the modes ``mkdir``
    and ``open`` give them (0755 and 0644 under the usual umask 022).

    Raises:
        PruneError: ``dest`` may not be written (the message says why).
        PruneTypeError: the record's payload is not a dict.
    """
    dest = Path(dest)
    files = dict(files or {})
    payload = files.pop(RECORD, {})
    if not isinstance(payload, dict):
        raise PruneTypeError(f"files[{RECORD!r}] must be a dict, got {type(payload).__name__}")
    problem = output_problem(dest, force)
    if problem:
        raise PruneError(f"output folder {str(dest)!r} {problem}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    old: Path | None = None
    try:
        _save_pretrained(model, tmp)
        tokenizer.save_pretrained(tmp)
        for name, data in files.items():
            (tmp / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        written = sorted({p.name for p in tmp.iterdir()} | {RECORD})
        (tmp / RECORD).write_text(json.dumps({**payload, "files": written}, indent=2) + "\n", encoding="utf-8")
        follow_umask(tmp)
        problem = output_problem(dest, force)  # files may have arrived while the model was written
        if problem:
            raise PruneError(f"output folder {str(dest)!r} {problem}")
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
            os.replace(dest, old / "x")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "x").exists() and not dest.exists():
            os.replace(old / "x", dest)  # put the previous folder back
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest
