"""Files that really shrink: pruning + quantization + the packed format, on MNIST.

LeNet-300-100 (trained here) and the trained MNISTNet: dense fp32, pruned (unstructured,
LAMP, fine-tuned with masks), then the pruned model saved packed: exact, fp16, int8 (per
output channel) and 4-bit shared weights (k-means codebook, centroids fine-tuned one
epoch); for MNISTNet also channel-pruned + compacted + int8. For each: test accuracy, the
weights file's bytes, the compression ratio against the dense fp32 ``torch.save``
state_dict file, and CPU latency at batch 1 (packed files load into ordinary dense
tensors: a packed model runs at the speed of the model it holds).

    python benchmarks/deploy_mnist.py            # full run (~6 min on 2 cores)
    python benchmarks/deploy_mnist.py --quick    # smoke run on a slice

Writes ``benchmarks/results/deploy_mnist.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import io  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, print_table, write_json  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit import datasets, zoo  # noqa: E402
from prunekit.deploy.quantize import share_weights  # noqa: E402
from prunekit.train import evaluate, fit  # noqa: E402


def state_dict_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(pk.commit(copy.deepcopy(model)).state_dict(), buf)
    return buf.getbuffer().nbytes


def latency_ms(model: nn.Module, x: torch.Tensor, runs: int) -> float:
    times = []
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def saved(model: nn.Module, folder: Path, fresh, **kw: Any) -> tuple[nn.Module, int]:
    """Save, load back (into ``fresh()`` when not a zoo model), and the weights file bytes."""
    pk.save(model, folder, **kw)
    weights = next(f for f in folder.iterdir() if f.name.startswith("model."))
    back = pk.load(folder) if getattr(model, "zoo_spec", None) else pk.load(folder, model=fresh())
    return back.eval(), weights.stat().st_size


def batches(ds, size: int = 128, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = ds.tensors
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [(x[order[i : i + size]], y[order[i : i + size]]) for i in range(0, len(y), size)]


def run_model(name: str, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    flat = name == "lenet300100"
    train = datasets.load_mnist("train", flatten=flat)
    test = datasets.load_mnist("test", flatten=flat)
    if args.limit:
        train, test = datasets.subset(train, args.limit, seed=0), datasets.subset(test, args.limit, seed=0)
    x1 = test.tensors[0][:1]
    torch.manual_seed(args.seed)
    if name == "lenet300100":
        dense = zoo.create("lenet300100")
        fit(dense, train, epochs=args.dense_epochs, lr=1e-3, seed=args.seed, progress=False)
    else:
        dense = zoo.create("mnistnet", pretrained=True)
    dense.eval()
    base_bytes = state_dict_bytes(dense)
    acc_dense = evaluate(dense, test)
    rows = [{"model": name, "variant": "dense fp32", "accuracy": acc_dense, "bytes": base_bytes,
             "latency_b1_ms": latency_ms(dense, x1, args.runs)}]

    def add(variant: str, model: nn.Module, nbytes: int, note: str = "") -> None:
        rows.append({"model": name, "variant": variant, "accuracy": evaluate(model, test), "bytes": nbytes,
                     "latency_b1_ms": latency_ms(model, x1, args.runs), "note": note})
        print(f"{name} {variant}: {rows[-1]['accuracy']:.2%}, {nbytes:,} B ({base_bytes / nbytes:.1f}×)", flush=True)

    sparsity = args.sparsity[name]
    pruned = copy.deepcopy(dense)
    pk.prune(pruned, sparsity, criterion="magnitude", allocation="lamp")
    fit(pruned, train, epochs=args.finetune_epochs[name], lr=args.finetune_lr[name], seed=args.seed, progress=False)
    pruned.eval()
    fresh = lambda: zoo.create(name)  # noqa: E731
    back, n = saved(pruned, out / f"{name}-pruned", fresh)
    add(f"pruned {sparsity:.0%} (safetensors)", back, n)
    for q in (None, "fp16", "int8"):
        back, n = saved(pruned, out / f"{name}-packed-{q}", fresh, format="packed", quantize=q)
        add(f"pruned {sparsity:.0%} + packed {q or 'exact'}", back, n)
    shared = copy.deepcopy(pruned)
    share_weights(shared, 4, data=batches(train), loss_fn=F.cross_entropy, epochs=1, lr=args.centroid_lr)
    back, n = saved(shared, out / f"{name}-codebook", fresh, format="packed", quantize="codebook:4")
    add(f"pruned {sparsity:.0%} + 4-bit shared + packed", back, n, "centroids fine-tuned 1 epoch")
    if name == "mnistnet":
        small = copy.deepcopy(dense)
        pk.prune(small, 0.5, granularity="channel", allocation="uniform", example_inputs=test.tensors[0][:8])
        small = pk.compact(small, test.tensors[0][:8])
        fit(small, train, epochs=1, lr=1e-3, seed=args.seed, progress=False)
        small.eval()
        back, n = saved(small, out / f"{name}-channels", fresh, format="packed", quantize="int8")
        add("channels −50 % compacted + packed int8", back, n, "runs 2–3× faster (see structured_mnist)")
    for r in rows:
        r["ratio"] = base_bytes / r["bytes"]
        r["delta_pt"] = 100 * (r["accuracy"] - acc_dense)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["lenet300100", "mnistnet"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.dense_epochs = 4
    args.sparsity = {"lenet300100": 0.95, "mnistnet": 0.9}
    args.finetune_epochs = {"lenet300100": 2, "mnistnet": 1}
    args.finetune_lr = {"lenet300100": 1e-3, "mnistnet": 1e-4}
    args.centroid_lr = 1e-4
    if args.quick:
        args.limit, args.runs, args.dense_epochs = args.limit or 1500, 5, 1
        args.finetune_epochs = {"lenet300100": 1, "mnistnet": 1}
    torch.set_num_threads(2)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += run_model(name, args, Path(tmp))
    table = [[r["model"], r["variant"], f"{100 * r['accuracy']:.2f}", f"{r['delta_pt']:+.2f}", f"{r['bytes']:,}",
              f"{r['ratio']:.1f}×", f"{r['latency_b1_ms']:.3f}"] for r in rows]
    print_table("Pruning + quantization + packed files on MNIST (ratio vs the dense fp32 state_dict file)",
                ["model", "variant", "acc %", "Δ pt", "weights bytes", "smaller", "ms b1"], table)
    result = {"benchmark": "deploy_mnist", "environment": environment(),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "rows": rows}
    path = write_json("deploy_mnist" + ("_quick" if args.quick else ""), result, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
