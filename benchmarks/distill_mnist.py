"""Recovery of a channel-pruned CNN by distillation on unlabelled images, against fine-tuning on labels.

    python benchmarks/distill_mnist.py            # about 3 minutes on 2 CPU cores
    python benchmarks/distill_mnist.py --quick    # a 5,000-image slice, one epoch each

The pretrained MNISTNet loses 75 % of its channels (magnitude, one global ranking) and is
compacted; then, from the same pruned model, each row recovers it for the same number of
epochs over the 60,000 training images (Adam, lr 3e-3, batch 128, seed 0):
``finetune`` with the labels (cross entropy), ``distill`` with the dense model as the teacher
and *no labels* (:func:`prunekit.distill`, temperature 4). Test accuracy on the 10,000 test
images, agreement of the top-1 with the dense model, and seconds. Writes
``benchmarks/results/distill_mnist.json``. Target: >= 98.5 % by distillation on unlabelled images.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, write_json  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit import datasets, zoo  # noqa: E402
from prunekit.train import fit  # noqa: E402


@torch.no_grad()
def scores(model, dense, x, y):
    model.eval()
    hits = agree = 0
    for i in range(0, len(y), 2000):
        p = model(x[i : i + 2000]).argmax(1)
        hits += int((p == y[i : i + 2000]).sum())
        agree += int((p == dense(x[i : i + 2000]).argmax(1)).sum())
    return 100.0 * hits / len(y), 100.0 * agree / len(y)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, nargs="+", default=None, help="recovery budgets in epochs (1 3 5)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    xtr, ytr = datasets.load_mnist("train_full").tensors
    xte, yte = datasets.load_mnist("test").tensors
    if args.quick:
        xtr, ytr, xte, yte = xtr[:5000], ytr[:5000], xte[:2000], yte[:2000]
    budgets = args.epochs or ([1] if args.quick else [1, 3, 5])
    dense = zoo.create("mnistnet", pretrained=True).eval()
    pruned = copy.deepcopy(dense)
    pk.prune(pruned, 0.75, criterion="magnitude", granularity="channel", allocation="global", example_inputs=xtr[:8])
    pruned = pk.compact(pruned, xtr[:8])
    n_dense, n_pruned = (sum(q.numel() for q in m.parameters()) for m in (dense, pruned))
    rows = [{"recovery": "dense", "epochs": 0, "labels": True, **dict(zip(("accuracy", "agreement"), scores(dense, dense, xte, yte))),
             "seconds": 0.0, "params": n_dense},
            {"recovery": "none", "epochs": 0, "labels": False, **dict(zip(("accuracy", "agreement"), scores(pruned, dense, xte, yte))),
             "seconds": 0.0, "params": n_pruned}]
    for epochs in budgets:
        for name in ("finetune", "distill"):
            m = copy.deepcopy(pruned)
            t0 = time.perf_counter()
            if name == "finetune":
                fit(m, (xtr, ytr), epochs=epochs, lr=3e-3, batch_size=128, seed=0, progress=False)
            else:
                pk.distill(m, dense, xtr, epochs=epochs, lr=3e-3, batch_size=128, temperature=4.0, seed=0, progress=False)
            acc, agree = scores(m, dense, xte, yte)
            rows.append({"recovery": name, "epochs": epochs, "labels": name == "finetune", "accuracy": acc,
                         "agreement": agree, "seconds": time.perf_counter() - t0, "params": n_pruned})
            print(f"{name} {epochs} epoch(s): {acc:.2f} %", flush=True)
    print_table(f"MNISTNet, 75 % of channels removed ({n_dense:,} -> {n_pruned:,} parameters): recovery",
                ["recovery", "epochs", "labels", "test acc %", "top-1 = dense %", "seconds"],
                [[r["recovery"], r["epochs"], "yes" if r["labels"] else "no", f"{r['accuracy']:.2f}", f"{r['agreement']:.2f}",
                  f"{r['seconds']:.0f}"] for r in rows])
    write_json("distill_mnist" + ("_quick" if args.quick else ""), {
        "benchmark": "distill_mnist", "quick": args.quick, "rows": rows, "environment": environment(),
        "protocol": "MNISTNet pretrained, magnitude channel pruning 75 % global, compacted; Adam lr 3e-3, batch 128, "
                    "seed 0; distillation: temperature 4, alpha 0 (no labels)"}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
