"""Latency as the objective: prune to 1/2, 1/4, 1/8 of the dense latency, measured, in two runtimes.

For MNISTNet (trained, from the zoo), a small ResNet-style CNN and a MobileNetV2-style CNN
(both defined below and trained here for three epochs on an MNIST slice; the zoo holds
neither), in eager PyTorch and ONNX Runtime at batch 64:

* ours: ``allocation=LatencyAllocation(budget, runtime=...)``: latency tables, greedy
  score-per-millisecond allocation, then measured and corrected;
* flops: the same importance spent against MACs (``objective="flops"``), its MAC fraction
  bisected until its *measured* latency equals ours (the FLOP-budgeted model at the same
  measured latency);
* torch-pruning: ``MetaPruner`` with L2 magnitude, one ratio for every layer, bisected the
  same way.

Each pruned model is compacted and fine-tuned for one Adam epoch on the same batches (the
first 20,000 training images; the dense ResNet- and MobileNetV2-style models train on 8,000;
``--seeds N``: N fine-tunes from the same pruned model, each with its own batch order, the
same orders for every method, and the mean accuracy compared);
after every training, BatchNorm statistics are re-estimated on the first 2,048 training
images (:func:`prunekit.distillation.recalibrate_bn`): one short epoch moves the weights
faster than the running averages follow (the dense ResNet-style model: 91.7 % with the
averages training left, 95.7 % re-estimated), and that lag, not the pruning, would decide
the comparison; ``--distortion`` gives ours ``distortion=True``;
latencies are medians of interleaved runs (pruned, dense) in the runtime. Then MNISTNet at
50 % and 75 % of its channels (uniform), without ``round_to`` and with 8 and 16, gives
measured speedup ÷ MAC reduction in each runtime (with the share of channels rounding
actually removed).

    python benchmarks/latency_budget.py            # full run (~17 min on 2 idle cores)
    python benchmarks/latency_budget.py --quick    # smoke run on a slice
    python benchmarks/latency_budget.py --speedup-only --speed-threads 1,2   # the speedup rows, per thread count

Writes ``benchmarks/results/latency_budget.json`` (``latency_budget_quick.json``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its threads

import argparse
import copy
import math
import sys
import time
import warnings
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
from prunekit.allocation.latency import LatencyAllocation  # noqa: E402
from prunekit.distillation import BATCH_NORMS, recalibrate_bn  # noqa: E402
from prunekit.metrics_timing import prepare, steady_heap, time_interleaved, time_ratio  # noqa: E402


class ResNetS(nn.Module):
    """ResNet-style: stem, two residual stages (16 → 32 channels, stride 2), pooled head."""

    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.b1 = self._block(w, w, 1)
        self.b2 = self._block(w, 2 * w, 2)
        self.down = nn.Sequential(nn.Conv2d(w, 2 * w, 1, stride=2, bias=False), nn.BatchNorm2d(2 * w))
        self.b3 = self._block(2 * w, 2 * w, 1)
        self.head = nn.Linear(2 * w, 10)

    @staticmethod
    def _block(i: int, o: int, s: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.b1(x))
        x = F.relu(self.down(x) + self.b2(x))
        x = F.relu(x + self.b3(x))
        return self.head(x.mean((2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, i: int, o: int, s: int, t: int) -> None:
        super().__init__()
        h = i * t
        self.use_res = s == 1 and i == o
        self.conv = nn.Sequential(
            nn.Conv2d(i, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, h, 3, s, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, o, 1, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2S(nn.Module):
    """MobileNetV2-style: inverted residuals (expansion 4, depthwise 3×3) for 28×28 input."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(16, 16, 1, 4), InvertedResidual(16, 24, 2, 4),
                                    InvertedResidual(24, 24, 1, 4), InvertedResidual(24, 32, 2, 4))
        self.last = nn.Sequential(nn.Conv2d(32, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6())
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.last(self.blocks(self.stem(x))).mean((2, 3)))


