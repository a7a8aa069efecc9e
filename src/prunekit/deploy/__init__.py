"""Deployment: turn a pruned model into something that runs elsewhere or runs faster.

* :func:`export_onnx` (``prunekit.deploy.onnx``): an ONNX file with masks folded in,
  checked against PyTorch in onnxruntime. Needs the ``export`` extra.
* :func:`sparsify` (``prunekit.deploy.sparse``): replace sparse ``nn.Linear`` layers by
  :class:`SparseLinear` (a CSR weight) or, on CUDA for 2:4 weights, :class:`SemiStructuredLinear`,
  where that was measured to be faster here.
* :func:`encode` / :func:`decode` (``prunekit.deploy.packed``): the packed weight format
  behind ``pk.save(..., format="packed")``.
* :func:`quantized` / :func:`share_weights` (``prunekit.deploy.quantize``): int8/fp16/
  codebook values as the packed file holds them; Deep Compression weight sharing.
* :func:`advise` (``prunekit.deploy.advisor``): which deployable form is fastest and which
  is smallest, measured here.

Names are imported on first use, so ``import prunekit.deploy`` stays cheap and optional
dependencies are only needed by the function that uses them.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule of ``prunekit.deploy`` that defines it
_EXPORTS: dict[str, str] = {
    "OnnxCheck": "onnx",
    "check_onnx": "onnx",
    "export_onnx": "onnx",
    "SemiStructuredLinear": "sparse",
    "SparseLayerReport": "sparse",
    "SparseLinear": "sparse",
    "SparseReport": "sparse",
    "sparsify": "sparse",
    "encode": "packed",
    "decode": "packed",
    "quantized": "quantize",
    "share_weights": "quantize",
    "Advice": "advisor",
    "advise": "advisor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prunekit.deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
