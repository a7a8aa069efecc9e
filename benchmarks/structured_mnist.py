"""Structured (channel) pruning of the trained MNISTNet: prunekit vs Torch-Pruning, one run.

For each channel ratio (default 50 % and 75 %) and allocation (local = the same fraction of
every layer, global = one ranking over all layers), both tools prune the same pretrained
model with the same importance (L2 magnitude of each coupled group, mean-reduced over the
group's parameters and mean-normalized, Torch-Pruning's ``MagnitudeImportance(p=2)``
defaults), physically shrink it, and fine-tune it for the same single Adam epoch on the same
batches. Then, side by side: accuracy, MACs, parameters, CPU latency at batch 1 and 256
(median of interleaved runs), and ``speedup / MAC reduction``, each in two runtimes: eager
PyTorch, and frozen TorchScript (``torch.jit.freeze`` + ``optimize_for_inference``: conv+ReLU
fusion, oneDNN blocked layout), always dense vs pruned in the same runtime, with freed memory
kept in the process as every prunekit timing does (``prunekit.metrics_timing.steady_heap``).
A profile of eager batch-256 inference says where the time that does not shrink with MACs goes.

    python benchmarks/structured_mnist.py            # full run (~5 min on 2 cores)
    python benchmarks/structured_mnist.py --quick    # smoke run on a slice

Writes ``benchmarks/results/structured_mnist.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its threads (see MACHINE.md)

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, print_table, write_json  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit import datasets, zoo  # noqa: E402
from prunekit.metrics_timing import steady_heap  # noqa: E402


def macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (FLOPs / 2)."""
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x[:1])
    return fc.get_total_flops() // 2


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int, batch_size: int = 128) -> None:
    """The same Adam epoch(s), on the same batches, for every method."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    hits = sum(int((model(x[i : i + 2000]).argmax(1) == y[i : i + 2000]).sum()) for i in range(0, len(y), 2000))
    return 100.0 * hits / len(y)


def prune_ours(model: nn.Module, ratio: float, scope: str, x: torch.Tensor) -> nn.Module:
    pk.prune(model, ratio, criterion="magnitude", granularity="channel",
             allocation="uniform" if scope == "local" else "global", example_inputs=x)
    return pk.compact(model, x)


def prune_tp(model: nn.Module, ratio: float, scope: str, x: torch.Tensor) -> nn.Module:
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
        global_pruning=scope == "global", ignored_layers=[model.classifier[2]],
    )
    pruner.step()
    return model


def widths(model: nn.Module) -> list[int]:
    return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def frozen(model: nn.Module, x: torch.Tensor) -> torch.jit.ScriptModule:
    """The same model as frozen TorchScript optimized for CPU inference."""
    with torch.no_grad():
        traced = torch.jit.trace(copy.deepcopy(model).eval(), x[:2])
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def profile_shares(model: nn.Module, x: torch.Tensor, reps: int = 5) -> dict[str, float]:
    """Share of eager CPU time per op family (conv, pool, activation, linear, other)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(reps):
                model(x)
    fam = {"conv": 0.0, "pool": 0.0, "activation": 0.0, "linear": 0.0, "other": 0.0}
    for e in prof.key_averages():
        n = e.key
        k = ("conv" if "conv" in n else "pool" if "pool" in n else "activation" if any(a in n for a in ("relu", "clamp"))
             else "linear" if any(a in n for a in ("addmm", "linear", "mm")) else "other")
        fam[k] += e.self_cpu_time_total
    total = sum(fam.values()) or 1.0
    return {k: v / total for k, v in fam.items()}