def macs(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(x[:1])
    return fc.get_total_flops() // 2


RECAL = 2048  # training images the BatchNorm statistics are re-estimated on after each training


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0, batch_size: int = 128,
             epochs: int = 1, lr: float = 1e-3) -> None:
    """The same Adam epoch(s), on the same batches, for every method."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


def settle(model: nn.Module, x: torch.Tensor) -> None:
    """Re-estimate the BatchNorm statistics on ``x`` (nothing for a model without BatchNorm)."""
    if any(isinstance(m, BATCH_NORMS) for m in model.modules()):
        recalibrate_bn(model, x, batch_size=256)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float(sum((model(a).argmax(1) == b).sum() for a, b in zip(x.split(1000), y.split(1000))) / len(y))


def timed(models: list[nn.Module], x: torch.Tensor, runtime: str, repeats: int, warmup: int = 3) -> list[float]:
    """(pruned ms, dense ms): interleaved; pruned = median per-round ratio × dense median."""
    runs = [prepare(m.eval(), (x,), runtime, torch.get_num_threads()) for m in models]
    if len(runs) == 2:
        return list(time_ratio(runs[0], runs[1], (x,), warmup, repeats))
    return time_interleaved(runs, [(x,)] * len(runs), warmup, repeats)


def ours(model, budget, runtime, probe, args) -> tuple[nn.Module, dict[str, Any]]:
    m = copy.deepcopy(model)
    alloc = LatencyAllocation(budget, runtime=runtime, batch_size=args.batch, threads=args.threads,
                              repeats=args.repeats, distortion=args.distortion, tolerance=args.tolerance)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pk.prune(m, allocation=alloc, granularity="channel", example_inputs=probe)
    small = pk.compact(m, probe)
    history = [{"kept": r["kept"], "predicted_ms": r["predicted"], "dense_ms": r.get("dense_ms"),
                "measured_ratio": r["measured_ms"] / r["dense_ms"] if "measured_ms" in r else None, "ok": r.get("ok"),
                **({"retimed_ratio": r["retimed_ratio"] * r["target_ms"] / r["dense_ms"]} if "retimed_ratio" in r else {}),
                **{k: True for k in ("floor", "widened", "unremoved") if r.get(k)}} for r in alloc.history_]
    return small, {"iterations": len(alloc.history_), "round_to": alloc.round_to_, "history": history,
                   "warnings": [str(w.message)[:200] for w in caught if "latency" in str(w.message)]}


def prune_flops(model, frac, probe, head_rank=True):
    m = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "below the per-group cap": expected at the smallest fractions
        pk.prune(m, allocation=LatencyAllocation(frac, objective="flops", round_to=1, head_rank=head_rank),
                 granularity="channel",
                 example_inputs=probe)
    return pk.compact(m, probe)


def prune_tp(model, ratio, probe):
    import torch_pruning as tp

    m = copy.deepcopy(model)
    last = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1]
    tp.pruner.MetaPruner(m, probe, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                         ignored_layers=[last]).step()
    return m


def matched(make, lo, hi, goal, x, runtime, args):
    """Bisect the knob of ``make`` (larger = bigger model; geometric midpoints, so that
    small fractions are reached in a few steps) until its measured latency (interleaved with
    the dense model, as a ratio) is within 5 % of ``goal``."""
    dense = args.dense
    best = None
    for _ in range(args.bisect):
        mid = math.sqrt(lo * hi)
        m = make(mid)
        ms, dms = timed([m, dense], x, runtime, args.repeats)
        ratio = ms / dms
        if best is None or abs(ratio - goal) < abs(best[2] - goal):
            best = (m, mid, ratio)
        if abs(ratio / goal - 1) < 0.05:
            break
        lo, hi = (mid, hi) if ratio < goal else (lo, mid)
    return best


def widths_of(model: nn.Module) -> list[int]:
    """Output widths of the model's Linear/Conv layers, the classifier's aside."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in layers[:-1]]


