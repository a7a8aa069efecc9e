"""``prunekit llm prune | eval``: the language-model commands of the ``prunekit`` command line.

:mod:`prunekit.cli` registers them under ``prunekit llm`` (help: :data:`LLM_HELP`). The
commands follow the rules of :mod:`prunekit.cli.common`: every option is checked before the
model is loaded, every failure is one ``error:`` line and exit status 2, and ``--out`` is
written atomically. ``--overwrite`` replaces only an earlier ``prunekit llm prune`` output; a
non-empty folder holding files prunekit did not write is refused even with it.

This module imports neither torch nor transformers at import time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from prunekit.cli import checks, output
from prunekit.cli.common import console, expected_errors, fail, handles_errors, print_json, threads_option
from prunekit.cli.llm_summary import llm_summary as llm_summary  # defined there; public here too (`prunekit run`)
from prunekit.cli.llm_summary import text_name

LLM_HELP = "Language models: one-shot (Wanda, SparseGPT, magnitude; N:M) and structured (heads, MLP neurons) pruning, perplexity."


def llm_setup() -> None:
    """Fail unless transformers is installed; silence its progress bars."""
    try:
        import transformers
    except ImportError:
        fail("prunekit llm needs transformers; install it with `pip install prunekit[llm]`")
    transformers.utils.logging.disable_progress_bar()


def _text(option: str, value: str) -> str:
    """``kjv`` as given, or the absolute path of an existing text file."""
    from prunekit import PruneError
    from prunekit.llm.recipe import check_text

    try:
        return check_text(value)
    except PruneError:
        fail(f"{option} {value!r} is neither 'kjv' (the King James Bible) nor an existing text file")


def _eval_texts(option: str, value: str) -> list[str]:
    """Comma-separated evaluation texts: domain names as given, files as absolute paths.

    Every domain's package is checked here, before any model is loaded.
    """
    from prunekit import PruneError
    from prunekit.llm.data import EVAL_DOMAINS
    from prunekit.llm.recipe import KJV, check_eval_text, same_file

    domains = ", ".join(EVAL_DOMAINS)
    items = [v.strip() for v in value.split(",")]
    if not all(items):
        fail(f"{option} {value!r} has an empty item; give comma-separated evaluation domains ({domains}) "
             "or text files, e.g. kjv,pydoc,news")
    texts: list[str] = []
    for item in items:
        try:
            text = check_eval_text(item)
        except PruneError as e:
            if item in EVAL_DOMAINS:
                fail(f"{option} {item!r}: {e}")
            others = ", ".join(d for d in EVAL_DOMAINS if d != KJV)
            fail(f"{option} {item!r} is neither 'kjv' (the King James Bible's evaluation half) nor another evaluation "
                 f"domain ({others}) nor an existing text file")
        if any(same_file(text, t) for t in texts) or (text == KJV and KJV in texts):
            fail(f"{option} {value!r} names {item!r} twice; give each text once")
        texts.append(text)
    return texts


def _model(value: str) -> str:
    """A package name as given, or the absolute path of a model folder or .gguf file."""
    from prunekit import PruneError
    from prunekit.llm.recipe import check_model

    try:
        return check_model(value)
    except PruneError as e:
        fail(f"SOURCE: {e}")


def _check_pattern(pattern: Optional[str], sparsity: Optional[float]) -> Optional[tuple[int, int]]:
    """--pattern as (N, M), and --sparsity left out or equal to 1 - N/M."""
    from prunekit import PruneError
    from prunekit.llm.oneshot import parse_pattern as parse

    if pattern is None:
        return None
    try:
        nm = parse(pattern)
    except PruneError:
        fail(f"--pattern {pattern!r} is not N:M with integers 1 <= N <= M; use e.g. 2:4 or 4:8")
    assert nm is not None
    implied = 1.0 - nm[0] / nm[1]
    if sparsity is not None and abs(sparsity - implied) > 1e-9:
        fail(f"--sparsity {sparsity!r} conflicts with --pattern {pattern!r}, which removes {implied:.2%}; leave --sparsity out")
    return nm


@handles_errors(outputs=("out",))
def llm_prune(
    source: str = typer.Argument(..., help="'smollm2' (the installed SmolLM2-135M package), a save_pretrained folder, or a .gguf file."),
    out: Path = typer.Option(..., help="Folder to write: the pruned model (save_pretrained), its tokenizer and prunekit-llm.json."),
    method: str = typer.Option("sparsegpt", help="One-shot method: sparsegpt, wanda, ria, rgs (Wanda++'s regional gradient score) or magnitude."),
    sparsity: Optional[float] = typer.Option(None, help="Fraction of the block linears' weights removed, in [0, 1) (default 0.5; 0 skips the one-shot stage)."),
    pattern: Optional[str] = typer.Option(None, help="N:M sparsity, e.g. 2:4 or 4:8 (N kept of every M); fixes the sparsity to 1 - N/M."),
    allocation: Optional[str] = typer.Option(None, help="Sparsity per block: uniform (default), owl (outlier-weighted layer-wise sparsity) or depth (ramped from first to last block)."),
    owl_lambda: Optional[float] = typer.Option(None, help="With --allocation owl: largest deviation from --sparsity, in [0, 1) (default 0.08)."),
    owl_m: Optional[float] = typer.Option(None, help="With --allocation owl: outlier threshold in multiples of the mean score (default 5)."),
    depth_lambda: Optional[float] = typer.Option(None, help="With --allocation depth: half-span of the ramp, in [0, 1) (default 0.05)."),
    sequential: bool = typer.Option(False, "--sequential", help="Prune a block's linears in input order (q/k/v, o, gate/up, down), re-running the block between groups."),
    reconstruct: Optional[int] = typer.Option(None, help="Epochs of block-wise reconstruction after pruning each block (refits the kept weights to the dense block's outputs; default 2, 0 turns it off)."),
    reconstruct_lr: Optional[float] = typer.Option(None, help="With --reconstruct: Adam's learning rate, in (0, 1) (default 3e-4)."),
    reconstruct_holdout: Optional[float] = typer.Option(None, help="With --reconstruct: fraction of calibration batches held out, in [0, 1); each block stops fitting at the first epoch that does not lower their error."),
    self_calibration: Optional[float] = typer.Option(None, help="Fraction of the calibration windows replaced by text the model writes itself, in [0, 1] (default 0.5; 0 calibrates on --calib alone)."),
    shrink: Optional[float] = typer.Option(None, help="SparseGPT: shrink the Hessian towards its diagonal, in [0, 1] (default 0)."),
    refine: Optional[str] = typer.Option(None, help="Mask refinement after each layer's selection: dsnot (swaps kept and pruned weights towards the dense layer's mean output; wanda, ria, rgs or magnitude)."),
    comparison: str = typer.Option("row", help="Wanda and magnitude: remove the lowest scores per output row or per layer."),
    blocksize: int = typer.Option(128, help="SparseGPT: columns per block."),
    percdamp: float = typer.Option(0.01, help="SparseGPT: dampening, a fraction of the Hessian's mean diagonal."),
    heads: Optional[float] = typer.Option(None, help="Structured: fraction of every block's attention heads to remove, in [0, 1)."),
    neurons: Optional[float] = typer.Option(None, help="Structured: fraction of every block's MLP neurons to remove, in [0, 1)."),
    criterion: str = typer.Option("wanda", help="Structured criterion: wanda or magnitude."),
    gqa: str = typer.Option("groups", help="Structured heads: remove whole KV groups (groups) or query heads within every group (queries)."),
    calib: str = typer.Option("kjv", help="Calibration text: kjv (the King James Bible's calibration half) or a UTF-8 text file."),
    calib_windows: int = typer.Option(64, help="Calibration windows, drawn at random offsets of the text."),
    seqlen: int = typer.Option(512, help="Tokens per calibration and evaluation window."),
    seed: int = typer.Option(0, help="Seed of the window positions."),
    batch_size: int = typer.Option(8, help="Windows per forward pass."),
    eval_text: Optional[str] = typer.Option(None, "--eval", help="Perplexity before and after on comma-separated texts, each on its own: kjv (the evaluation half), pydoc, news, fortunes, or text files (not the calibration file); e.g. kjv,pydoc,news."),
    eval_windows: int = typer.Option(32, help="Evaluation windows (distinct, non-overlapping)."),
    overwrite: bool = typer.Option(False, "--overwrite", "--force", help="Replace an earlier `prunekit llm prune` output at --out (a folder holding other files is refused)."),
    offload: Optional[str] = typer.Option(None, help="Prune block by block without holding the model: disk (SOURCE's safetensors read lazily, --out written shard by shard) or cpu (the model in CPU memory, each block on the execution device). One-shot masks only; see docs/scale.md."),
    max_memory: Optional[str] = typer.Option(None, help="With --offload: the execution device's budget, e.g. 8GB or 512MiB; calibration activations spill to disk when only they do not fit."),
    distributed: bool = typer.Option(False, "--distributed", help="With --offload, under torchrun: every rank runs its share of the calibration batches; rank 0 writes --out."),
    threads: int | None = threads_option(),
) -> None:
    """Prune a causal language model and save it with save_pretrained.

    Structured removal (--heads, --neurons) runs first, then one-shot masks (--method, --sparsity or --pattern) on the smaller model; the masks are committed before saving.
    """
    from prunekit import PruneError
    from prunekit.llm.oneshot import METHODS, REFINEMENTS
    from prunekit.llm.recipe import (ALLOCATIONS, COMPARISONS, GQA_MODES, RECORD, STRUCTURED_CRITERIA, LLMRecipe,
                                     check_supported, execute, output_problem, same_file, save_model)

    # Every option, the texts, the source and --out are checked before anything is loaded or written.
    checks.check_name("--method", method, METHODS)
    checks.check_fraction("--sparsity", sparsity, "the fraction of the block linears' weights to remove")
    nm = _check_pattern(pattern, sparsity)
    checks.check_name("--allocation", allocation, ALLOCATIONS)
    checks.check_fraction("--owl-lambda", owl_lambda, "the largest deviation of a block from --sparsity")
    checks.check_positive("--owl-m", owl_m, "5")
    if (owl_lambda is not None or owl_m is not None) and allocation != "owl":
        fail("--owl-lambda and --owl-m need --allocation owl")
    checks.check_fraction("--depth-lambda", depth_lambda, "the half-span of the depth ramp")
    if depth_lambda is not None and allocation != "depth":
        fail("--depth-lambda needs --allocation depth")
    if nm is not None and allocation in ("owl", "depth"):
        fail(f"--allocation {allocation} needs unstructured sparsity; --pattern {pattern!r} fixes every layer")
    checks.check_min("--reconstruct", reconstruct, 0, "2")
    if reconstruct_lr is not None and not 0 < reconstruct_lr < 1:
        fail(f"--reconstruct-lr: {reconstruct_lr!r} is outside (0, 1) (Adam's learning rate, e.g. 3e-4)")
    if reconstruct_lr is not None and reconstruct == 0:
        fail("--reconstruct-lr needs reconstruction; --reconstruct 0 turns it off")
    checks.check_fraction("--reconstruct-holdout", reconstruct_holdout, "the fraction of calibration batches held out")
    if reconstruct_holdout is not None and reconstruct == 0:
        fail("--reconstruct-holdout needs reconstruction; --reconstruct 0 turns it off")
    for flag, value, what in (("--self-calibration", self_calibration, "the fraction of calibration windows the model writes"),
                              ("--shrink", shrink, "SparseGPT's Hessian shrinkage")):
        if value is not None and not 0 <= value <= 1:
            fail(f"{flag}: {value!r} is outside [0, 1] ({what})")
    if shrink is not None and method != "sparsegpt":
        fail(f"--shrink applies to --method sparsegpt, not {method}")
    checks.check_name("--refine", refine, REFINEMENTS)
    if refine is not None and method == "sparsegpt":
        fail("--refine dsnot refines the masks of --method wanda, ria, rgs or magnitude; sparsegpt has already updated the weights it keeps")
    checks.check_name("--comparison", comparison, COMPARISONS)
    checks.check_min("--blocksize", blocksize, 1, "128")
    if not percdamp >= 0:
        fail(f"--percdamp: {percdamp!r} is not allowed (expected a number >= 0, e.g. 0.01)")
    checks.check_fraction("--heads", heads, "the fraction of every block's attention heads to remove")
    checks.check_fraction("--neurons", neurons, "the fraction of every block's MLP neurons to remove")
    checks.check_name("--criterion", criterion, STRUCTURED_CRITERIA)
    checks.check_name("--gqa", gqa, GQA_MODES)
    checks.check_llm_run(calib_windows, seqlen, batch_size, seed, threads)
    checks.check_min("--eval-windows", eval_windows, 1, "32")
    calib_path = _text("--calib", calib)
    eval_paths = _eval_texts("--eval", eval_text) if eval_text is not None else []
    for path in eval_paths:
        if same_file(calib_path, path):
            fail(f"--eval {path!r} is the calibration text too; evaluate on other text (or kjv, whose halves are disjoint)")
    eval_path: Any = (eval_paths[0] if len(eval_paths) == 1 else eval_paths) if eval_paths else None
    if offload is not None:
        checks.check_name("--offload", offload, ("disk", "cpu"))
        why = ("--heads/--neurons (structured removal needs the model in memory)" if heads or neurons else
               "--eval (perplexity needs the whole model)" if eval_text is not None else
               "--self-calibration (sampling text runs every block for every token)" if offload == "disk" and self_calibration
               else "--sparsity 0 (nothing to prune)" if nm is None and sparsity == 0 else None)
        if why:
            fail(f"--offload {offload} does not combine with {why}")
    elif max_memory is not None or distributed:
        fail("--max-memory and --distributed need --offload disk or cpu")
    if max_memory is not None:
        from prunekit.llm.offload_io import parse_bytes

        try:
            parse_bytes("--max-memory", max_memory)
        except PruneError as e:
            fail(str(e))
    model_source = _model(source)
    problem = output_problem(out, overwrite, flag="--overwrite")
    if problem:
        fail(f"--out {str(out)!r} {problem}")
    output.check_writable("--out", out)

    stages: list[dict[str, Any]] = []
    if heads or neurons:
        stages.append({"structured": {"heads": heads or 0.0, "neurons": neurons or 0.0, "criterion": criterion,
                                      "gqa": gqa, "batch_size": batch_size}})
    sp = 0.5 if sparsity is None else sparsity
    if nm is not None or sp > 0:
        one: dict[str, Any] = {"method": method, "sparsity": 1.0 - nm[0] / nm[1] if nm else sp, "pattern": pattern,
                               "comparison": comparison, "blocksize": blocksize, "percdamp": percdamp,
                               "batch_size": batch_size}
        # Optional prune_llm arguments are passed only when given.
        one.update({k: v for k, v in (("allocation", allocation), ("owl_lambda", owl_lambda), ("owl_m", owl_m),
                                      ("depth_lambda", depth_lambda), ("sequential", sequential or None),
                                      ("reconstruct", reconstruct), ("reconstruct_lr", reconstruct_lr),
                                      ("reconstruct_holdout", reconstruct_holdout), ("shrink", shrink),
                                      ("self_calibration", self_calibration), ("refine", refine)) if v is not None})
        stages.append({"oneshot": one})
    raw = {"task": "llm", "name": "prunekit llm prune", "model": model_source,
           "calibration": {"text": calib_path, "windows": calib_windows, "seqlen": seqlen, "seed": seed},
           "evaluation": ({"text": eval_path, "windows": eval_windows, "seqlen": seqlen, "seed": seed}
                          if eval_path is not None else None),
           "stages": stages}
    llm_setup()
    threads = checks.set_threads(threads)
    try:
        recipe = LLMRecipe.validate_dict(raw, source="options")
        check_supported(recipe)
    except PruneError as e:
        fail(" ".join(str(e).removeprefix("invalid recipe:").split()))
    if offload is not None:
        from prunekit.distributed import is_main
        from prunekit.llm.offload_run import run_offloaded

        one = stages[-1]["oneshot"]
        with expected_errors(ValueError, OSError):
            rep = run_offloaded(model_source, out, offload=offload, max_memory=max_memory, calib=raw["calibration"],
                                options=one, overwrite=overwrite, distributed=distributed,
                                record={"command": "prunekit llm prune", "settings": {
                                    "source": source, "out": str(out), "offload": offload, "max_memory": max_memory,
                                    "distributed": distributed, "calibration": raw["calibration"], **one}},
                                log=lambda line: console.print(line, highlight=False, soft_wrap=True))
        if rep.out and is_main():
            console.print(f"Saved to {out} (safetensors shards + {RECORD})", highlight=False)
        return
    with expected_errors(ValueError, OSError):  # PruneError, and what transformers raises for an unreadable model
        model, tok, metrics = execute(recipe, log=lambda line: console.print(line, highlight=False, soft_wrap=True))
        settings = {"source": source, "out": str(out), "method": method, "sparsity": sparsity, "pattern": pattern,
                    "allocation": allocation, "owl_lambda": owl_lambda, "owl_m": owl_m, "depth_lambda": depth_lambda,
                    "sequential": sequential, "reconstruct": reconstruct, "reconstruct_lr": reconstruct_lr,
                    "reconstruct_holdout": reconstruct_holdout, "self_calibration": self_calibration, "shrink": shrink,
                    "refine": refine, "comparison": comparison, "blocksize": blocksize, "percdamp": percdamp, "heads": heads,
                    "neurons": neurons, "criterion": criterion, "gqa": gqa, "calib": calib,
                    "calib_windows": calib_windows, "seqlen": seqlen, "seed": seed, "batch_size": batch_size,
                    "eval": eval_text, "eval_windows": eval_windows, "threads": threads}
        payload = {"command": "prunekit llm prune", "settings": settings,
                   **{k: v for k, v in metrics.items() if k != "recipe"}}
        problem = output_problem(out, overwrite, flag="--overwrite")  # --out may have changed while the model ran
        if problem:
            fail(f"--out {str(out)!r} {problem}")
        save_model(model, tok, out, files={RECORD: payload}, force=overwrite)
    llm_summary(metrics, title=f"{source} -> {out}")
    console.print(f"Saved to {out} (save_pretrained + tokenizer + {RECORD})", highlight=False, soft_wrap=True)


@handles_errors
def llm_eval(
    source: str = typer.Argument(..., help="'smollm2', a save_pretrained folder (e.g. written by `prunekit llm prune`), or a .gguf file."),
    text: str = typer.Option("kjv", help="Comma-separated evaluation texts, each measured on its own: kjv (the King James Bible's evaluation half), pydoc (Python's documentation topics), news (BBC News articles), or UTF-8 text files; e.g. kjv,pydoc,news."),
    windows: int = typer.Option(32, help="Evaluation windows per text (distinct, non-overlapping)."),
    seqlen: int = typer.Option(512, help="Tokens per window."),
    seed: int = typer.Option(0, help="Seed of the window choice."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (and nothing else) on stdout instead of a line or table."),
    threads: int | None = threads_option(),
) -> None:
    """Perplexity of a causal language model on held-out text, per text, and the sparsity of its block linears."""
    checks.check_min("--windows", windows, 1, "32")
    checks.check_min("--seqlen", seqlen, 2, "512")
    checks.check_min("--seed", seed, 0, "0")
    checks.check_min("--threads", threads, 1, "2")
    texts = _eval_texts("--text", text)
    model_source = _model(source)
    llm_setup()
    threads = checks.set_threads(threads)
    start = time.perf_counter()
    with expected_errors(ValueError, OSError):  # PruneError, and what transformers raises for an unreadable model
        from prunekit.llm.models import load_causal_lm
        from prunekit.llm.oneshot import perplexity
        from prunekit.llm.recipe import evaluation_windows, linear_stats, load_texts, parameter_count

        model, tok = load_causal_lm(model_source, log=None if as_json else (lambda s: console.print(s, highlight=False)))
        _, streams, _, infos = load_texts(tok, None, texts)
        ids = evaluation_windows(streams, windows, seqlen, seed)  # every text is checked before the first is measured
        results = []
        for t in texts:
            t0 = time.perf_counter()
            ppl = perplexity(model, ids[t], seqlen=seqlen)
            info = infos[t]
            results.append({"text": t, "kind": info["kind"], "perplexity": ppl, "tokens": int(ids[t].numel()),
                            "stream_tokens": info["stream_tokens"], "documents": info.get("documents"),
                            "seconds": time.perf_counter() - t0})
        lin = linear_stats(model)
    result: dict[str, Any] = {"source": source}
    if len(texts) == 1:  # one text: its figures at the top level too
        result.update(text=texts[0], windows=windows, seqlen=seqlen, seed=seed, tokens=results[0]["tokens"],
                      perplexity=results[0]["perplexity"])
    else:
        result.update(windows=windows, seqlen=seqlen, seed=seed)
    result.update(texts=texts, perplexities={r["text"]: r["perplexity"] for r in results}, results=results,
                  params=parameter_count(model),
                  sparsity_linear=lin["zeros"] / lin["weights"] if lin["weights"] else 0.0,
                  seconds=time.perf_counter() - start)
    if as_json:
        print_json(result)
        return
    if len(texts) == 1:
        console.print(f"perplexity {results[0]['perplexity']:.4f} · {windows} windows of {seqlen} tokens from "
                      f"{texts[0]} · sparsity of block linears {result['sparsity_linear']:.2%} · "
                      f"{result['params']:,} parameters · {result['seconds']:.1f} s", highlight=False, soft_wrap=True)
        return
    from rich.table import Table

    table = Table(title=f"{source}: perplexity, {windows} windows of {seqlen} tokens per text (seed {seed})",
                  title_justify="left")
    for name, justify in (("text", "left"), ("perplexity", "right"), ("stream tokens", "right"),
                          ("documents", "right"), ("seconds", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in results:
        table.add_row(text_name(r["text"]), f"{r['perplexity']:.4f}", f"{r['stream_tokens']:,}",
                      "—" if r["documents"] is None else f"{r['documents']:,}", f"{r['seconds']:.1f}")
    console.print(table)
    console.print(f"sparsity of block linears {result['sparsity_linear']:.2%} · {result['params']:,} parameters · "
                  f"{result['seconds']:.1f} s", highlight=False, soft_wrap=True)
