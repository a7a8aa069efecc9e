"""The packed format from the command line: ``prunekit prune --format packed`` and
``prunekit export --format packed`` write a ``pk.save`` folder holding ``model.pkpack``
(zeros left out, values optionally quantized, zstd-compressed) instead of
``model.safetensors``; ``pk.load`` reads either.

The options are checked before any work starts (an error names the value and what is
accepted, and nothing is written); the save itself is atomic (:func:`prunekit.save`).
This module imports neither torch nor the rest of prunekit at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit.cli.common import console, fail

#: what ``--format`` of ``prunekit prune`` accepts
SAVE_FORMATS = ("safetensors", "packed")
#: what ``--format`` of ``prunekit export`` accepts
EXPORT_FORMATS = ("onnx", "packed")
_SCHEMES = "none, fp16, int8, codebook, codebook:BITS (BITS 1..8)"


def check_format(option: str, value: str, accepted: tuple[str, ...]) -> None:
    """``--format`` is one of ``accepted``; the packed format needs zstandard."""
    if value not in accepted:
        fail(f"{option}: unknown format {value!r}; available: {', '.join(accepted)}")
    if value == "packed":
        try:
            import zstandard  # noqa: F401
        except ImportError:
            fail(f"{option} packed needs zstandard: pip install prunekit[export]")


def check_quantize(quantize: str | None, format: str) -> str | None:
    """``--quantize``: None or "none" (exact) or a scheme of the packed format, only with
    ``--format packed``. Returns the scheme ``pk.save`` takes (None for exact)."""
    if quantize is None:
        return None
    if format != "packed":
        fail(f"--quantize {quantize!r} needs --format packed (got --format {format})")
    if quantize == "none":
        return None
    from prunekit.deploy.packed import parse_scheme
    from prunekit.errors import PruneError

    try:
        parse_scheme(quantize)
    except PruneError:
        fail(f"--quantize: unknown scheme {quantize!r}; available: {_SCHEMES}")
    return quantize


def files_line(folder: Path) -> str:
    """``model.pkpack 6,992 bytes, spec.json 1,136 bytes``: the files of a saved folder."""
    return ", ".join(f"{f.name} {f.stat().st_size:,} bytes" for f in sorted(folder.iterdir()) if f.is_file())


def safetensors_bytes(model: Any) -> int:
    """The size of ``model`` saved as safetensors (masks folded in), for comparison."""
    import safetensors.torch

    from prunekit.export import effective_state_dict

    return len(safetensors.torch.save(effective_state_dict(model)))


def check_loads_back(model: Any, folder: Path, inputs: tuple[Any, ...]) -> float:
    """Load ``folder`` and run it and ``model`` on the same example tensors; returns the
    largest absolute difference of their outputs (0 for an exact save)."""
    import torch

    import prunekit as pk

    loaded = pk.load(folder)
    was = model.training
    model.eval()
    loaded.eval()
    try:
        with torch.no_grad():
            a, b = model(*inputs), loaded(*inputs)
    finally:
        model.train(was)
    pairs = list(zip(_tensors(a), _tensors(b)))
    if len(pairs) != len(_tensors(a)) or len(pairs) != len(_tensors(b)):
        raise pk.PruneError(f"the model loaded back from {folder} returns {len(_tensors(b))} tensors, the model "
                         f"saved {len(_tensors(a))}")
    return max((float((x - y).abs().max()) for x, y in pairs if x.numel()), default=0.0)


def _tensors(out: Any) -> list[Any]:
    """The tensors of a model's output, in order, through tuples, lists and dicts."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    return [t for item in items for t in _tensors(item)]


def report_packed(model: Any, folder: Path, inputs: tuple[Any, ...], quantize: str | None) -> None:
    """Print what was written and the result of loading it back on the example tensors
    ``inputs`` (:func:`prunekit.cli.checks.example_inputs`)."""
    from prunekit.cli.checks import describe_inputs

    diff = check_loads_back(model, folder, inputs)
    console.print(f"wrote {folder}: {files_line(folder)} (as safetensors: {safetensors_bytes(model):,} bytes)",
                  highlight=False, soft_wrap=True)
    kind = "exact, expected 0" if quantize is None else f"{quantize} quantized"
    console.print(f"loaded back: max abs difference of the outputs {diff:.3g} ({kind}; input {describe_inputs(inputs)})",
                  highlight=False, soft_wrap=True)