def run_model(name, model, runtimes, budgets, data, probe, args, rows):
    xtr, ytr, xte, yte = data
    x = probe.repeat(args.batch // probe.shape[0] + 1, 1, 1, 1)[: args.batch]
    args.dense = model
    dense_macs = macs(model, x)
    acc_dense = accuracy(model, xte, yte)
    for runtime in runtimes:
        for b in budgets:
            t0 = time.time()
            small, info = ours(model, b, runtime, probe, args)
            ms, dms = timed([small, model], x, runtime, args.repeats)
            goal = ms / dms
            flops = matched(lambda f: prune_flops(model, f, probe, not args.flops_no_head_rank), 0.001, 1.0, goal, x,
                            runtime, args)
            tpm = matched(lambda r: prune_tp(model, 1 - r, probe), 0.02, 1.0, goal, x, runtime, args)
            row = {"model": name, "runtime": runtime, "budget": b, "dense_ms": dms, "target_ms": b * dms,
                   "measured_ms": ms, "measured_ratio": goal, "met": goal <= b * 1.10, **info,
                   "dense_accuracy": acc_dense}
            for label, m, extra in (("ours", small, {}), ("flops", flops[0], {"flops_fraction": flops[1]}),
                                    ("torch_pruning", tpm[0], {"tp_keep": tpm[1]})):
                if label != "ours":
                    row[f"{label}_measured_ratio"] = flops[2] if label == "flops" else tpm[2]
                row[f"{label}_mac_reduction"] = dense_macs / max(1, macs(m, x))
                row[f"{label}_widths"] = widths_of(m)
                row[f"{label}_acc_before_ft"] = accuracy(m, xte, yte)
                accs = []
                for seed in range(args.seeds):  # the same batch orders for every method
                    tuned = copy.deepcopy(m)
                    finetune(tuned, args.xft, args.yft, seed=seed)
                    settle(tuned, args.xft[:RECAL])
                    accs.append(accuracy(tuned, xte, yte))
                row[f"{label}_accuracy"] = sum(accs) / len(accs)
                row[f"{label}_accuracy_seeds"] = accs
                row.update(extra)
            row["seconds"] = time.time() - t0
            rows.append(row)
            # the rows so far, rewritten after each (a long run stopped early keeps them)
            write_json("latency_budget_partial", {"rows": rows, "threads": args.threads, "seeds": args.seeds},
                       args.out)
            print(f"{name} {runtime} 1/{round(1 / b)}: {ms:.2f}/{dms:.2f} ms ({goal:.2f}, met={row['met']}) acc "
                  f"ours {row['ours_accuracy']:.4f} flops {row['flops_accuracy']:.4f} "
                  f"({row['flops_measured_ratio']:.2f}) tp {row['torch_pruning_accuracy']:.4f} "
                  f"({row['torch_pruning_measured_ratio']:.2f})", flush=True)


def speedup_rows(x_probe, runtimes, args) -> list[dict[str, Any]]:
    """MNISTNet at 50 % / 75 % of channels (uniform), plain and with ``round_to`` 8 and 16:
    speedup ÷ MAC reduction at batch ``args.speed_batch``. Rounding moves the share of
    channels actually removed off the requested one; each row records both and the widths."""
    model = zoo.create("mnistnet", pretrained=True).eval()
    b = args.speed_batch
    x = x_probe.repeat(b // x_probe.shape[0] + 1, 1, 1, 1)[:b]
    out = []
    for ratio in (0.5, 0.75):
        for rnd in (None, 8, 16):
            m = copy.deepcopy(model)
            pk.prune(m, ratio, granularity="channel", allocation="uniform", example_inputs=x_probe, round_to=rnd)
            small = pk.compact(m, x_probe)
            red = macs(model, x) / macs(small, x)
            widths, full = widths_of(small), widths_of(model)
            removed = 1 - sum(widths) / sum(full)
            for runtime in runtimes:
                for threads in args.speed_threads:
                    torch.set_num_threads(threads)
                    # warm-up long enough for TorchScript's profiling executor and compile's first calls
                    ms, dms = timed([small, model], x, runtime, max(args.repeats, 40), warmup=10)
                    out.append({"channels_removed": ratio, "channels_removed_actual": removed, "widths": widths,
                                "round_to": rnd, "runtime": runtime, "threads": threads, "batch": b,
                                "mac_reduction": red, "speedup": dms / ms, "ratio": dms / ms / red, "dense_ms": dms,
                                "pruned_ms": ms})
                    print(f"mnistnet {ratio:.0%} round_to={rnd} (widths {widths}, {removed:.1%} removed) {runtime}, "
                          f"{threads} thread(s): speedup {dms / ms:.2f} for {red:.2f}x fewer MACs: ratio "
                          f"{dms / ms / red:.2f}", flush=True)
    torch.set_num_threads(args.threads)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a slice of the data, one budget, MNISTNet only")
    p.add_argument("--models", default=None, help="comma-separated: mnistnet,resnet,mobilenetv2")
    p.add_argument("--runtimes", default="eager,onnxruntime")
    p.add_argument("--budgets", default=None, help="comma-separated fractions of the dense latency")
    p.add_argument("--train", type=int, default=None, help="training/fine-tuning samples")
    p.add_argument("--finetune-train", type=int, default=None,
                   help="samples of the one fine-tune epoch after pruning (default 20,000; 512 with --quick)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="ours' LatencyAllocation(tolerance=...); a row counts as met within 10 %% of its budget "
                        "whatever this is (0.10 here left no room for the benchmark's own timing: "
                        "12 of 18 met in one run, docs/latency.md)")
    p.add_argument("--bisect", type=int, default=None, help="measured steps to match a baseline's latency")
    p.add_argument("--seeds", type=int, default=1,
                   help="fine-tunes per pruned model, each with its own batch order (the same orders for every "
                        "method); accuracies are their means. At equal widths, three orders moved the ResNet-style "
                        "model at 1/4 by up to 3 points")
    p.add_argument("--speed-batch", type=int, default=256, help="batch of the speedup ÷ MAC reduction rows")
    p.add_argument("--speed-runtimes", default=None, help="runtimes of those rows (default: --runtimes + torchscript)")
    p.add_argument("--speed-threads", default=None,
                   help="comma-separated intra-op thread counts of those rows, each timed (default: --threads)")
    p.add_argument("--speedup-only", action="store_true",
                   help="only the speedup ÷ MAC rows, merged into an existing result file")
    p.add_argument("--distortion", action="store_true", help="ours with distortion=True (output change on the probe)")
    p.add_argument("--release-freed-memory", action="store_true",
                   help="leave glibc's adaptive trimming on (PRUNEKIT_KEEP_FREED_MEMORY=0): timings then depend "
                        "on the heap's layout")
    p.add_argument("--flops-no-head-rank", action="store_true",
                   help="the FLOP-budgeted twin with head_rank=False (its groups may go below the classifier's "
                        "outputs); ours keeps the default")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be at least 1; got {args.seeds}")
    args.speed_threads = [int(t) for t in (args.speed_threads or str(args.threads)).split(",")]
    if args.release_freed_memory:
        os.environ["PRUNEKIT_KEEP_FREED_MEMORY"] = "0"
    kept = steady_heap()  # what every prunekit timing does first (metrics_timing.steady_heap)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    quick = args.quick
    models = (args.models or ("mnistnet" if quick else "mnistnet,resnet,mobilenetv2")).split(",")
    budgets = [float(b) for b in (args.budgets or ("0.5" if quick else "0.5,0.25,0.125")).split(",")]
    runtimes = args.runtimes.split(",")
    args.repeats = args.repeats or (5 if quick else 15)
    args.bisect = args.bisect or (3 if quick else 6)
    n = args.train or (512 if quick else 8000)
    train, test = datasets.load_mnist("train"), datasets.load_mnist("test")
    xtr, ytr = train.tensors[0][:n], train.tensors[1][:n]
    nft = args.finetune_train or (512 if quick else 20000)
    args.xft, args.yft = train.tensors[0][:nft], train.tensors[1][:nft]
    xte, yte = test.tensors[0][: (1000 if quick else 10000)], test.tensors[1][: (1000 if quick else 10000)]
    probe = xtr[:8]
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for name in [] if args.speedup_only else models:
        if name == "mnistnet":
            model = zoo.create("mnistnet", pretrained=True)
        else:
            torch.manual_seed(0)
            model = ResNetS() if name == "resnet" else MobileNetV2S()
            # no weights ship for these: trained here (3 epochs; one in quick mode)
            finetune(model, xtr, ytr, seed=1, epochs=1 if quick else 3, lr=3e-3)
            settle(model, xtr[:RECAL])
        run_model(name, model.eval(), runtimes, budgets, (xtr, ytr, xte, yte), probe, args, rows)
    speed_runtimes = (args.speed_runtimes or ",".join(dict.fromkeys(runtimes + ["torchscript"]))).split(",")
    speed = speedup_rows(probe, speed_runtimes, args)
    best = {}
    for r in speed:
        # keyed by the share of channels actually removed (rounding moves it off the request)
        key = f"{r['channels_removed_actual']:.3f}"
        best[key] = max(best.get(key, 0.0), r["ratio"])
    met = [r["met"] for r in rows]
    not_worse = [r["ours_accuracy"] >= r["flops_accuracy"] - 1e-9 for r in rows]
    result = {
        "benchmark": "latency_budget", "quick": quick, "environment": environment(),
        "loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "settings": {"batch": args.batch, "threads": args.threads, "speed_threads": args.speed_threads,
                     "repeats": args.repeats, "tolerance": args.tolerance, "train_samples": n,
                     "finetune_samples": nft, "finetune_seeds": args.seeds, "distortion": args.distortion,
                     "flops_head_rank": not args.flops_no_head_rank,
                     "keep_freed_memory": kept, "bn_recalibration_samples": RECAL,
                     "test_samples": len(yte), "budgets": budgets, "runtimes": runtimes, "models": models},
        "rows": rows, "speedup_vs_macs": speed, "best_ratio_by_channels_removed": best,
        "summary": {"budgets_met": f"{sum(met)}/{len(met)}",
                    "ours_accuracy_ge_flops": f"{sum(not_worse)}/{len(not_worse)}",
                    "best_speedup_over_mac_reduction": best},
    }
    if args.speedup_only:
        import json

        path = Path(args.out or RESULTS) / ("latency_budget_quick.json" if quick else "latency_budget.json")
        # merged into the full run's file where there is one; otherwise these rows alone
        old = json.loads(path.read_text()) if path.exists() else {k: v for k, v in result.items() if k != "rows"}
        old["speedup_vs_macs"], old["best_ratio_by_channels_removed"] = speed, best
        old["summary"]["best_speedup_over_mac_reduction"] = best
        old["speedup_environment"] = result["environment"]
        old["speedup_keep_freed_memory"] = kept
        write_json(path.stem, old, path.parent)
        print("summary:", old["summary"])
        return old
    print_table(f"latency budgets (measured / dense, accuracy after 1 epoch, mean of {args.seeds} batch order(s))",
                ["model", "runtime", "budget", "measured", "met", "ours", "flops (ratio)", "torch-pruning (ratio)"],
                [[r["model"], r["runtime"], f"{r['budget']:.3f}", f"{r['measured_ratio']:.3f}", r["met"],
                  f"{r['ours_accuracy']:.4f}", f"{r['flops_accuracy']:.4f} ({r['flops_measured_ratio']:.2f})",
                  f"{r['torch_pruning_accuracy']:.4f} ({r['torch_pruning_measured_ratio']:.2f})"] for r in rows])
    print("summary:", result["summary"])
    write_json("latency_budget_quick" if quick else "latency_budget", result, args.out)
    return result


if __name__ == "__main__":
    main()