def latency(models: dict[str, nn.Module], x: torch.Tensor, runs: int, warmup: int = 5) -> dict[str, float]:
    """Median seconds per forward; models take turns within each run (shared-machine noise
    hits them alike)."""
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            for _ in range(warmup):
                m(x)
        for _ in range(runs):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(x)
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    train = datasets.load_mnist("train_full")
    test = datasets.load_mnist("test")
    xtr, ytr = train.tensors
    xte, yte = test.tensors
    if args.limit:
        xtr, ytr, xte, yte = xtr[: args.limit], ytr[: args.limit], xte[: args.limit], yte[: args.limit]
    dense = zoo.create("mnistnet", pretrained=True).eval()
    example = xtr[:8]
    rows: list[dict[str, Any]] = []
    models: dict[str, nn.Module] = {"dense": dense}
    base_macs = macs(dense, example)
    rows.append({"method": "dense", "ratio": 0.0, "scope": "-", "accuracy": accuracy(dense, xte, yte),
                 "macs": base_macs, "params": sum(p.numel() for p in dense.parameters()), "widths": widths(dense)})
    tools = {"prunekit": prune_ours}
    try:
        import torch_pruning  # noqa: F401

        tools["torch-pruning"] = prune_tp
    except ImportError:
        print("torch-pruning is not installed (pip install torch-pruning); showing prunekit only")
    for ratio in args.ratios:
        for scope in args.scopes:
            for tool, fn in tools.items():
                key = f"{tool} {scope} {ratio:.0%}"
                t0 = time.perf_counter()
                m = fn(copy.deepcopy(dense), ratio, scope, example)
                prune_s = time.perf_counter() - t0
                acc0 = accuracy(m, xte, yte)
                finetune(m, xtr, ytr, epochs=args.epochs, seed=args.seed)
                models[key] = m
                rows.append({
                    "method": tool, "ratio": ratio, "scope": scope, "accuracy_before_finetune": acc0,
                    "accuracy": accuracy(m, xte, yte), "macs": macs(m, example),
                    "params": sum(p.numel() for p in m.parameters()), "widths": widths(m), "prune_seconds": prune_s,
                })
                print(f"{key}: {rows[-1]['accuracy']:.2f} % widths {rows[-1]['widths']}", flush=True)
    runtimes = {"eager": models, "frozen": {k: frozen(m, example) for k, m in models.items()}}
    for b in args.batches:
        xb = xte[:b] if len(xte) >= b else xte.repeat(math.ceil(b / len(xte)), 1, 1, 1)[:b]
        for rt, ms in runtimes.items():
            lat = latency(ms, xb, args.runs)
            for key, row in zip(models, rows):
                row[f"{rt}_latency_b{b}_ms"] = 1000 * lat[key]
                row[f"{rt}_speedup_b{b}"] = lat["dense"] / lat[key]
    for key, row in zip(models, rows):
        row["key"] = key
        row["mac_reduction"] = base_macs / row["macs"]
        for b in args.batches:
            for rt in runtimes:
                row[f"{rt}_speedup_over_mac_b{b}"] = row[f"{rt}_speedup_b{b}"] / row["mac_reduction"]
    big = max(args.batches)
    xb = xte[:big] if len(xte) >= big else xte.repeat(math.ceil(big / len(xte)), 1, 1, 1)[:big]
    for key, row in zip(models, rows):
        if row["method"] in ("dense", "prunekit"):
            row[f"eager_profile_b{big}"] = profile_shares(models[key], xb)
    return {"benchmark": "structured_mnist", "environment": environment(), "args": vars(args), "rows": rows}


def table(result: dict[str, Any]) -> None:
    batches = result["args"]["batches"]
    cols = ["method", "ratio", "scope", "acc %", "widths", "MMACs", "MAC ÷"]
    for b in batches:
        cols += [f"eager b{b} ×", "÷MAC", f"frozen b{b} ×", "÷MAC"]
    out = []
    for r in result["rows"]:
        line = [r["method"], f"{r['ratio']:.0%}", r["scope"], f"{r['accuracy']:.2f}", ",".join(map(str, r["widths"])),
                f"{r['macs'] / 1e6:.2f}", f"{r['mac_reduction']:.1f}"]
        for b in batches:
            for rt in ("eager", "frozen"):
                line += [f"{r[f'{rt}_speedup_b{b}']:.2f}", f"{r[f'{rt}_speedup_over_mac_b{b}']:.2f}"]
        out.append(line)
    print_table("Channel pruning of the trained MNISTNet, 1 fine-tune epoch (speedup × and speedup ÷ MAC reduction)",
                cols, out)
    big = max(batches)
    prof = [[r["key"]] + [f"{v:.0%}" for v in r[f"eager_profile_b{big}"].values()] for r in result["rows"]
            if f"eager_profile_b{big}" in r]
    if prof:
        fams = list(result["rows"][0][f"eager_profile_b{big}"])
        print_table(f"Where eager time goes at batch {big} (share of CPU time)", ["model"] + fams, prof)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.75])
    p.add_argument("--scopes", nargs="+", default=["local", "global"], choices=["local", "global"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--runs", type=int, default=40, help="timed runs per model and batch size (median)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="use only this many train/test images")
    p.add_argument("--quick", action="store_true", help="smoke run: 2,000 images, 5 timed runs")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.quick:
        a.limit, a.runs, a.batches = a.limit or 2000, 5, [1, 64]
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kept = steady_heap()  # the same timing regime for every model (docs/latency.md)
    result = run(args)
    result["keep_freed_memory"] = kept
    table(result)
    args_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result["args"] = args_json
    path = write_json("structured_mnist" + ("_quick" if args.quick else ""), result, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
