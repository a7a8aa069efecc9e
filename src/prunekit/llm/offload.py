"""One-shot pruning of language models larger than memory: one block at a time, from disk.

:func:`prune_offloaded` prunes a ``save_pretrained`` folder into another without ever
holding the model:

* ``offload="disk"``: the model is a skeleton without weights (``accelerate``'s
  ``init_empty_weights``); its safetensors shards are memory-mapped (:class:`ShardReader`).
  The input embeddings are read to capture the first block's inputs and dropped; then each
  block is read onto the execution device, pruned exactly as :func:`prunekit.llm.prune_llm`
  prunes it (the same code: :mod:`prunekit.llm.blockwise`), its masks committed, written to
  its own shard file and dropped. The tensors outside the blocks (embeddings, final norm, LM
  head) are copied to shards of their own, one tensor at a time. The folder is written
  beside ``out`` and renamed into place, so stock ``AutoModelForCausalLM.from_pretrained``
  reads the result, and a failed run leaves ``out`` as it was.
* ``offload="cpu"``: the model is loaded into CPU memory whole and each block is moved to
  ``device`` (a GPU) for its passes and back; the device holds one block at a time.

Peak memory of the disk path (``docs/scale.md``): one block's weights and the pruning's
working copies of its largest matrix, the block's statistics (SparseGPT: ``X^T X`` in float64
for every linear of the block), and the calibration activations (``windows x seqlen x hidden``,
twice with reconstruction), plus the largest tensor outside the blocks; independent of depth.
:func:`memory_plan` computes it before anything runs; with ``max_memory`` the activations are
spilled to files when the rest fits and they do not, and the run is refused when even the rest
does not fit.

Not covered: structured pruning (:func:`prunekit.llm.prune_structured` needs the model in
memory), self-calibration (sampling text needs every block for every token), checkpoints in
PyTorch ``.bin``/GGUF form, and tensors named differently from the model's ``state_dict``.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import validate as V
from ..distributed import rank
from ..errors import PruneError
from ..masking import commit
from .blocks import Chunk, check_tokens, transformer_blocks
from .blockwise import attach_blocks
from .dist import execution_device
from .offload_io import (INDEX, ShardReader, ShardWriter, SpilledChunks, format_bytes, make_parents, parse_bytes, publish,
                         remove_parents)
from .output import RECORD, output_problem
from .results import LLMPruneReport

__all__ = ["OFFLOADS", "OffloadReport", "memory_plan", "prune_offloaded"]

OFFLOADS = ("disk", "cpu")
_WEIGHTS = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass
class OffloadReport:
    """What :func:`prune_offloaded` did: the pruning report, the memory plan and the peak."""

    report: LLMPruneReport
    out: str
    offload: str
    plan: dict[str, int] = field(default_factory=dict)
    spilled: bool = False
    peak_rss_bytes: int = 0
    shards: int = 0


def _peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kilobytes on Linux


def memory_plan(block_bytes: int, block_params: list[int], grams: list[int], element: int, hidden: int,
                tokens: int, reconstruct: bool, outside: int) -> dict[str, int]:
    """The working set of one block, in bytes (see the module notes and ``docs/scale.md``).

    Args:
        block_bytes: the largest block's weights.
        block_params: the element counts of the largest block's linear weights.
        grams: the ``in_features`` of the linears whose ``X^T X`` is kept (empty for Wanda).
        element: bytes per weight and activation element.
        hidden: the model's hidden size.
        tokens: calibration tokens this process runs.
        reconstruct: whether the dense block's outputs are kept too.
        outside: the largest tensor outside the blocks.
    """
    largest = max(block_params, default=0)
    work = largest * (element + 21)  # one matrix: pruned copy, keep-mask, float32 scores, their sort (values, int64 indices)
    stats = sum(8 * d * d + 4 * d * d for d in grams)  # float64 sums and the float32 Hessian in use
    acts = tokens * hidden * element * (2 if reconstruct else 1)
    return {"block": block_bytes, "matrix_work": work, "statistics": stats, "activations": acts, "outside": outside,
            "total": max(outside, block_bytes + work + stats + acts)}


class DiskBlocks:
    """The blocks of a skeleton model, read from safetensors shards when opened and written when closed."""

    def __init__(self, model: nn.Module, layers: nn.ModuleList, prefixes: list[str], reader: ShardReader,
                 writer: ShardWriter | None, device: torch.device, inputs: list[str], spill: Path | None) -> None:
        self.model, self.layers, self.prefixes = model, layers, prefixes
        self.reader, self.writer, self.device = reader, writer, device
        self.inputs, self.spill = inputs, spill

    def __len__(self) -> int:
        return len(self.layers)

    def prefix(self, index: int) -> str:
        return self.prefixes[index]

    def keep(self, chunks: list[Chunk]) -> Any:
        return SpilledChunks(chunks, self.spill, self.device) if self.spill is not None else chunks

    def open(self, index: int) -> nn.Module:
        from accelerate.utils import set_module_tensor_to_device

        for name in self.inputs:  # the embeddings served the capture; drop them before the first block
            set_module_tensor_to_device(self.model, name, "meta")
        self.inputs = []
        layer = self.layers[index]
        for key in layer.state_dict():
            full = f"{self.prefixes[index]}.{key}"
            set_module_tensor_to_device(layer, key, self.device, value=self.reader.get(full))
        self.reader.release()
        for name, buf in list(layer.named_buffers()):  # buffers built with the block (not in the checkpoint)
            if buf.device.type != "meta" and buf.device != self.device:
                set_module_tensor_to_device(layer, name, self.device, value=buf)
        return layer

    def close(self, index: int, pruned: bool) -> None:
        layer = self.layers[index]
        if pruned:
            commit(layer)
            if self.writer is not None:
                prefix = self.prefixes[index]
                self.writer.write(index, {f"{prefix}.{k}": v for k, v in layer.state_dict().items()})
        from accelerate.utils import set_module_tensor_to_device

        for key in layer.state_dict():
            set_module_tensor_to_device(layer, key, "meta")


def _skeleton(folder: Path, reader: ShardReader) -> tuple[nn.Module, torch.dtype]:
    """The model of ``folder``'s config without weights, in the dtype of its stored block weights."""
    import transformers
    from accelerate import init_empty_weights

    config = transformers.AutoConfig.from_pretrained(folder)
    floats = [reader.dtype(n) for n in reader.names() if reader.dtype(n).is_floating_point]
    dtype = max(set(floats), key=floats.count) if floats else torch.float32
    with init_empty_weights(include_buffers=False):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval(), dtype


