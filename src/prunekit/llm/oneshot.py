"""Layer-by-layer one-shot pruning of decoder language models: magnitude, Wanda, SparseGPT.

The model is processed one decoder block at a time. The inputs of the first block are
captured on the calibration tokens; for each block, per-linear input statistics are
collected while the block runs on its current inputs, every ``nn.Linear`` of the block is
pruned, and the block's outputs are recomputed with the *pruned* weights to become the
inputs of the next block. Peak memory is one block's statistics plus the calibration
activations of one layer.

Methods:

* ``"magnitude"``: score ``|W_ij|``; needs no calibration data.
* ``"wanda"``: score ``|W_ij| * ||X_j||_2``, where ``X_j`` is input feature ``j`` over all
  calibration tokens (Sun et al., 2023).
* ``"sparsegpt"``: the approximate Optimal Brain Surgeon update of Frantar & Alistarh
  (2023). With ``H = 2 X^T X / n`` plus dampening, the upper Cholesky factor of ``H^-1``
  drives a column-by-column sweep: masks are chosen per block of ``blocksize`` columns by
  ``w^2 / [H^-1]_jj^2`` and every pruned weight's error is compensated on the columns not
  yet processed.
* ``"ria"``: relative importance and activations (Zhang et al., 2024): score
  ``(|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * ||X_j||_2 ** 0.5``, a weight's share
  of its input column and of its output row, times the square root of the input norm.

The resulting zeros are registered as prunekit masks (:func:`prunekit.masking.apply_masks`),
so :func:`prunekit.sparsity`, :func:`prunekit.masks` and :func:`prunekit.commit` apply.
"""

from __future__ import annotations

import math
import time
import warnings

import torch
from torch import nn

from ..allocation import depth_sparsities, outlier_ratio, owl_sparsities
from ..criteria import SparseGPT, sparsegpt_sweep
from ..errors import PruneError
from ..refine import REFINEMENTS
from .. import validate as V
from ..registry import create
from .blockwise import BlockPlan, block_linears, blocks_for, move_chunks, owl_pass, prune_blocks
from .blocks import LayerInputs, capture_inputs, check_tokens, transformer_blocks
from .calibration import can_generate, mix, self_generated, start_token_of
from .dist import distributed_reducer, execution_device, share_of
from .layer import COMPARISONS, METHODS, parse_pattern, prune_linear
from .linears import in_features
from .perplexity import perplexity
from .results import LLMLayerReport, LLMPruneReport
from .saving import finish
from .scope import block_coverage

__all__ = [
    "LLMLayerReport", "LLMPruneReport", "depth_sparsities", "outlier_ratio", "owl_sparsities", "parse_pattern", "perplexity", "prune_linear",
    "prune_llm", "sparsegpt_prune",
]

#: SparseGPT's sweep on one matrix (the core's :func:`prunekit.criteria.sparsegpt_sweep`).
sparsegpt_prune = sparsegpt_sweep
#: Epochs of block reconstruction when ``reconstruct`` is not given and calibration is.
DEFAULT_RECONSTRUCT = 2
ALLOCATIONS = ("uniform", "owl", "depth")


# --------------------------------------------------------------------------------- API


