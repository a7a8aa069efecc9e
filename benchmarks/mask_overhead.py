"""Training-step cost of masks: dense vs prunekit masks vs ``torch.nn.utils.prune`` hooks.

One step = forward + cross-entropy + backward + Adam step on a batch of 128 real MNIST
images. The three variants of each model start from the same weights; the masked ones are
pruned to 90 % (global magnitude). Variants run interleaved in round-robin blocks (the
order rotates every round) so that load from other processes hits all of them alike.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/mask_overhead.py [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import _common
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as tprune

import prunekit as pk
from prunekit import zoo
from prunekit.datasets import load_mnist

SPARSITY = 0.9
BATCH = 128
VARIANTS = ("dense", "ours", "torch")
MODELS = ("lenet300100", "mnistnet")
# Timed steps per variant and steps per block: ~60 rounds each; LeNet steps are ~30× cheaper.
DEFAULT_STEPS = {"lenet300100": 3000, "mnistnet": 600}
DEFAULT_BLOCK = {"lenet300100": 50, "mnistnet": 10}
QUICK_STEPS, QUICK_BLOCK = 20, 10


def _targets(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The weights prunekit prunes by default: those of Linear and Conv layers."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [(m, "weight") for m in model.modules() if isinstance(m, kinds)]


def _sparsity(model: nn.Module) -> float:
    """Zero fraction of the effective (masked) target weights."""
    with torch.no_grad():
        ws = [getattr(m, p) for m, p in _targets(model)]
        return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def build(name: str) -> dict[str, nn.Module]:
    """Three copies of one model with identical starting weights: dense, ours, torch."""
    torch.manual_seed(0)
    base = zoo.create(name, pretrained=(name == "mnistnet"))
    models = {v: copy.deepcopy(base).train() for v in VARIANTS}
    pk.prune(models["ours"], SPARSITY)
    tprune.global_unstructured(
        _targets(models["torch"]), pruning_method=tprune.L1Unstructured, amount=SPARSITY
    )
    return models


def make_step(model: nn.Module, fused: bool = False) -> Callable[[torch.Tensor, torch.Tensor], tuple[float, float]]:
    """A closure doing one full training step and returning (forward+backward, optimizer)
    seconds; the optimizer sees the trainable tensors (``original`` for ours,
    ``weight_orig`` for torch), as a user's would."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        return t1 - t0, time.perf_counter() - t1

    return step


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` fixed batches of real MNIST training images (contiguous copies)."""
    ds = load_mnist("train", flatten=False)
    x, y = ds.tensors
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(x.shape[0], generator=g)[: n * BATCH]
    return [(x[i].contiguous(), y[i].contiguous()) for i in idx.split(BATCH)]


def bench_model(
    name: str,
    data: list[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    block: int,
    warmup: int,
    fused: bool = False,
) -> dict:
    """Median step time per variant, from ``steps`` timed steps each in interleaved blocks."""
    models = build(name)
    fns = {v: make_step(m, fused) for v, m in models.items()}
    k = 0
    for v in VARIANTS:  # warm-up: allocator, oneDNN primitives, Adam state
        for _ in range(warmup):
            fns[v](*data[k % len(data)])
            k += 1
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    phases: dict[str, dict[str, list[float]]] = {v: {"fwd_bwd": [], "optim": []} for v in VARIANTS}
    block_medians: dict[str, list[float]] = {v: [] for v in VARIANTS}
    rounds = max(1, -(-steps // block))
    for r in range(rounds):
        order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]  # rotate so no variant always goes first
        for v in order:
            fn, ts = fns[v], []
            for i in range(block):
                x, y = data[(r * block + i) % len(data)]
                t_fb, t_opt = fn(x, y)
                ts.append(t_fb + t_opt)
                phases[v]["fwd_bwd"].append(t_fb)
                phases[v]["optim"].append(t_opt)
            times[v] += ts
            block_medians[v].append(statistics.median(ts))
    stats = {v: _common.summarize(times[v]) for v in VARIANTS}
    dense = stats["dense"]["median"]
    out: dict = {
        "params": sum(p.numel() for p in models["dense"].parameters()),
        "steps_per_variant": len(times["dense"]),
        "rounds": rounds,
        "block": block,
        "step_s": stats,
        # Where the time goes: forward+backward vs the Adam step, median seconds.
        "phase_median_s": {v: {k: statistics.median(t) for k, t in phases[v].items()} for v in VARIANTS},
    }
    for v in ("ours", "torch"):
        out[f"ratio_{v}"] = stats[v]["median"] / dense
        # Paired estimate: ratio within each round, where both saw the same background load.
        out[f"paired_ratio_{v}"] = statistics.median(
            m / d for m, d in zip(block_medians[v], block_medians["dense"])
        )
        out[f"sparsity_{v}"] = _sparsity(models[v])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few steps (smoke test)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per variant and model (default 3000 LeNet, 600 MNISTNet)")
    ap.add_argument("--block", type=int, default=None,
                    help="consecutive steps per variant in a round (default 50 LeNet, 10 MNISTNet)")
    ap.add_argument("--fused", action="store_true", help="Adam(fused=True) instead of the default Adam")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    warmup = 3 if args.quick else 30
    env_before = _common.environment()
    data = batches(8 if args.quick else 64)
    results = {}
    for name in args.models:
        steps = args.steps or (QUICK_STEPS if args.quick else DEFAULT_STEPS[name])
        block = args.block or (QUICK_BLOCK if args.quick else DEFAULT_BLOCK[name])
        results[name] = bench_model(name, data, steps, block, warmup, args.fused)
    env_after = _common.environment()

    rows = []
    for name, r in results.items():
        s = r["step_s"]
        rows.append([
            name,
            f"{s['dense']['median'] * 1e3:.3f}",
            f"{s['ours']['median'] * 1e3:.3f}",
            f"{s['torch']['median'] * 1e3:.3f}",
            f"{r['ratio_ours']:.3f}× ({r['paired_ratio_ours']:.3f}×)",
            f"{r['ratio_torch']:.3f}× ({r['paired_ratio_torch']:.3f}×)",
            f"{r['steps_per_variant']}",
        ])
    load = env_after["loadavg"]
    _common.print_table(
        f"Training step, batch {BATCH}, {'fused ' if args.fused else ''}Adam, {args.threads} thread(s), 90 % masked "
        f"(median ms; ratio to dense, paired per-round ratio in brackets; load {load[0]:.2f})",
        ["model", "dense ms", "ours ms", "torch ms", "ours/dense", "torch/dense", "steps"],
        rows,
    )
    payload = {
        "benchmark": "mask_overhead",
        "quick": args.quick,
        "batch": BATCH,
        "sparsity": SPARSITY,
        "threads": args.threads,
        "optimizer": "Adam(fused=True)" if args.fused else "Adam",
        "env_before": env_before,
        "env": env_after,
        "models": results,
    }
    name = "mask_overhead" + ("_fused" if args.fused else "") + ("_quick" if args.quick else "")
    path = _common.write_json(name, payload, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