def _plan_for(model: nn.Module, layers: nn.ModuleList, prefixes: list[str], reader: ShardReader, outside: list[str],
              method: str, tokens: int, reconstruct: bool, element: int) -> dict[str, int]:
    from .blockwise import block_linears
    from .linears import in_features

    sizes = [sum(reader.nbytes(f"{p}.{k}") for k in layer.state_dict()) for layer, p in zip(layers, prefixes)]
    big = max(range(len(layers)), key=lambda i: sizes[i])
    linears = block_linears(layers[big], prefixes[big])
    grams = [in_features(m) for _, m in linears] if method == "sparsegpt" else []
    hidden = int(getattr(model.config, "hidden_size", 0) or 0)
    return memory_plan(sizes[big], [m.weight.numel() for _, m in linears], grams, element, hidden, tokens, reconstruct,
                       max((reader.nbytes(n) for n in outside), default=0))


def prune_offloaded(source: str | os.PathLike[str], out: str | os.PathLike[str], calibration: torch.Tensor | None, *,
                    offload: str = "disk", device: str | torch.device | None = None, max_memory: int | str | None = None,
                    overwrite: bool = False, record: dict[str, Any] | None = None, **options: Any) -> OffloadReport:
    """Prune the model in the folder ``source`` into the folder ``out``, block by block.

    Args:
        source: a ``save_pretrained`` folder with safetensors weights (``offload="cpu"`` also
            takes what :func:`prunekit.llm.load_causal_lm` loads).
        out: the folder to write: ``out`` may be new or empty; an earlier output of this
            function (or of ``prunekit llm prune``) is replaced only with ``overwrite=True``.
        calibration: token ids ``[n, seqlen]``, as for :func:`prunekit.llm.prune_llm`.
        offload: ``"disk"`` (default) or ``"cpu"`` (see the module notes).
        device: the execution device; default ``"cpu"``.
        max_memory: the execution device's budget (bytes, or ``"8GB"``, ``"512MiB"``): the
            run is refused when one block's working set exceeds it; the activations are
            spilled to files when only they do not fit (not with reconstruction).
        overwrite: replace an earlier prunekit output at ``out``.
        record: extra JSON written to ``out/prunekit-llm.json`` (with ``"files"``, the names written).
        **options: :func:`prunekit.llm.prune_llm`'s keyword arguments (``method``,
            ``sparsity``, ``pattern``, ``allocation``, ``sequential``, ``reconstruct``,
            ``distributed``, ...). ``self_calibration`` must be 0 with ``offload="disk"``
            (its default there); ``keep_masks`` does not apply (the output is committed).

    Returns:
        An :class:`OffloadReport`.
    """
    from .oneshot import prune_llm

    offload = V.choice("offload", offload, OFFLOADS)
    V.boolean("overwrite", overwrite)
    budget = parse_bytes("max_memory", max_memory)
    run_on = execution_device(device) or torch.device("cpu")
    import inspect

    accepted = [k for k in inspect.signature(prune_llm).parameters if k not in ("model", "calibration", "device", "keep_masks")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise PruneError(f"prune_offloaded does not accept {', '.join(unknown)}; it takes prune_llm's options "
                         f"{', '.join(accepted)} (the output is always committed)")
    dest = Path(out)
    problem = output_problem(dest, overwrite, flag="overwrite=True")
    if problem:
        raise PruneError(f"output folder {str(dest)!r} {problem}")
    if options.get("distributed") is True:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has checked `out` before rank 0 may write it
    if offload == "cpu":
        return _cpu(source, dest, calibration, run_on, budget, overwrite, record, options)
    folder = Path(source)
    if not (folder / "config.json").is_file():
        raise PruneError(f"offload='disk' reads a save_pretrained folder with config.json and safetensors; got {str(source)!r}")
    if options.get("self_calibration"):
        raise PruneError(f"self_calibration={options['self_calibration']!r} is not supported with offload='disk' (sampling "
                         "text runs every block for every token); use self_calibration=0")
    options["self_calibration"] = 0.0
    reader = ShardReader(folder)
    model, dtype = _skeleton(folder, reader)
    layers = transformer_blocks(model)
    names = {id(m): n for n, m in model.named_modules()}
    prefixes = [names[id(layer)] for layer in layers]
    missing = [f"{p}.{k}" for layer, p in zip(layers, prefixes) for k in layer.state_dict() if f"{p}.{k}" not in reader.files]
    if missing:
        raise PruneError(f"{str(folder)!r} lacks the block tensors {missing[:3]}{' and more' if len(missing) > 3 else ''}; "
                         "offloaded pruning needs checkpoints whose tensor names match the model's state_dict")
    check_ids(calibration, model)
    outside = [n for n in reader.names() if not any(n.startswith(p + ".") for p in prefixes)]
    head = model.get_output_embeddings()
    head_names = {f"{names[id(head)]}.{k}" for k in head.state_dict()} if head is not None else set()
    known = set(model.state_dict())
    inputs = [n for n in outside if n in known and n not in head_names]

    ids = calibration if isinstance(calibration, torch.Tensor) else None
    from ..distributed import world_size

    windows = 0 if ids is None else (ids.shape[0] if ids.dim() == 2 else 1)
    tokens = 0 if ids is None else -(-windows // max(1, world_size())) * ids.shape[-1]
    element = torch.empty((), dtype=dtype).element_size()
    plan = _plan_for(model, layers, prefixes, reader, outside, str(options.get("method", "sparsegpt")), tokens,
                     bool(options.get("reconstruct")), element)
    spill_needed = budget is not None and plan["total"] > budget
    if spill_needed and (plan["total"] - plan["activations"] > budget or options.get("reconstruct")):
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in plan.items())
        raise PruneError(f"max_memory={max_memory!r} is below what one block needs ({parts}); raise max_memory"
                         + (" or use reconstruct=0 (its targets cannot be spilled)" if options.get("reconstruct") else ""))

    created = make_parents(dest)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    spill = Path(tempfile.mkdtemp(prefix="prunekit-activations-")) if spill_needed else None
    main = rank() == 0
    writer = ShardWriter(tmp, len(layers) + len(outside)) if main else None
    try:
        from accelerate.utils import set_module_tensor_to_device

        for n in inputs:
            set_module_tensor_to_device(model, n, run_on, value=reader.get(n))
        for _, buf in model.named_buffers():
            if buf.device.type == "meta":
                raise PruneError("the model has buffers that are not in its checkpoint; offloaded pruning cannot rebuild them")
        if run_on.type != "cpu":  # buffers computed at construction (rotary tables) follow the execution device
            for n, buf in list(model.named_buffers()):
                set_module_tensor_to_device(model, n, run_on, value=buf)
        blocks = DiskBlocks(model, layers, prefixes, reader, writer, run_on, inputs, spill)
        attach_blocks(model, blocks)
        report = prune_llm(model, calibration, device=run_on, **options)
        if writer is not None:
            for i, n in enumerate(outside):
                writer.write(len(layers) + i, {n: reader.get(n)})
            writer.finish()
            _copy_files(folder, tmp)
            _record(tmp, record)
            publish(tmp, dest, output_problem(dest, overwrite, flag="overwrite=True"))
    finally:
        attach_blocks(model, None)
        shutil.rmtree(tmp, ignore_errors=True)
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)
        remove_parents(created, dest)
    return OffloadReport(report, str(dest), "disk", plan, spill is not None, _peak_rss(), len(layers) + len(outside))


