"""``prunekit llm prune --offload cpu|disk``: calibration text in, :func:`prune_offloaded` out.

The command line checks its options, then calls :func:`run_offloaded`, which reads the
tokenizer of the source folder (never the weights), draws the calibration windows as the
in-memory command does, and prunes with :func:`prunekit.llm.offload.prune_offloaded` into
``--out`` (with the record ``prunekit-llm.json``). Under ``torchrun`` with ``distributed``,
every rank runs its share of the calibration batches and rank 0 writes the folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import PruneError
from .offload import OffloadReport, prune_offloaded
from .offload_io import format_bytes

__all__ = ["run_offloaded"]


def _tokenizer(source: str) -> Any:
    import transformers

    from .models import load_causal_lm, resolve_source

    kind, where = resolve_source(source)
    if kind != "folder":
        return load_causal_lm(source)[1]
    try:
        return transformers.AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as e:
        raise PruneError(f"{str(where)!r} has no tokenizer to cut the calibration text with ({e})") from None


def run_offloaded(source: str, out: Path, *, offload: str, max_memory: int | str | None, calib: dict[str, Any],
                  options: dict[str, Any], overwrite: bool, record: dict[str, Any], distributed: bool = False,
                  device: str | None = None, log: Callable[[str], None] | None = None) -> OffloadReport:
    """Prune ``source`` into ``out`` block by block.

    Args:
        source: a ``save_pretrained`` folder (``offload="cpu"`` also takes ``smollm2`` or a .gguf).
        out: the output folder.
        offload: ``"disk"`` or ``"cpu"``.
        max_memory: the execution device's budget (see :func:`prune_offloaded`).
        calib: ``{"text", "windows", "seqlen", "seed"}`` of the calibration windows.
        options: :func:`prunekit.llm.prune_llm`'s keyword arguments.
        overwrite: replace an earlier prunekit output at ``out``.
        record: written to ``out/prunekit-llm.json``.
        distributed: start the process group from ``torchrun``'s environment and share the
            calibration batches among the ranks.
        device: the execution device (default: ``cuda`` when available, else ``cpu``).
        log: progress printer.
    """
    import torch

    from .texts import load_texts
    from .windows import calibration_windows

    say = log or (lambda s: None)
    if distributed:
        from ..distributed import init_from_env

        init_from_env()
    if device is None:
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    ids = None
    if (options.get("method") != "magnitude" or options.get("allocation") == "owl" or options.get("reconstruct")
            or options.get("refine")):
        tok = _tokenizer(source)
        stream, _, _, _ = load_texts(tok, calib["text"], [])
        ids = calibration_windows(stream, calib["windows"], calib["seqlen"], calib["seed"])
        say(f"calibration: {calib['windows']} windows of {calib['seqlen']} tokens from {calib['text']}")
    rep = prune_offloaded(source, out, ids, offload=offload, device=device, max_memory=max_memory, overwrite=overwrite,
                          record=record, distributed=distributed, **options)
    plan = ", ".join(f"{k} {format_bytes(v)}" for k, v in rep.plan.items())
    say(f"offload {offload} on {device}: {rep.report.overall_sparsity:.2%} sparsity in {rep.report.seconds:.1f} s; "
        f"peak RSS {rep.peak_rss_bytes / 2**20:.0f} MiB; plan: {plan}" + ("; activations spilled to disk" if rep.spilled else ""))
    return rep
