"""Where Wanda loses to magnitude at 99 % on LeNet-300-100: one layer at a time.

The per-layer counts of kept weights are fixed (those magnitude + LAMP picks at 99 %); inside
each layer, the kept weights are chosen by magnitude (``m``) or by Wanda's ``|W| · ||x||``
(``w``). ``mmm`` is magnitude everywhere, ``www`` Wanda everywhere, ``wmm`` Wanda in the
first (784 → 300) layer only, and so on. Each variant is fine-tuned as in
``unstructured_mnist.py`` (2 Adam epochs, batch 128, cosine to zero, the same data order),
once per learning rate; the learning rate is picked on ``val`` and only the picked model is
evaluated on ``test``.

    python benchmarks/unstructured_mnist_layers.py            # 3 seeds, about 4 min
    python benchmarks/unstructured_mnist_layers.py --quick    # 1 seed, 5k training images

Writes ``benchmarks/results/unstructured_mnist_layers.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import unstructured_mnist as U  # noqa: E402
from _common import environment, write_json  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit import zoo  # noqa: E402
from prunekit.criteria import wanda  # noqa: E402
from prunekit.datasets import load_mnist, subset  # noqa: E402
from prunekit.masking import apply_masks  # noqa: E402
from prunekit.train import evaluate, fit, set_seed  # noqa: E402

VARIANTS = ("mmm", "wmm", "mwm", "mmw", "www")


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(scores.numel(), dtype=scores.dtype)
    mask[scores.flatten().topk(k).indices] = 1
    return mask.reshape(scores.shape)


def run_seed(seed: int, args, train, val, test) -> dict:
    set_seed(seed)
    dense = zoo.create("lenet300100")
    fit(dense, train, epochs=args.dense_epochs, lr=1e-3, optimizer="adam", batch_size=128, seed=seed, progress=False)
    x, y = train.tensors
    g = torch.Generator().manual_seed(10_000 + seed)  # the calibration draw of unstructured_mnist.py
    pick = torch.randperm(len(y), generator=g)[: 128 * 64]
    calib = [(x[pick[i : i + 128]], y[pick[i : i + 128]]) for i in range(0, len(pick), 128)]

    lamp = copy.deepcopy(dense)
    pk.prune(lamp, args.sparsity, criterion="magnitude", allocation="lamp")
    counts = {name: int(m.sum()) for name, m in pk.masks(lamp).items()}
    names = list(counts)
    scores = {
        "m": {n: p.detach().abs() for n, p in dense.named_parameters() if n in counts},
        "w": wanda(dense, data=calib, max_batches=len(calib)),
    }
    out = {"seed": seed, "dense": {"val": evaluate(dense, val), "test": evaluate(dense, test)},
           "kept_per_layer": counts, "variants": {}}
    for variant in VARIANTS:
        masks = {n: top_k_mask(scores[c][n], counts[n]) for c, n in zip(variant, names)}
        best = None
        by_lr = {}
        for lr in args.lrs:
            model = copy.deepcopy(dense)
            apply_masks(model, masks)
            U.finetune(model, x, y, epochs=2, lr=lr, seed=seed, schedule="cosine")
            v = evaluate(model, val)
            by_lr[repr(lr)] = v
            if best is None or v > best[0]:
                best = (v, lr, model)
        v, lr, model = best
        out["variants"][variant] = {"val": v, "lr": lr, "test": evaluate(model, test), "val_by_lr": by_lr,
                                    "sparsity_after_finetune": U.weight_sparsity(model)}
        print(f"[seed {seed}] {variant}: val {v:.4f} test {out['variants'][variant]['test']:.4f} (lr {lr:g})",
              flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, 5k training images, 1 dense epoch")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--sparsity", type=float, default=0.99)
    p.add_argument("--lrs", type=float, nargs="+", default=[3e-2, 1e-2])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    train = load_mnist("train")
    val, test = U.as_batches(load_mnist("val")), U.as_batches(load_mnist("test"))
    args.dense_epochs = 4
    if args.quick:
        train, args.dense_epochs = subset(train, 5000, seed=0), 1
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    runs = [run_seed(s, args, train, val, test) for s in seeds]
    base_test = statistics.fmean(r["variants"]["mmm"]["test"] for r in runs)
    dense_test = statistics.fmean(r["dense"]["test"] for r in runs)
    summary = {}
    print(f"\ndense test {100 * dense_test:.2f} %; kept per layer (seed {seeds[0]}): {runs[0]['kept_per_layer']}")
    print(f"{'variant':<8} {'val %':>7} {'test %':>7} {'vs mmm':>8} {'vs dense':>9}")
    for v in VARIANTS:
        val_m = statistics.fmean(r["variants"][v]["val"] for r in runs)
        test_m = statistics.fmean(r["variants"][v]["test"] for r in runs)
        summary[v] = {"val_mean": val_m, "test_mean": test_m, "vs_mmm_pt": 100 * (test_m - base_test),
                      "vs_dense_pt": 100 * (test_m - dense_test)}
        print(f"{v:<8} {100 * val_m:>7.2f} {100 * test_m:>7.2f} {summary[v]['vs_mmm_pt']:>+7.2f} "
              f"{summary[v]['vs_dense_pt']:>+8.2f}")
    payload = {"benchmark": "unstructured_mnist_layers", "quick": args.quick, "seeds": seeds,
               "sparsity": args.sparsity, "lrs": args.lrs, "summary": summary, "runs": runs,
               "environment": environment(), "wall_s": time.perf_counter() - t0}
    path = write_json("unstructured_mnist_layers" + ("_quick" if args.quick else ""), payload, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
