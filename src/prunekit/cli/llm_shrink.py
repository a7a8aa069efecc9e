"""``prunekit llm shrink``: prune a causal LM to a budget, then distil it.

Width (hidden size, MLP) and depth (whole blocks) candidates that meet the budget
(parameters, MACs or a measured latency) are each distilled briefly from the dense model; the one with the lowest loss on held-out
calibration text (the last tenth of the calibration stream, never trained on) is distilled
for the rest of ``--distill-tokens`` and written with ``save_pretrained`` (a stock
``transformers`` model) plus its tokenizer and ``prunekit-llm.json``, atomically.

This module imports neither torch nor transformers at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from prunekit.cli import checks, output
from prunekit.cli.common import console, expected_errors, fail, handles_errors, threads_option


def _count(flag: str, value: Optional[str]) -> Optional[int]:
    from prunekit import PruneError
    from prunekit.llm.budget import parse_count

    if value is None:
        return None
    try:
        return parse_count(flag, value)
    except PruneError as e:
        fail(str(e))


@handles_errors(outputs=("out",))
def llm_shrink(
    source: str = typer.Argument(..., help="'smollm2' (the installed SmolLM2-135M package), a save_pretrained folder, or a .gguf file."),
    out: Path = typer.Option(..., help="Folder to write: the shrunk model (save_pretrained), its tokenizer and prunekit-llm.json."),
    params: Optional[str] = typer.Option(None, help="Parameter budget, e.g. 100M or 2.5e7."),
    macs: Optional[str] = typer.Option(None, help="Budget in multiply-accumulates of one forward pass over --seqlen tokens, e.g. 20G."),
    latency: Optional[float] = typer.Option(None, help="Budget in seconds of one forward pass over --seqlen tokens, measured on this machine."),
    distill_tokens: str = typer.Option("0", help="Tokens of distillation from the dense model, e.g. 2M (0: none)."),
    search_tokens: Optional[str] = typer.Option(None, help="Of them, tokens spent on each candidate before the choice (default: a tenth of --distill-tokens, shared)."),
    modes: str = typer.Option("width,depth,mixed", help="Candidates to try, comma-separated: width, depth, mixed."),
    importance: str = typer.Option("activation", help="Width importance: activation (Minitron) or taylor."),
    depth_criterion: str = typer.Option("influence", help="Block importance: influence (1 - cos of a block's input and output) or perplexity."),
    calib: str = typer.Option("kjv", help="Calibration and distillation text: kjv (the King James Bible's calibration half) or a UTF-8 text file."),
    calib_windows: int = typer.Option(64, help="Calibration windows, drawn at random offsets of the text's first nine tenths."),
    heldout_windows: int = typer.Option(8, help="Held-out windows (from the text's last tenth) that pick the candidate."),
    seqlen: int = typer.Option(256, help="Tokens per window."),
    lr: float = typer.Option(3e-4, help="Distillation learning rate (Adam)."),
    temperature: float = typer.Option(1.0, help="Distillation temperature of the logit KL, > 0."),
    schedule: str = typer.Option("cosine", help="Learning rate: cosine (5 % warm-up, then a cosine to 0) or constant."),
    batch_size: int = typer.Option(8, help="Windows per step."),
    seed: int = typer.Option(0, help="Seed of the windows and of the distillation."),
    overwrite: bool = typer.Option(False, "--overwrite", "--force", help="Replace an earlier prunekit output at --out."),
    threads: int | None = threads_option(),
) -> None:
    """Shrink a causal language model to a budget (width and depth pruning + distillation)."""
    from prunekit.llm.budget import MODES
    from prunekit.llm.output import output_problem
    from prunekit.llm.shrink import DEPTH_CRITERIA, IMPORTANCE

    if sum(x is not None for x in (params, macs, latency)) != 1:
        fail("give exactly one budget: --params (e.g. 100M), --macs (e.g. 20G) or --latency (seconds)")
    if latency is not None and not latency > 0:
        fail(f"--latency: {latency!r} is not allowed (expected seconds > 0, e.g. 0.5)")
    budget = (_count("--params", params) if params is not None else _count("--macs", macs) if macs is not None
              else latency)
    tokens = 0 if distill_tokens.strip() == "0" else _count("--distill-tokens", distill_tokens)
    search = None if search_tokens is None else (0 if search_tokens.strip() == "0" else _count("--search-tokens", search_tokens))
    mode_list = tuple(m.strip() for m in modes.split(",") if m.strip())
    if not mode_list:
        fail(f"--modes is empty; give one or more of {', '.join(MODES)}")
    for m in mode_list:
        checks.check_name("--modes", m, MODES)
    checks.check_name("--importance", importance, IMPORTANCE)
    checks.check_name("--depth-criterion", depth_criterion, DEPTH_CRITERIA)
    checks.check_llm_run(calib_windows, seqlen, batch_size, seed, threads, seqlen_example="256")
    checks.check_min("--heldout-windows", heldout_windows, 1, "8")
    if not 0 < lr < 1:
        fail(f"--lr: {lr!r} is outside (0, 1) (Adam's learning rate, e.g. 3e-4)")
    if not temperature > 0:
        fail(f"--temperature: {temperature!r} is not allowed (expected a number > 0, e.g. 1)")
    from prunekit.llm.embedder import SCHEDULES

    checks.check_name("--schedule", schedule, SCHEDULES)
    from prunekit import PruneError
    from prunekit.llm.recipe import check_model, check_text

    try:
        calib_path = check_text(calib)
    except PruneError:
        fail(f"--calib {calib!r} is neither 'kjv' (the King James Bible) nor an existing text file")
    try:
        model_source = check_model(source)
    except PruneError as e:
        fail(f"SOURCE: {e}")
    problem = output_problem(out, overwrite, flag="--overwrite")
    if problem:
        fail(f"--out {str(out)!r} {problem}")
    output.check_writable("--out", out)
    from prunekit.cli.llm import llm_setup

    llm_setup()
    threads = checks.set_threads(threads)
    log = lambda line: console.print(line, highlight=False, soft_wrap=True)  # noqa: E731
    with expected_errors(ValueError, OSError):
        from prunekit.llm.models import load_causal_lm
        from prunekit.llm.output import save_model
        from prunekit.llm.shrink import shrink
        from prunekit.llm.texts import load_texts
        from prunekit.llm.windows import calibration_windows

        model, tok = load_causal_lm(model_source, log=log)
        stream, _, _, _ = load_texts(tok, calib_path, [])
        cut = int(stream.numel() * 0.9)
        train = calibration_windows(stream[:cut], calib_windows, seqlen, seed)
        heldout = calibration_windows(stream[cut:], heldout_windows, seqlen, seed + 1)
        kwargs: dict[str, Any] = ({"params": budget} if params is not None else {"macs_budget": budget}
                                  if macs is not None else {"latency": budget})
        small, report = shrink(model, train, modes=mode_list, importance=importance, depth_criterion=depth_criterion,
                               train=train, heldout=heldout, distill_tokens=tokens, search_tokens=search, seqlen=seqlen,
                               lr=lr, temperature=temperature, schedule=schedule, batch_size=batch_size, seed=seed,
                               progress=True, **kwargs)
        chosen = report.chosen
        log(f"dense: {report.dense['params']:,} parameters; chosen: {chosen['shape']['mode']} "
            f"{chosen['shape']} with {chosen['params']:,} parameters")
        for row in report.candidates:
            log(f"  candidate {row['shape']['mode']}: {row['params']:,} params, held-out loss "
                f"{row.get('heldout_loss_pruned', float('nan')):.3f} pruned -> {row.get('heldout_loss', float('nan')):.3f}")
        payload = {"command": "prunekit llm shrink",
                   "settings": {"source": source, "out": str(out), "params": params, "macs": macs, "latency": latency,
                                "distill_tokens": tokens, "search_tokens": search, "modes": list(mode_list),
                                "importance": importance, "depth_criterion": depth_criterion, "calib": calib,
                                "calib_windows": calib_windows, "heldout_windows": heldout_windows,
                                "seqlen": seqlen, "lr": lr, "temperature": temperature, "schedule": schedule,
                                "batch_size": batch_size, "seed": seed},
                   "shrink": report.as_dict()}
        problem = output_problem(out, overwrite, flag="--overwrite")
        if problem:
            fail(f"--out {str(out)!r} {problem}")
        save_model(small, tok, out, files={"prunekit-llm.json": payload}, force=overwrite)
    console.print(f"Saved to {out} (save_pretrained + tokenizer + prunekit-llm.json)", highlight=False, soft_wrap=True)