@torch.no_grad()
def prune_llm(
    model: nn.Module,
    calibration: torch.Tensor | None,
    *,
    method: str = "sparsegpt",
    sparsity: float = 0.5,
    pattern: str | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    shrink: float = 0.0,
    comparison: str = "row",
    batch_size: int = 8,
    allocation: str = "uniform",
    owl_lambda: float = 0.08,
    owl_m: float = 5.0,
    depth_lambda: float = 0.05,
    sequential: bool = False,
    reconstruct: int | None = None,
    reconstruct_lr: float = 3e-4,
    reconstruct_holdout: float = 0.0,
    self_calibration: float | None = None,
    refine: str | None = None,
    refine_cycles: int = 50,
    keep_masks: bool = False,
    device: str | torch.device | None = None,
    distributed: bool = False,
) -> LLMPruneReport:
    """Prune every linear layer of a transformer in one shot, block by block.

    Args:
        model: a ``transformers`` decoder whose blocks are ``model.model.layers`` (Llama,
            Mistral, Qwen2, SmolLM, ...) or ``transformer.h`` (GPT-2, whose ``Conv1D``
            layers are pruned as linears), or a BERT-style encoder (``encoder.layer``).
            Pruned in place; embeddings, norms and the LM head are left as they are.
        calibration: token ids ``[n, seqlen]`` (a 1-D tensor is one sequence). May be
            ``None`` for ``method="magnitude"`` with uniform allocation.
        method: ``"sparsegpt"`` (default), ``"wanda"``, ``"ria"``, ``"rgs"`` (Wanda++'s regional
            gradient score: Wanda's plus 100 × the root mean square, over calibration windows,
            of the gradient of the block's output norm; with ``reconstruct`` it is Wanda++)
            or ``"magnitude"``.
        sparsity: fraction of the weights to remove, in ``[0, 1)``. Ignored when
            ``pattern`` is given (the pattern fixes it to ``1 - N/M``).
        pattern: ``None`` for unstructured sparsity, or ``"N:M"`` to keep the N best of every
            M consecutive input weights (``"2:4"``, ``"4:8"``).
        blocksize: SparseGPT columns per block (the unstructured mask is chosen per block);
            a multiple of M with a pattern.
        percdamp: SparseGPT dampening, as a fraction of the Hessian's mean diagonal.
        shrink: SparseGPT Hessian shrinkage towards its diagonal, in ``[0, 1]``
            (:func:`sparsegpt_prune`); 0 is plain SparseGPT.
        comparison: for magnitude and Wanda without pattern, remove the lowest scores of each
            output row (``"row"``, Wanda's choice) or of the whole layer (``"layer"``).
            SparseGPT selects per block of columns and ignores it.
        batch_size: calibration sequences per forward pass.
        allocation: ``"uniform"`` (every block loses ``sparsity``) or ``"owl"``:
            outlier-weighted layer-wise sparsity (Yin et al., 2024). A first pass over the
            dense model measures each block's share of outlier Wanda scores (above
            ``owl_m`` times the block's mean score); blocks with more outliers are pruned
            less, within ``sparsity +- owl_lambda``, and the whole model still loses
            ``sparsity``. Unstructured only; costs one extra forward pass.
            ``"depth"``: a linear ramp from ``sparsity - depth_lambda`` at the first block
            to ``sparsity + depth_lambda`` at the last (early blocks feed every later one,
            so their errors compound). Unstructured only; needs no extra pass.
        owl_lambda: OWL's largest deviation from ``sparsity`` (0.08 in the paper).
        owl_m: OWL's outlier threshold, in multiples of the mean score (5 in the paper).
        depth_lambda: the ramp's half-span for ``allocation="depth"``.
        sequential: prune the linears of a block in groups that read the same input
            (``q/k/v``, then ``o``, then ``gate/up``, then ``down``), collecting each
            group's statistics after the groups before it are pruned, so later layers see
            the errors of earlier ones (SparseGPT's "true sequential"). Costs up to one
            more forward pass per block; the passes stop as soon as the group's inputs
            are seen.
        reconstruct: epochs of block-wise reconstruction (0 = off; ``None``, the default:
            2 for a causal LM pruned by a method that reads calibration text, 0 for
            magnitude and for encoders). After a block is
            pruned, the weights it kept are fitted with Adam so that the pruned block
            reproduces, on the calibration inputs, the outputs the dense block gave on
            the same inputs (mean squared error; one step per calibration batch; masks
            fixed). Costs one forward pass plus ``reconstruct`` forward-and-backward
            passes per block, and the block's dense outputs in memory.
        reconstruct_lr: Adam's learning rate for ``reconstruct``.
        reconstruct_holdout: fraction of the calibration batches, in ``[0, 1)``, set aside
            from fitting (at least one batch when positive): the reconstruction of a block
            stops at the first epoch that does not lower the error on them and keeps the
            best epoch's weights (:func:`prunekit.llm.reconstruct.reconstruct_block`);
            ``reconstruct`` is then the most epochs. 0: every batch is fitted for
            ``reconstruct`` epochs.
        self_calibration: fraction of the calibration windows, in ``[0, 1]``, replaced by
            text the model writes itself (:func:`prunekit.llm.calibration.self_generated`:
            sampled from the beginning-of-sequence token at temperature 1, seed 0, the same
            length as the given windows): the first ``n - round(fraction * n)`` given windows
            are kept and interleaved with the model's (:func:`prunekit.llm.calibration.mix`),
            so every calibration batch holds both. Statistics of one narrow text make masks
            and SparseGPT's updates fit that text; the model's own samples cover what it
            has learned (see ``docs/llm.md``, "Calibration"). ``None`` (default): 0.5 for a
            model that can ``generate`` (a causal LM) when calibration is used, else 0.
            Costs the generation (on a CPU, about 8 s per 512-token window of
            SmolLM2-135M).
        refine: ``None`` (default) or ``"dsnot"``: after each linear's mask is chosen, swap
            pruned and kept weights without changing any value, so that the layer's expected
            output on the calibration text moves back towards the dense one (DSnoT, Zhang et
            al., 2024; :func:`prunekit.refine.dsnot`). For ``wanda``, ``ria`` and
            ``magnitude`` (SparseGPT's sweep has already changed the weights it keeps); reads
            the calibration text. Measured in ``docs/llm.md`` ("The defaults, and why").
        refine_cycles: most swaps per output row with ``refine`` (50, the paper's).
        keep_masks: ``False`` (default): the masks are committed at the end, so the model
            is a plain ``transformers`` model whose ``save_pretrained`` → stock
            ``from_pretrained`` is exact. ``True``: the masks stay registered (to fine-tune
            with the zeros enforced); ``model.save_pretrained`` then commits, saves and
            registers them again, so the saved folder is exact as well.
        device: the execution device (``"cuda"``, ``"cuda:1"``, ``"cpu"``); each block is
            moved there for its passes and back, so the model may stay on the CPU
            (``docs/scale.md``). ``None``: every block runs where it is.
        distributed: under ``torchrun`` (an initialized ``torch.distributed`` group), every
            rank passes the same arguments and runs batches ``rank, rank + world, ...`` of the
            calibration set; the statistics are summed over the ranks
            (:mod:`prunekit.llm.dist`), so every rank prunes its model exactly as one process
            would. Needs ``reconstruct=0`` and at least one batch per rank.

    Returns:
        An :class:`LLMPruneReport` (``committed`` says which of the two happened).

    Raises:
        PruneError: (a ``ValueError``) for a bad argument or a model without transformer blocks.
    """
    method = V.choice("method", method, METHODS)
    nm = parse_pattern(pattern)
    sparsity = V.fraction("sparsity", sparsity)
    V.choice("comparison", comparison, COMPARISONS)
    blocksize = V.integer("blocksize", blocksize, minimum=1)
    batch_size = V.integer("batch_size", batch_size, minimum=1)
    percdamp = V.number("percdamp", percdamp, lo=0.0, hint="typically 0.01")
    shrink = V.fraction("shrink", shrink, one=True, hint="0 = plain SparseGPT")
    if shrink and method != "sparsegpt":
        raise PruneError(f"shrink={shrink!r} applies to method 'sparsegpt' only, not {method!r}")
    V.choice("allocation", allocation, ALLOCATIONS)
    V.boolean("keep_masks", keep_masks)
    owl_lambda = V.fraction("owl_lambda", owl_lambda, hint="typically 0.08")
    depth_lambda = V.fraction("depth_lambda", depth_lambda, hint="e.g. 0.05")
    owl_m = V.number("owl_m", owl_m, lo=0.0, lo_open=True, hint="typically 5")
    if reconstruct is None:  # the default chosen on a causal LM (docs/llm.md); encoders keep the published methods
        reconstruct = DEFAULT_RECONSTRUCT if calibration is not None and method != "magnitude" and can_generate(model) else 0
    reconstruct = V.integer("reconstruct", reconstruct, minimum=0, hint="epochs; 0 = off")
    reconstruct_lr = V.fraction("reconstruct_lr", reconstruct_lr, zero=False, hint="e.g. 3e-4")
    reconstruct_holdout = V.fraction("reconstruct_holdout", reconstruct_holdout, hint="a fraction of the calibration batches")
    V.boolean("sequential", sequential)
    if refine is not None:
        V.choice("refine", refine, REFINEMENTS)
        if method == "sparsegpt":
            raise PruneError("refine='dsnot' swaps weights of an unchanged matrix; method 'sparsegpt' has already "
                             "updated the weights it keeps: use method 'wanda', 'ria' or 'magnitude', or refine=None")
    refine_cycles = V.integer("refine_cycles", refine_cycles, minimum=1, hint="swaps per row, e.g. 50")
    if nm is not None:
        if allocation != "uniform":
            raise PruneError(f"allocation {allocation!r} needs unstructured sparsity; pattern {pattern!r} fixes every layer to {nm[0]}:{nm[1]}")
        sparsity = 1.0 - nm[0] / nm[1]
        if method == "sparsegpt" and blocksize % nm[1] != 0:
            raise PruneError(f"blocksize {blocksize!r} must be a multiple of M={nm[1]} for pattern {pattern!r}")
    if allocation == "depth" and depth_lambda >= min(sparsity, 1.0 - sparsity) > 0:
        raise PruneError(f"depth_lambda={depth_lambda!r} must be below min(sparsity, 1 - sparsity) = "
                         f"{min(sparsity, 1.0 - sparsity):.4g}: the ramp from sparsity - depth_lambda (first block) to "
                         "sparsity + depth_lambda (last) would leave a block unpruned or with no weights at all")
    layers = transformer_blocks(model)
    crit = SparseGPT(blocksize, float(percdamp), float(shrink)) if method == "sparsegpt" else create("criterion", method)
    reads = crit.statistics != "none"  # the criterion reads the calibration inputs
    needs_data = reads or allocation == "owl" or reconstruct > 0 or refine is not None
    if calibration is None:
        if needs_data:
            what = (
                f"method {method!r}" if method != "magnitude"
                else f"allocation {allocation!r}" if allocation == "owl"
                else f"refine={refine!r}" if refine is not None else f"reconstruct={reconstruct}"
            )
            raise PruneError(
                f"{what} needs calibration token ids [n, seqlen]; only 'magnitude' without OWL, refinement or "
                "reconstruction accepts None"
            )
        ids = None
    else:
        ids = check_tokens("calibration", calibration, model)
    generative = can_generate(model)
    if self_calibration is None:
        self_calibration = 0.5 if generative and ids is not None and needs_data else 0.0
        if self_calibration and start_token_of(model) is None:
            self_calibration = 0.0
            warnings.warn(f"{type(model).__name__}.config has no bos_token_id (nor eos_token_id) inside its vocabulary "
                          "for the model's own text to start from: calibrating on the given windows alone "
                          "(self_calibration=0)",
                          stacklevel=2)
    elif V.fraction("self_calibration", self_calibration, one=True,
                    hint="the fraction of calibration windows the model writes") > 0 and not generative:
        raise PruneError(f"self_calibration={self_calibration!r} needs a causal language model with generate(); "
                         f"{type(model).__name__} has none: use self_calibration=0")
    elif self_calibration and start_token_of(model) is None:
        raise PruneError(f"self_calibration={self_calibration!r}: {type(model).__name__}.config has no bos_token_id "
                         "(nor decoder_start_token_id, eos_token_id) inside its vocabulary for the model's own text to "
                         "start from; set one in the config, or use self_calibration=0")
    generated = 0 if ids is None or not needs_data else round(float(self_calibration) * ids.shape[0])
    held = 0
    if reconstruct and reconstruct_holdout and ids is not None:
        batches = math.ceil(ids.shape[0] / batch_size)
        held = math.ceil(reconstruct_holdout * batches)
        if held >= batches:
            raise PruneError(
                f"reconstruct_holdout={reconstruct_holdout!r} sets aside {held} of the {batches} calibration batches "
                f"({ids.shape[0]} windows, batch_size={batch_size}), leaving none to fit; use more calibration windows, "
                "a smaller batch_size or a smaller fraction"
            )

    names = {id(m): n for n, m in model.named_modules()}
    prefixes = [names[id(layer)] for layer in layers]
    per_block = [block_linears(layer, p) for layer, p in zip(layers, prefixes)]
    if nm is not None:
        bad = [f"{n} (in_features={in_features(m)})" for blk in per_block for n, m in blk if in_features(m) % nm[1]]
        if bad:
            raise PruneError(f"pattern {pattern!r} needs in_features divisible by {nm[1]}; not: {', '.join(bad)}")
    run_on = execution_device(device)
    reduce = distributed_reducer(distributed, reconstruct, ids, batch_size) if needs_data else None

    start = time.perf_counter()
    cuda = (run_on or next(model.parameters()).device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    report = LLMPruneReport(method=method, sparsity=sparsity, pattern=pattern, allocation=allocation, sequential=sequential,
                            reconstruct=reconstruct, self_calibration=float(self_calibration), refine=refine)
    was_training = model.training
    model.eval()
    try:
        if generated:
            t0 = time.perf_counter()
            own = self_generated(model, generated, ids.shape[1], seed=0, batch_size=batch_size)  # type: ignore[union-attr]
            kept = ids.shape[0] - generated  # type: ignore[union-attr]
            ids = (mix(ids[:kept], own) if kept else own).to(ids.device)  # type: ignore[index,union-attr]
            report.generated_windows, report.generation_seconds = generated, time.perf_counter() - t0
        # Magnitude without OWL or reconstruction reads only the weights: no forward pass at all.
        local = share_of(ids, batch_size) if reduce is not None else ids  # this process's calibration batches
        chunks, inputs = (capture_inputs(model, layers, local, batch_size) if ids is not None and needs_data
                          else ([], LayerInputs()))
        if run_on is not None:
            move_chunks(chunks, run_on)
            inputs.to(run_on)
        report.calibration_tokens = 0 if ids is None or not needs_data else int(ids.numel())
        blocks = blocks_for(model, layers, prefixes, run_on)
        chunks = blocks.keep(chunks)  # activations that do not fit the budget go to files (offload)
        sizes = [sum(m.weight.numel() for _, m in blk) for blk in per_block]
        block_sparsity = [sparsity] * len(layers)
        if allocation == "owl":
            report.outlier_ratio = owl_pass(blocks, chunks, float(owl_m), reduce, inputs)
            block_sparsity = owl_sparsities(report.outlier_ratio, sizes, sparsity, float(owl_lambda))
        elif allocation == "depth":
            block_sparsity = depth_sparsities(sizes, sparsity, float(depth_lambda))
        report.block_sparsity = block_sparsity
        plan = BlockPlan(crit, block_sparsity, nm, comparison, sequential, reconstruct, reconstruct_lr, held, reduce,
                         refine, refine_cycles)
        try:
            prune_blocks(blocks, chunks, plan, report, inputs)
        except Exception as e:
            if not report.layers:
                raise
            # Blocks before the failure are pruned (weights changed in place): say so, and leave
            # no half-applied masks behind for save_pretrained to write as foreign keys.
            finish(model, False)
            done = sorted({r.name.rsplit(".", 2)[0] for r in report.layers})
            raise PruneError(f"prune_llm failed after pruning {len(report.layers)} linears ({', '.join(done[:3])}"
                             f"{' ...' if len(done) > 3 else ''}), which stay pruned (masks committed): the model is "
                             f"changed, reload it before another try. The error: {type(e).__name__}: "
                             f"{str(e)[:300]}") from e
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - start
    if cuda:
        report.peak_memory_bytes = int(torch.cuda.max_memory_allocated())
    report.coverage = block_coverage(model, [x for blk in per_block for x in blk], [names[id(l)] for l in layers],
                                     "prune_llm")
    finish(model, keep_masks)
    report.committed = not keep_masks
    return report
