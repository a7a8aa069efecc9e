"""Strategy search: a grid of pruning settings, k-fold cross-validated, with baselines.

``search(model_fn, data, grid)`` tries every combination of the grid (criterion ×
granularity × allocation × sparsity × schedule ("oneshot", "gradual", "iterative"), plus
any other ``pk.prune`` option), each on ``folds``
splits of the training data and ``seeds`` seeds: the model from ``model_fn(seed)`` is
(optionally) trained on the fold's training part, pruned, fine-tuned with its masks, and
evaluated on the fold's held-out part. The ``random`` and ``magnitude`` criteria are always
in the grid, as baselines. Each finished run is appended to ``results`` (JSON lines) at
once, so an interrupted search resumes where it stopped. ``workers > 1`` runs in separate
processes (``model_fn`` must then be importable: a module-level function).

The result lists every setting with mean ± std accuracy and its size (non-zero parameters,
effective FLOPs), and the Pareto front of accuracy against size.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import statistics
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from .errors import PruneError

BASELINES = ("random", "magnitude")


@dataclass
class SearchResult:
    """Aggregated settings (best first), the Pareto front and every single run."""

    rows: list[dict[str, Any]]
    pareto: list[dict[str, Any]]
    runs: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{'setting':<60} {'accuracy':>16} {'nonzero':>10}  pareto"]
        front = {r["key"] for r in self.pareto}
        for r in self.rows:
            acc = f"{r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f}"
            lines.append(f"{r['key']:<60} {acc:>16} {r['nonzero_params']:>10,}  {'*' if r['key'] in front else ''}")
        return "\n".join(lines)


@dataclass(frozen=True)
class ZooModel:
    """A picklable ``model_fn``: a fresh ``prunekit.zoo`` model per seed."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, seed: int) -> nn.Module:
        from . import zoo

        torch.manual_seed(seed)
        return zoo.create(self.name, **self.kwargs)


def _key(cfg: dict[str, Any]) -> str:
    return ", ".join(f"{k}={cfg[k]}" for k in sorted(cfg))