def check_ids(calibration: Any, model: nn.Module) -> None:
    """Refuse token ids outside the model's vocabulary before anything runs or is written."""
    if not isinstance(calibration, torch.Tensor) or calibration.is_floating_point() or not calibration.numel():
        return  # prune_llm names what it accepts
    check_tokens("calibration", calibration, model)


def _record(folder: Path, payload: dict[str, Any] | None) -> None:
    import json

    written = sorted({p.name for p in folder.iterdir()} | {RECORD})
    body = {**(payload or {}), "files": written}
    (folder / RECORD).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def _copy_files(folder: Path, tmp: Path) -> None:
    """The files of a ``save_pretrained`` folder that are not weights (config, tokenizer, ...), unless written already."""
    for p in folder.iterdir():
        if (p.is_file() and not p.name.endswith(_WEIGHTS) and p.name not in (RECORD, INDEX)
                and not (tmp / p.name).exists()):
            shutil.copyfile(p, tmp / p.name)


def _cpu(source: Any, dest: Path, calibration: torch.Tensor | None, run_on: torch.device, budget: int | None,
         overwrite: bool, record: dict[str, Any] | None, options: dict[str, Any]) -> OffloadReport:
    """The model whole in CPU memory, each block moved to ``run_on`` for its passes."""
    import transformers

    from .models import load_causal_lm, resolve_source
    from .oneshot import prune_llm

    kind, where = resolve_source(source)
    tok = None
    if kind == "folder":
        model = transformers.AutoModelForCausalLM.from_pretrained(where).eval()
    else:
        model, tok = load_causal_lm(source)
    layers = transformer_blocks(model)
    block = max(sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers)
    if budget is not None and block > budget:
        raise PruneError(f"max_memory={budget} bytes is below one block's weights ({block} bytes, "
                         f"{format_bytes(block)}); raise max_memory")
    check_ids(calibration, model)
    report = prune_llm(model, calibration, device=run_on, **options)
    created = make_parents(dest)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        if rank() == 0:
            model.save_pretrained(tmp)
            if tok is not None:
                tok.save_pretrained(tmp)
            else:
                _copy_files(Path(where), tmp)
            _record(tmp, record)
            publish(tmp, dest, output_problem(dest, overwrite, flag="overwrite=True"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_parents(created, dest)
    return OffloadReport(report, str(dest), "cpu", {"block": block}, False, _peak_rss(), 0)
