"""Pruning schedules on LeNet-300-100 and real MNIST at one epoch budget, next to torch.nn.utils.prune.

Every method trains the same initial model (per seed) on the 50k ``train`` split, in the same
data order, for the same number of epochs, and is reported on the 10k ``test`` split; the
settings of :data:`RECIPE` were chosen on the held-out ``val`` split with separate tuning
seeds, 100 and 101 (never on test). Methods (see :mod:`prunekit.compare`), 7 epochs each
= 4 training + 3 fine-tuning:

* ``dense``: no pruning, the reference at the same budget;
* ``oneshot``: dense, prune once, fine-tune;
* ``iterative``: dense, then 3 rounds of prune → 1 fine-tune epoch;
* ``gradual``: Zhu & Gupta cubic ramp to the target during training, then fine-tune;
* ``l1`` / ``l2``: penalty during training, magnitude threshold at the target, fine-tune;
* ``combined``: L1 penalty and the gradual ramp together, then fine-tune.

The anchor, run side by side on the same seeds and data order: ``torch.nn.utils.prune``
(global L1-magnitude, 3 steps to the target with 1 Adam fine-tune epoch each, lr 1e-3,
after 4 dense epochs: 7 epochs in all). Published figure: 95.40 % at 99 % vs 97.77 % dense.
Target for prunekit: at the same 7-epoch budget, 99 % sparsity within 1 pt of the dense
model of the same budget. The gradual and combined schedules are also run with longer
budgets (15 and 30 epochs by default; ``--long-dense`` adds dense models of those budgets).

Run ``python benchmarks/schedules_mnist.py`` for the full benchmark (3 seeds), or ``--quick``
for a smoke run on a small slice.
"""

from __future__ import annotations

import os

# Busy-waiting OpenMP threads slow training by orders of magnitude on shared cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from prunekit import zoo  # noqa: E402
from prunekit.compare import DENSE, METHODS, Recipe, ShuffledBatches, compare  # noqa: E402
from prunekit.datasets import load_mnist, subset  # noqa: E402
from prunekit.train import evaluate, fit, set_seed  # noqa: E402

THREADS = 2
# Every setting below was chosen on the val split with tuning seeds 100 and 101 (never on
# test, never with the reported seeds). Each comment gives val accuracy (%) at 99 % and
# 7 epochs for the values tried, the other settings as stated; seed 100 unless "2 seeds"
# (the mean over both tuning seeds).
RECIPE = Recipe(
    sparsity=0.99,
    epochs=7,
    # gradual, ft lr 1e-2: lr 1e-3 97.44, 3e-3 97.47, 1e-2 96.89 (freq 25)
    lr=3e-3,
    # gradual, lr 3e-3: ft lr 3e-3 97.17, 1e-2 97.47, 3e-2 97.42
    finetune_lr=1e-2,
    # gradual, lr 3e-3, ft lr 1e-2, freq 25: cosine 97.43, constant 97.02
    decay="cosine",
    # gradual, lr 1e-3, ft lr 3e-3: lamp 97.04, global 96.89, erk 97.05 (lamp kept: 97.04 vs
    # 97.05 is a tie, and lamp won at 99 % in benchmarks/unstructured_mnist.py)
    allocation="lamp",
    # gradual, lr 1e-3, ft lr 3e-3: every 100 steps 97.04, every 25 97.20 (at lr 3e-3, ft lr
    # 1e-2: 97.47 vs 97.43, a tie)
    gradual_frequency=25,
    # combined, 2 seeds: 1e-5 97.48, 3e-5 97.59, 1e-4 97.64, 3e-4 97.72; 1e-3 96.62 (seed 100)
    # l1: 1e-5 96.49 and 3e-4 97.64 (2 seeds), 1e-4 97.36, 1e-3 96.54
    l1_strength=3e-4,
    # l2: 1e-5 96.38, 1e-4 96.34, 1e-3 96.87, 3e-3 96.76
    l2_strength=1e-3,
)
# The dense reference gets its own val-chosen learning rates (2 seeds): lr 1e-3 / ft lr 1e-3
# 98.27, 1e-3 / 3e-3 98.17, the pruning recipe's 3e-3 / 1e-2 98.02.
DENSE_RECIPE = replace(RECIPE, lr=1e-3, finetune_lr=1e-3)
ANCHOR = "torch prune"
PUBLISHED = {"dense": 97.77, "anchor": 95.40}
TARGET_DROP_PT = 1.0
# Ours with the best val accuracy at 7 epochs during tuning; the longer budgets run it and
# the plain gradual schedule.
HEADLINE = "combined"
LONG_METHODS = ("gradual", "combined")


def lenet() -> nn.Module:
    return zoo.create("lenet300100")