def settings(grid: dict[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``grid`` (baseline criteria added), in a stable order."""
    if not isinstance(grid, dict) or not grid:
        raise PruneError("grid must be a non-empty dict of option -> list of values, e.g. {'sparsity': [0.5, 0.9]}")
    grid = {k: list(v) if not isinstance(v, (str, bytes)) else [v] for k, v in grid.items()}
    for k, v in grid.items():
        if not v:
            raise PruneError(f"grid option {k!r} has no values")
    if "sparsity" not in grid and "threshold" not in grid:
        raise PruneError("grid needs 'sparsity' (or 'threshold') values")
    crits = grid.get("criterion", ["magnitude"])
    grid["criterion"] = list(dict.fromkeys(list(crits) + [b for b in BASELINES if b not in crits]))
    names = sorted(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def kfold(n: int, folds: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``folds`` (train, held-out) index pairs covering ``range(n)``, shuffled by ``seed``."""
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= n:
        raise PruneError(f"folds must be an int in [2, {n}], got {folds!r}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = torch.tensor_split(order, folds)
    return [(torch.cat([p for j, p in enumerate(parts) if j != i]), parts[i]) for i in range(folds)]


def _one(task: dict[str, Any]) -> dict[str, Any]:
    from .metrics import measure
    from .train import evaluate, fit, set_seed

    cfg, seed, data, tr, va = task["cfg"], task["seed"], task["data"], task["train_idx"], task["val_idx"]
    set_seed(seed)
    model = task["model_fn"](seed)
    train, val = Subset(data, tr.tolist()), Subset(data, va.tolist())
    if task["train_epochs"]:
        fit(model, train, epochs=task["train_epochs"], lr=task["lr"], seed=seed, progress=False)
    x, y = data.tensors[0][tr[:256]], data.tensors[1][tr[:256]]
    from .callbacks import prune_on_schedule

    opts = dict(cfg)
    sp = opts.pop("sparsity", None)
    schedule = opts.pop("schedule", "oneshot")
    if schedule not in ("oneshot", "gradual", "iterative"):
        raise PruneError(f"schedule {schedule!r} is not one of ['gradual', 'iterative', 'oneshot']")
    prune_on_schedule(model, train, sp, schedule=schedule, epochs=task["finetune_epochs"], lr=task["lr"],
                      seed=seed, calib=[(x, y)], loss_fn=torch.nn.functional.cross_entropy,
                      example_inputs=x[:8], **opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        m = measure(model, x[:1], latency=False)
    return {"key": task["key"], "fold": task["fold"], "seed": seed, "setting": cfg,
            "accuracy": evaluate(model, val), "nonzero_params": m.nonzero_params, "flops_effective": m.flops_effective}


def pareto(rows: list[dict[str, Any]], better: str = "accuracy_mean", smaller: str = "nonzero_params") -> list[dict[str, Any]]:
    """Rows no other row beats on both ``better`` (higher) and ``smaller`` (lower)."""
    front = []
    for r in rows:
        dominated = any(
            o[better] >= r[better] and o[smaller] <= r[smaller] and (o[better] > r[better] or o[smaller] < r[smaller])
            for o in rows
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r[smaller])


def search(
    model_fn: Callable[[int], nn.Module],
    data: TensorDataset,
    grid: dict[str, Iterable[Any]],
    *,
    folds: int = 3,
    seeds: Iterable[int] = (0,),
    train_epochs: int = 0,
    finetune_epochs: int = 1,
    lr: float = 1e-3,
    results: str | os.PathLike | None = None,
    workers: int = 1,
) -> SearchResult:
    """Cross-validated grid search over pruning settings; see the module docstring."""
    if not isinstance(data, TensorDataset) or len(data.tensors) < 2:
        raise PruneError("data must be a TensorDataset(inputs, labels), e.g. prunekit.datasets.load_digits()")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PruneError(f"workers must be an int >= 1, got {workers!r}")
    cfgs = settings(grid)
    seeds = list(seeds)
    done: dict[tuple[str, int, int], dict[str, Any]] = {}
    path = Path(results) if results is not None else None
    if path is not None and path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a line cut short by an interruption: that run is redone
                done[(r["key"], r["fold"], r["seed"])] = r
    tasks = []
    for seed in seeds:
        splits = kfold(len(data), folds, seed)
        for cfg in cfgs:
            key = _key(cfg)
            for f, (tr, va) in enumerate(splits):
                if (key, f, seed) not in done:
                    tasks.append({"cfg": cfg, "key": key, "seed": seed, "fold": f, "data": data, "train_idx": tr,
                                  "val_idx": va, "model_fn": model_fn, "train_epochs": train_epochs,
                                  "finetune_epochs": finetune_epochs, "lr": lr})

    def record(r: dict[str, Any]) -> None:
        done[(r["key"], r["fold"], r["seed"])] = r
        if path is not None:
            with open(path, "a") as fh:
                fh.write(json.dumps(r) + "\n")
                fh.flush()
                os.fsync(fh.fileno())

    if workers == 1:
        for t in tasks:
            record(_one(t))
    else:
        # spawn, not fork: a forked child of a process running torch threads can deadlock
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for r in pool.map(_one, tasks):
                record(r)
    runs = list(done.values())
    rows = []
    for cfg in cfgs:
        key = _key(cfg)
        mine = [r for r in runs if r["key"] == key]
        accs = [r["accuracy"] for r in mine]
        rows.append({"key": key, "setting": cfg, "runs": len(mine), "accuracy_mean": statistics.fmean(accs),
                     "accuracy_std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
                     "nonzero_params": round(statistics.fmean(r["nonzero_params"] for r in mine)),
                     "flops_effective": round(statistics.fmean(r["flops_effective"] for r in mine)),
                     "baseline": cfg.get("criterion") in BASELINES})
    rows.sort(key=lambda r: (-r["accuracy_mean"], r["nonzero_params"]))
    return SearchResult(rows, pareto(rows), runs)


__all__ = ["SearchResult", "ZooModel", "kfold", "pareto", "search", "settings"]
