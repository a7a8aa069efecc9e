"""SmolLM2-135M shrunk to ~25 % and ~40 % fewer parameters: width, depth, width+depth.

For each budget and each kind of candidate (``prunekit.llm.shrink`` with one mode), the
perplexity right after pruning, after distillation from the dense model (``pk.distill``:
logit KL, ``--budget-tokens`` tokens) and after the same budget of plain language-model
fine-tuning (next-token cross entropy, same optimizer, learning rate and tokens): on the
King James Bible's evaluation half, Python's documentation (pydoc) and news. Calibration
and training windows come from the KJV's calibration half only (disjoint verses). Latency
on CPU: prefill of 256 tokens and 64 greedily decoded tokens, dense ÷ pruned (fastest of
``--repeats``). Tokens and CPU minutes spent are recorded.

    python benchmarks/llm_shrink.py --quick                       # tiny random Llama, seconds
    python benchmarks/llm_shrink.py --budget-tokens 16384         # SmolLM2-135M, small budget
    python benchmarks/llm_shrink.py --budget-tokens 2000000 --threads 16   # the long run

Writes ``benchmarks/results/llm_shrink.json`` (``llm_shrink_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its threads

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, write_json  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.callbacks import LRScheduler, warmup_cosine  # noqa: E402
from prunekit.llm import perplexity, shrink  # noqa: E402
from prunekit.llm.data import calibration_windows  # noqa: E402

RATIOS = (0.25, 0.40)
MODES = ("width", "depth", "mixed")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _optimizer(model: nn.Module, lr: float, schedule: str, tokens: int, tokens_per_step: int):
    """Adam at ``lr`` and, for ``schedule="cosine"``, the warm-up (5 %) + cosine callback
    sized to the steps ``tokens`` takes (the same for distillation and fine-tuning)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = max(1, math.ceil(tokens / tokens_per_step))
    return opt, ([LRScheduler(warmup_cosine(opt, steps, max(1, steps // 20)))] if schedule == "cosine" else [])


def fine_tune(model: nn.Module, ids: torch.Tensor, tokens: int, lr: float, batch_size: int, seed: int,
              schedule: str = "constant") -> int:
    """Plain next-token cross entropy with Adam for ``tokens`` tokens; returns the tokens spent."""
    torch.manual_seed(seed)
    opt, callbacks = _optimizer(model, lr, schedule, tokens, batch_size * ids.shape[1])
    model.train()
    spent = step = 0
    while spent < tokens:
        for s in range(0, ids.shape[0], batch_size):
            chunk = ids[s:s + batch_size]
            loss = model(input_ids=chunk, labels=chunk, use_cache=False).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            for cb in callbacks:
                cb.on_step_end(step, model, loss.item())
            step += 1
            spent += chunk.numel()
            if spent >= tokens:
                break
    model.eval()
    return spent


@torch.no_grad()
def latency(model: nn.Module, prompt: torch.Tensor, new: int, repeats: int) -> tuple[float, float]:
    """Fastest of ``repeats`` runs (the least disturbed on a shared machine): seconds of a
    prefill of ``prompt`` and of decoding ``new`` tokens after it."""
    pre, dec = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(input_ids=prompt, use_cache=False)
        pre.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        dec.append(time.perf_counter() - t0 - pre[-1])
    return min(pre), max(1e-9, min(dec))


def run_core(model: nn.Module, calib_stream: torch.Tensor, evals: dict[str, torch.Tensor], *, ratios=RATIOS,
             modes=MODES, budget_tokens: int, seqlen: int, windows: int, lr: float, batch_size: int,
             prefill: int, decode: int, repeats: int, seed: int = 0, temperature: float = 1.0,
             schedule: str = "cosine", train_windows: int | None = None, log=print) -> dict[str, Any]:
    """Every (ratio, mode) row; ``model`` (the dense teacher) is left unchanged. ``windows``
    windows choose the shape; ``train_windows`` (``windows`` by default) are distilled and
    fine-tuned on."""
    cut = int(calib_stream.numel() * 0.9)
    train = calibration_windows(calib_stream[:cut], windows, seqlen, seed)
    recover = train if not train_windows else calibration_windows(calib_stream[:cut], train_windows, seqlen, seed + 2)
    heldout = calibration_windows(calib_stream[cut:], max(2, windows // 8), seqlen, seed + 1)
    ppl = lambda m: {k: perplexity(m, v, seqlen=seqlen) for k, v in evals.items()}  # noqa: E731
    dense_params = _params(model)
    dense_ppl = ppl(model)
    prompt = calib_stream[cut:cut + prefill].unsqueeze(0)
    dense_lat = latency(model, prompt, decode, repeats)
    log(f"dense: {dense_params:,} params, ppl {dense_ppl}, prefill {dense_lat[0]:.3f} s, decode {dense_lat[1]:.3f} s")
    rows = []
    for ratio in ratios:
        for mode in modes:
            c0 = time.process_time()
            target = int(dense_params * (1 - ratio))
            small, rep = shrink(model, train, params=target, modes=(mode,), heldout=heldout, distill_tokens=0,
                                batch_size=batch_size, seed=seed)
            row: dict[str, Any] = {"ratio": ratio, "mode": mode, "target": target, "params": _params(small),
                                   "params_ratio": _params(small) / dense_params, "shape": rep.chosen["shape"],
                                   "kept_blocks": rep.chosen["kept_blocks"], "pruned": ppl(small)}
            tuned = copy.deepcopy(small)
            t0 = time.process_time()
            opt, callbacks = _optimizer(small, lr, schedule, budget_tokens, batch_size * seqlen)
            hist = pk.distill(small, model, recover, epochs=max(1, math.ceil(budget_tokens / recover.numel())),
                              optimizer=opt, callbacks=callbacks, temperature=temperature, batch_size=batch_size,
                              max_tokens=budget_tokens, seed=seed, progress=False)
            row["distill_cpu_min"] = (time.process_time() - t0) / 60
            row["distill_tokens"] = int(hist.get("tokens", 0))
            small.eval()
            row["distilled"] = ppl(small)
            t0 = time.process_time()
            row["finetune_tokens"] = fine_tune(tuned, recover, budget_tokens, lr, batch_size, seed, schedule)
            row["finetune_cpu_min"] = (time.process_time() - t0) / 60
            row["finetuned"] = ppl(tuned)
            lat = latency(small, prompt, decode, repeats)
            row["prefill_speedup"] = dense_lat[0] / lat[0]
            row["decode_speedup"] = dense_lat[1] / lat[1]
            row["cpu_min"] = (time.process_time() - c0) / 60
            rows.append(row)
            first = next(iter(evals))
            log(f"{ratio:.0%} {mode}: {row['params']:,} params, {first} ppl {row['pruned'][first]:.2f} "
                f"-> distilled {row['distilled'][first]:.2f} / fine-tuned {row['finetuned'][first]:.2f}, "
                f"prefill x{row['prefill_speedup']:.2f}, decode x{row['decode_speedup']:.2f}")
    return {"dense": {"params": dense_params, "ppl": dense_ppl, "prefill_s": dense_lat[0], "decode_s": dense_lat[1]},
            "rows": rows, "settings": {"budget_tokens": budget_tokens, "seqlen": seqlen, "windows": windows, "lr": lr,
                                       "batch_size": batch_size, "prefill": prefill, "decode": decode,
                                       "repeats": repeats, "seed": seed, "temperature": temperature,
                                       "schedule": schedule, "train_windows": int(recover.shape[0])}}


def table(result: dict[str, Any]) -> list[list[str]]:
    dense = result["dense"]["ppl"]
    out = []
    for r in result["rows"]:
        for text in dense:
            out.append([f"{r['ratio']:.0%}", r["mode"], f"{r['params_ratio']:.3f}", text, f"{dense[text]:.2f}",
                        f"{r['pruned'][text] / dense[text]:.2f}x", f"{r['distilled'][text] / dense[text]:.2f}x",
                        f"{r['finetuned'][text] / dense[text]:.2f}x", f"{r['prefill_speedup']:.2f}",
                        f"{r['decode_speedup']:.2f}", f"{r['distill_tokens']}", f"{r['cpu_min']:.1f}"])
    return out


def _quick_inputs():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from llm_fixtures import tiny_llama

    model = tiny_llama(num_hidden_layers=4)
    g = torch.Generator().manual_seed(1)
    return model, torch.randint(0, 96, (4000,), generator=g), {"random": torch.randint(0, 96, (1000,), generator=g)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a tiny random Llama: a smoke run in seconds")
    p.add_argument("--budget-tokens", type=int, default=None, help="distillation / fine-tuning tokens per row (16384; 1024 quick)")
    p.add_argument("--windows", type=int, default=None, help="training windows (64; 16 quick)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per window (256; 16 quick)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--temperature", type=float, default=1.0, help="distillation temperature (1)")
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="learning rate: 5 %% warm-up then cosine (default), or constant")
    p.add_argument("--train-windows", type=int, default=None,
                   help="windows distilled and fine-tuned on (default: --windows, the ones that choose the shape)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=None, help="latency repeats (3; 1 quick)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--ratios", default=",".join(str(r) for r in RATIOS), help="fractions of parameters removed")
    p.add_argument("--eval-windows", type=int, default=32, help="evaluation windows of --seqlen tokens per text")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default="", help="results go to llm_shrink_TAG.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    q = args.quick
    if q:
        model, calib, evals = _quick_inputs()
    else:
        from prunekit.llm.data import domain_stream, kjv_streams
        from prunekit.llm.models import load_causal_lm

        model, tok = load_causal_lm("smollm2", log=print)
        calib, kjv_eval, _ = kjv_streams(tok)
        n = args.eval_windows * (args.seqlen or 256)
        evals = {"kjv": kjv_eval[:n]}
        for name in ("pydoc", "news"):
            evals[name] = domain_stream(name, tok)[0][:n]
    t0 = time.process_time()
    result = run_core(model, calib, evals, modes=tuple(args.modes.split(",")),
                      ratios=tuple(float(r) for r in args.ratios.split(",")),
                      budget_tokens=args.budget_tokens or (1024 if q else 16384), seqlen=args.seqlen or (16 if q else 256),
                      windows=args.windows or (16 if q else 64), lr=args.lr if not q else 1e-3,
                      batch_size=args.batch_size, prefill=16 if q else 256, decode=8 if q else 64,
                      repeats=args.repeats or (1 if q else 3), temperature=args.temperature,
                      schedule=args.schedule, train_windows=args.train_windows)
    result["cpu_min_total"] = (time.process_time() - t0) / 60
    result["quick"] = q
    result["environment"] = environment()
    print_table("SmolLM2-135M shrunk (ppl as multiples of dense)" if not q else "tiny random Llama (quick)", ["cut", "mode", "params", "text", "dense ppl", "pruned", "distilled", "fine-tuned", "prefill x",
                 "decode x", "tokens", "cpu min"], table(result))
    write_json("llm_shrink" + ("_quick" if q else "") + (f"_{args.tag}" if args.tag else ""), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
