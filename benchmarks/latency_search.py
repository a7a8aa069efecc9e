"""How close the measured latency search lands to its target, without fine-tuning.

For the three models of ``latency_budget.py`` (MNISTNet from the zoo; the ResNet- and
MobileNetV2-style CNNs trained one epoch on 2,000 MNIST images, enough for their scores),
in eager PyTorch and ONNX Runtime at 1/2, 1/4 and 1/8 of the dense latency (batch 64, 2
threads): ``allocation=LatencyAllocation(budget)`` and the measured ratio of what it picked
(its own interleaved timing), that ratio ÷ the budget (1.0 is on target; above 1.10 a
miss; well below 1 an overshoot, which costs accuracy), the measured allocations it took,
and the kept units per group. A minute or two per model; no accuracy is measured (see
``latency_budget.py`` for that).

    python benchmarks/latency_search.py [--tag NAME]

Writes ``benchmarks/results/latency_search[_NAME].json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its threads

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, write_json  # noqa: E402
from latency_budget import MobileNetV2S, ResNetS, finetune  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit import datasets, zoo  # noqa: E402
from prunekit.allocation.latency import LatencyAllocation  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="mnistnet,resnet,mobilenetv2")
    p.add_argument("--runtimes", default="eager,onnxruntime")
    p.add_argument("--budgets", default="0.5,0.25,0.125")
    p.add_argument("--tag", default=None, help="suffix of the result file")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    train = datasets.load_mnist("train")
    x, y = train.tensors[0][:2000], train.tensors[1][:2000]
    probe = x[:8]
    rows = []
    for name in args.models.split(","):
        if name == "mnistnet":
            model = zoo.create("mnistnet", pretrained=True)
        else:
            torch.manual_seed(0)
            model = ResNetS() if name == "resnet" else MobileNetV2S()
            finetune(model, x, y, seed=1, epochs=1, lr=3e-3)
        model.eval()
        for runtime in args.runtimes.split(","):
            for budget in (float(b) for b in args.budgets.split(",")):
                m = copy.deepcopy(model)
                alloc = LatencyAllocation(budget, runtime=runtime, batch_size=64, threads=2)
                t0 = time.time()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the unreachable 1/8 budgets warn, as documented
                    pk.prune(m, allocation=alloc, granularity="channel", example_inputs=probe)
                ratio = alloc.measured_ms_ / alloc.dense_ms_
                rows.append({"model": name, "runtime": runtime, "budget": budget, "measured_ratio": ratio,
                             "ratio_to_budget": ratio / budget, "iterations": len(alloc.history_),
                             "kept": alloc.history_[-1]["kept"], "seconds": time.time() - t0})
                print(f"{name} {runtime} {budget:g}: {ratio:.3f} of dense ({ratio / budget:.2f} x budget), "
                      f"{len(alloc.history_)} measured", flush=True)
    ontarget = [r for r in rows if r["ratio_to_budget"] <= 1.10]
    result = {"benchmark": "latency_search", "environment": environment(), "rows": rows,
              "summary": {"within_10pct_or_below": f"{len(ontarget)}/{len(rows)}",
                          "mean_abs_distance_of_those": sum(abs(1 - r["ratio_to_budget"]) for r in ontarget)
                          / max(1, len(ontarget))}}
    print_table("latency search: measured ÷ dense of the pick, ÷ budget",
                ["model", "runtime", "budget", "measured", "÷ budget", "measured allocations"],
                [[r["model"], r["runtime"], f"{r['budget']:g}", f"{r['measured_ratio']:.3f}",
                  f"{r['ratio_to_budget']:.2f}", r["iterations"]] for r in rows])
    print("summary:", result["summary"])
    write_json("latency_search" + (f"_{args.tag}" if args.tag else ""), result)
    return result


if __name__ == "__main__":
    main()