def anchor_run(seed: int, train: Any, test: Any, val: Any, sparsity: float, dense_epochs: int, steps: int) -> dict[str, Any]:
    """torch.nn.utils.prune: ``dense_epochs`` dense (Adam 1e-3), then ``steps`` global
    L1-magnitude steps, each followed by 1 fine-tune epoch; same init and data order as ours."""
    start = time.perf_counter()
    set_seed(seed)
    model = zoo.create("lenet300100")
    data = ShuffledBatches(*train.tensors, 128, seed=seed)
    fit(model, data, epochs=dense_epochs, lr=1e-3, progress=False)
    dense_acc, dense_val = evaluate(model, test), evaluate(model, val)
    layers = [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear)]
    per_step = 1.0 - (1.0 - sparsity) ** (1.0 / steps)  # of the weights still alive
    for _ in range(steps):
        torch_prune.global_unstructured(layers, pruning_method=torch_prune.L1Unstructured, amount=per_step)
        fit(model, data, epochs=1, lr=1e-3, progress=False)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in layers)
    total = sum(m.weight.numel() for m, _ in layers)
    return {
        "accuracy": evaluate(model, test),
        "val_accuracy": evaluate(model, val),
        "sparsity": zeros / total,
        "epochs": dense_epochs + steps,
        "seconds": time.perf_counter() - start,
        "dense_accuracy": dense_acc,
        "dense_val_accuracy": dense_val,
    }


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per (label, budget), with the drop vs the dense model of that budget."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["label"], r["budget"]), []).append(r)
    dense_by_budget = {e: _stats([100 * r["accuracy"] for r in rs])[0] for (l, e), rs in groups.items() if l == DENSE}
    out = []
    for (label, budget), rs in groups.items():
        m, s = _stats([100 * r["accuracy"] for r in rs])
        vm, _ = _stats([100 * r["val_accuracy"] for r in rs])
        ref = dense_by_budget.get(budget)
        out.append({
            "label": label, "budget": budget, "epochs": rs[0]["epochs"], "split": rs[0]["split"],
            "test_mean": m, "test_std": s,
            "val_mean": vm, "delta_vs_dense_pt": (m - ref) if ref is not None and label != DENSE else None,
            "sparsity_mean": 100 * statistics.fmean(r["sparsity"] for r in rs),
            "seconds_mean": statistics.fmean(r["seconds"] for r in rs),
            "test_per_seed": [r["accuracy"] for r in rs], "n": len(rs),
        })
    return out


