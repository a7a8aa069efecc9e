"""One-shot LLM pruning on the CPU, ours next to the reference algorithms, on a real model.

    python benchmarks/llm_cpu_speed.py            # SmolLM2-135M, 32 x 512 KJV calibration tokens
    python benchmarks/llm_cpu_speed.py --quick    # 8 x 128 tokens
    python benchmarks/llm_cpu_speed.py --tiny     # a random 2-block Llama (a smoke test)

``ours`` is :func:`prunekit.llm.prune_llm` with the published methods as published
(``reconstruct=0``, ``self_calibration=0``); ``reference`` is ``benchmarks/gpu_check.py``'s
copy of the published algorithms (SparseGPT: IST-DASLab/sparsegpt's running-average Hessian
and column sweep; Wanda: locuslab/wanda's input norms and per-row sort), driven block by
block the same way, on copies of the same model and calibration tokens, in one process,
each method timed ours-then-reference. Reports the seconds, their ratio, the fraction of
equal mask entries and, on the real model, the perplexity of both pruned models on the
KJV's held-out half (the same weights should give the same quality).

Writes ``benchmarks/results/llm_cpu_speed.json`` (``..._quick``/``..._tiny`` with the flags).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, write_json  # noqa: E402
from gpu_check import reference_prune  # noqa: E402

from prunekit.llm.oneshot import prune_llm  # noqa: E402
from prunekit.masking import get_masks  # noqa: E402

CASES = (("wanda", None), ("sparsegpt", None), ("sparsegpt", (2, 4)))


def load(tiny: bool, n: int, seqlen: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None, str]:
    """The model, calibration tokens, evaluation tokens (None for the tiny model) and its name."""
    if tiny:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=512, hidden_size=96, intermediate_size=256, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=seqlen)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
        calib = torch.randint(0, 512, (n, seqlen), generator=torch.Generator().manual_seed(0))
        return model, calib, None, "random 2-block Llama (hidden 96)"
    from prunekit.llm import calibration_windows, eval_windows, kjv_streams, load_causal_lm

    model, tok = load_causal_lm("smollm2")
    calib_stream, eval_stream, _ = kjv_streams(tok)
    return (model, calibration_windows(calib_stream, n, seqlen, seed=0), eval_windows(eval_stream, 16, 512, seed=0),
            "SmolLM2-135M, float32")


def run(tiny: bool, n: int, seqlen: int) -> tuple[list[dict[str, Any]], str]:
    from prunekit.llm import perplexity

    base, calib, evals, name = load(tiny, n, seqlen)
    rows = []
    for method, pattern in CASES:
        ours = copy.deepcopy(base)
        t0 = time.perf_counter()
        prune_llm(ours, calib, method=method, sparsity=0.5, pattern="2:4" if pattern else None, reconstruct=0,
                  self_calibration=0.0, keep_masks=True, batch_size=8)
        t_ours = time.perf_counter() - t0
        mine = {k: v.bool() for k, v in get_masks(ours).items()}
        ref = copy.deepcopy(base)
        t0 = time.perf_counter()
        theirs = reference_prune(ref, calib, method, 8, pattern)
        t_ref = time.perf_counter() - t0
        same = sum(int((mine[k] == theirs[k]).sum()) for k in mine)
        total = sum(v.numel() for v in mine.values())
        row = {"method": method + (" 2:4" if pattern else " 50%"), "ours_s": t_ours, "reference_s": t_ref,
               "speedup": t_ref / t_ours, "mask_agreement": same / total}
        if evals is not None:
            row["ours_ppl"] = perplexity(ours, evals, seqlen=512)
            row["reference_ppl"] = perplexity(ref, evals, seqlen=512)
        rows.append(row)
        del ours, ref
    return rows, name


def _ppl(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="8 x 128 calibration tokens")
    size.add_argument("--tiny", action="store_true", help="a random 2-block Llama: a smoke test of the script")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", type=Path, default=None, help="results folder (benchmarks/results)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, seqlen = (4, 64) if args.tiny else (8, 128) if args.quick else (32, 512)
    rows, name = run(args.tiny, n, seqlen)
    print_table(f"One-shot pruning on the CPU ({name}, {n} x {seqlen} calibration tokens, {args.threads} threads)",
                ["method", "ours s", "reference s", "reference / ours", "equal mask entries", "ppl ours", "ppl reference"],
                [[r["method"], f"{r['ours_s']:.1f}", f"{r['reference_s']:.1f}", f"{r['speedup']:.2f}x",
                  f"{r['mask_agreement']:.4%}", _ppl(r.get("ours_ppl")), _ppl(r.get("reference_ppl"))] for r in rows])
    tag = "_tiny" if args.tiny else "_quick" if args.quick else ""
    path = write_json(f"llm_cpu_speed{tag}", {"benchmark": "llm_cpu_speed", "model": name, "calibration": [n, seqlen],
                                             "threads": args.threads, "rows": rows, "environment": environment()},
                      args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