def format_table(summary: list[dict[str, Any]]) -> str:
    lines = [f"{'method':<17} {'epochs':>7} {'test acc %':>14} {'Δ vs dense':>10} {'val acc %':>9} "
             f"{'sparsity %':>10} {'s/run':>6}"]
    last = None
    for r in summary:
        if last is not None and r["budget"] != last:
            lines.append("")
        last = r["budget"]
        delta = "" if r["delta_vs_dense_pt"] is None else f"{r['delta_vs_dense_pt']:+.2f} pt"
        lines.append(
            f"{r['label']:<17} {r['split']:>7} {r['test_mean']:>7.2f} ± {r['test_std']:4.2f} {delta:>10} "
            f"{r['val_mean']:>9.2f} {r['sparsity_mean']:>10.2f} {r['seconds_mean']:>6.0f}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2k-image slice, short budgets")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2)")
    p.add_argument("--epochs", type=int, default=None, help="budget of every method (default 7)")
    p.add_argument("--long", type=int, nargs="*", default=None, help="longer gradual budgets (default 15 30)")
    p.add_argument("--long-dense", action="store_true", help="also train dense models at the longer budgets")
    p.add_argument("--limit", type=int, default=None, help="use only this many train/val/test images")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="output folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]

    def log(msg: str) -> None:
        print(f"{time.perf_counter() - start:7.1f}s {msg}", flush=True)

    quick = args.quick
    seeds = args.seeds or ([0] if quick else [0, 1, 2])
    epochs = args.epochs or (2 if quick else RECIPE.epochs)
    long_budgets = args.long if args.long is not None else ([3] if quick else [15, 30])
    limit = args.limit or (2000 if quick else None)
    recipe = replace(RECIPE, epochs=epochs)
    dense_recipe = replace(DENSE_RECIPE, epochs=epochs)
    train, val, test = load_mnist("train"), load_mnist("val"), load_mnist("test")
    if limit is not None:
        train, val, test = (subset(d, min(limit, len(d)), seed=0) for d in (train, val, test))
    t_ep, ft_ep = recipe.phases
    config = {
        "model": "lenet300100", "quick": quick, "seeds": seeds, "train_examples": len(train),
        "val_examples": len(val), "test_examples": len(test), "recipe": asdict(recipe),
        "dense_recipe": asdict(dense_recipe),
        "phases": {"train": t_ep, "finetune": ft_ep}, "long_budgets": long_budgets,
        "long_methods": ([DENSE] if args.long_dense else []) + list(LONG_METHODS),
        "anchor": {"method": "torch.nn.utils.prune.global_unstructured(L1Unstructured)", "dense_epochs": t_ep,
                   "steps": ft_ep, "finetune_epochs_per_step": 1, "optimizer": "adam", "lr": 1e-3,
                   "batch_size": 128},
        "published_pct": PUBLISHED, "target_drop_pt": TARGET_DROP_PT, "headline_method": HEADLINE,
        "settings_chosen_on": "val split, tuning seeds 100 and 101",
    }
    log(f"config: {json.dumps(config['recipe'])}; phases {t_ep}+{ft_ep}; long {long_budgets}")

    rows: list[dict[str, Any]] = []

    def add(label: str, row: dict[str, Any], budget: int) -> None:
        rows.append({"label": label, "budget": budget, **row})

    for seed in seeds:
        for rec, methods in ((dense_recipe, (DENSE,)), (recipe, METHODS)):
            for r in compare(lenet, train, test, rec, methods=methods, val=val, seeds=[seed], log=log, baseline=False):
                add(r.method, {**r.as_dict(), "split": f"{r.train_epochs}+{r.finetune_epochs}"}, epochs)
        a = anchor_run(seed, train, test, val, recipe.sparsity, t_ep, ft_ep)
        log(f"[seed {seed}] {ANCHOR} test {a['accuracy']:.4f} val {a['val_accuracy']:.4f} "
            f"sparsity {a['sparsity']:.4f} ({a['seconds']:.0f}s); its dense ({t_ep} epochs) {a['dense_accuracy']:.4f}")
        add(ANCHOR, {**a, "seed": seed, "split": f"{t_ep}+{ft_ep}x1"}, epochs)
        add(f"dense ({t_ep} ep)", {"accuracy": a["dense_accuracy"], "val_accuracy": a["dense_val_accuracy"],
                                   "sparsity": 0.0, "epochs": t_ep, "seconds": 0.0, "seed": seed,
                                   "split": f"{t_ep}+0"}, epochs)
        for budget in long_budgets:
            runs = [(recipe, LONG_METHODS)]
            if args.long_dense:
                runs.insert(0, (dense_recipe, (DENSE,)))
            for rec, methods in runs:
                rec = replace(rec, epochs=budget)
                for r in compare(lenet, train, test, rec, methods=methods, val=val, seeds=[seed], log=log, baseline=False):
                    add(r.method, {**r.as_dict(), "split": f"{r.train_epochs}+{r.finetune_epochs}"}, budget)

    summary = summarize(rows)
    summary.sort(key=lambda r: (r["budget"] != epochs, r["budget"], r["label"] != DENSE))
    by = {(r["label"], r["budget"]): r for r in summary}
    dense, head, anchor = by[(DENSE, epochs)], by[(HEADLINE, epochs)], by[(ANCHOR, epochs)]
    drop = dense["test_mean"] - head["test_mean"]
    best = max((m for m in METHODS), key=lambda m: by[(m, epochs)]["val_mean"])
    targets = {
        "sparsity": recipe.sparsity, "epochs": epochs, "dense_test_pct": dense["test_mean"],
        "headline": HEADLINE, "headline_test_pct": head["test_mean"], "drop_pt": drop,
        "max_drop_pt": TARGET_DROP_PT, "met": drop <= TARGET_DROP_PT,
        "missed_by_pt": max(0.0, drop - TARGET_DROP_PT),
        "vs_torch_same_run_pt": head["test_mean"] - anchor["test_mean"],
        "vs_published_anchor_pt": head["test_mean"] - PUBLISHED["anchor"],
        "best_by_val": best, "best_by_val_test_pct": by[(best, epochs)]["test_mean"],
        "longer": {str(b): {f"{m}_test_pct": by[(m, b)]["test_mean"] for m in (DENSE, *LONG_METHODS)
                            if (m, b) in by} for b in long_budgets},
    }
    wall = time.perf_counter() - start
    payload = {"benchmark": "schedules_mnist", "config": config, "environment": {**environment(), "loadavg_start": load_start, "wall_time_s": wall},
               "summary": summary, "targets": targets, "runs": rows}
    path = write_json("schedules_mnist", payload, args.out)

    print()
    print(f"LeNet-300-100, MNIST test (mean ± std over seeds {seeds}), target sparsity {recipe.sparsity:.0%}; "
          "epochs = training + fine-tuning")
    print(format_table(summary))
    print()
    verdict = "met" if targets["met"] else f"missed by {targets['missed_by_pt']:.2f} pt"
    print(f"{HEADLINE} at {epochs} epochs: {head['test_mean']:.2f} % vs dense {dense['test_mean']:.2f} % "
          f"(drop {drop:.2f} pt; target ≤ {TARGET_DROP_PT:g} pt: {verdict}); vs torch same run "
          f"{targets['vs_torch_same_run_pt']:+.2f} pt, vs published anchor {targets['vs_published_anchor_pt']:+.2f} pt")
    print(f"best method by val: {best} ({targets['best_by_val_test_pct']:.2f} % test)")
    for b, t in targets["longer"].items():
        parts = ", ".join(f"{k.removesuffix('_test_pct')} {v:.2f} %" for k, v in t.items())
        print(f"{b} epochs: {parts}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, wall {wall:.0f}s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
