"""Strategy search: a grid of pruning settings, k-fold cross-validated, with baselines.

``search(model_fn, data, grid)`` tries every combination of the grid (criterion ×
granularity × allocation × sparsity × schedule ("oneshot", "gradual", "iterative"), plus
any other ``pk.prune`` option; every setting is checked before the first run), each on
``folds`` splits of the training data and ``seeds`` seeds: the model from ``model_fn(seed)``
is (optionally) trained on the fold's training part, pruned, fine-tuned with its masks, and
evaluated on the fold's held-out part. The ``random`` and ``magnitude`` criteria are always
in the grid, as baselines. Each finished run is appended to ``results`` (JSON lines) at
once, so an interrupted search resumes where it stopped. ``workers > 1`` runs in separate
processes (``model_fn`` must then be importable: a module-level function).

The dense (unpruned) model is measured the same way, in the same run (key ``"dense"``):
its row is :attr:`SearchResult.dense`.

The result lists every setting with mean ± std accuracy and its size (non-zero parameters,
effective FLOPs), and the Pareto front of accuracy against size. A setting whose mean
accuracy is not above chance (always answering the most frequent class) + ``chance_margin``
is never on the front, however small: the most heavily pruned settings, whose models
guess, would otherwise sit on it because nothing smaller exists.

A "gradual" or "iterative" schedule whose ``finetune_epochs`` hold too few optimizer
steps to prune more than once warns once (:class:`prunekit.schedules.ScheduleWarning`).
"""

from __future__ import annotations

import inspect
import itertools
import math
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

from .errors import PruneError, PruneTypeError
from .schedules import ScheduleWarning
from .search_runs import ZooModel as ZooModel  # noqa: F401  (public here, as before)
from .search_runs import append_run, data_digest, end_cut_line, model_name, reusable_runs
from .validate import fraction, integer

BASELINES = ("random", "magnitude")
DENSE = "dense"
"""Key of the dense (unpruned) runs in the results and of :attr:`SearchResult.dense`."""
CHANCE_MARGIN = 0.05
"""Default margin above chance a setting's mean accuracy must exceed to be on the front."""
_BATCH_SIZE = 128
#: options search gives every run itself, and how to set them instead
_SET_BY_SEARCH = {"seed": "search(seeds=...)", "lr": "search(lr=...)", "epochs": "search(finetune_epochs=...)",
                  "batch_size": f"search ({_BATCH_SIZE})", "calib": "search (from the fold's training part)",
                  "loss_fn": "search (cross-entropy)", "example_inputs": "search (from the data)"}


@dataclass
class SearchResult:
    """Aggregated settings (best first), the Pareto front and every single run.

    Attributes:
        rows: one dict per setting, best mean accuracy first: ``key``, ``setting``,
            ``runs``, ``accuracy_mean``, ``accuracy_std``, ``nonzero_params``,
            ``flops_effective``, ``baseline`` (a baseline criterion), ``above_chance``
            (mean accuracy > :attr:`floor`) and ``delta_dense`` (mean accuracy minus the
            dense row's, when there is one).
        pareto: the rows no other row beats on both accuracy and non-zero parameters,
            among those above :attr:`floor`; fewest parameters first.
        runs: every single run (one per setting, seed and fold; dense runs included).
        dense: the dense (unpruned) model's row, measured the same way (None if absent).
        chance: accuracy of always answering the most frequent class of the data.
        floor: ``chance`` + the margin; a row at or below it is never on the front.
    """

    rows: list[dict[str, Any]]
    pareto: list[dict[str, Any]]
    runs: list[dict[str, Any]] = field(default_factory=list)
    dense: dict[str, Any] | None = None
    chance: float | None = None
    floor: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data: ``rows``, ``pareto`` (the keys of the rows on the
        front, fewest parameters first), ``dense``, ``chance``, ``floor`` and ``runs``.
        :func:`prunekit.report.write_search_report` takes it as well as the result."""
        return {"rows": self.rows, "pareto": [r["key"] for r in self.pareto], "dense": self.dense,
                "chance": self.chance, "floor": self.floor, "runs": self.runs}

    def summary(self) -> str:
        """An aligned table: one column per searched option, then mean ± std accuracy, the
        difference to dense, non-zero parameters and the Pareto mark (``*`` on the front,
        ``chance`` for settings not clearly above chance); the dense row first and a
        footer explaining the marks."""
        options = sorted({k for r in self.rows for k in r["setting"]})
        if "criterion" in options:  # the dense row's label goes there
            options.remove("criterion")
            options.insert(0, "criterion")
        front = {r["key"] for r in self.pareto}
        dense_acc = self.dense["accuracy_mean"] if self.dense else None
        head = [*options, "accuracy", "Δ dense", "nonzero", "pareto"]
        table: list[list[str]] = []
        for r in ([self.dense] if self.dense else []) + self.rows:
            is_dense = r is self.dense
            if is_dense:
                cells = ["dense" if o == "criterion" else "-" for o in options]
                if "criterion" not in options and cells:
                    cells[0] = "dense"
                mark, delta = "", "-"
            else:
                cells = [str(r["setting"].get(o, "-")) for o in options]
                above = r.get("above_chance", self.floor is None or r["accuracy_mean"] > self.floor)
                mark = "*" if r["key"] in front else ("" if above else "chance")
                delta = "-" if dense_acc is None else f"{r['accuracy_mean'] - dense_acc:+.4f}"
            table.append([*cells, f"{r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f}", delta,
                          f"{r['nonzero_params']:,}", mark])
        widths = [max(len(row[i]) for row in [head, *table]) for i in range(len(head))]
        right = set(range(len(options), len(head) - 1))  # numbers align right

        def line(cells: list[str]) -> str:
            return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        lines = [line(head), *(line(row) for row in table)]
        lines.append("")
        lines.append("* Pareto front: no other setting beats it on both accuracy (higher) and nonzero parameters "
                     "(fewer)." + ("" if self.pareto else " It is empty: no setting is clearly above chance."))
        if self.floor is not None and self.chance is not None:
            lines.append(f"  Only settings clearly above chance can be on it: mean accuracy > {self.floor:.4f} "
                         f"(chance {self.chance:.4f}, always answering the most frequent class, "
                         f"+ {self.floor - self.chance:.2f}); 'chance' marks those that are not.")
        if self.dense is not None:
            lines.append("  dense: the unpruned model, trained and evaluated the same way; the reference of "
                         "'Δ dense', not a candidate.")
        return "\n".join(lines)


def _key(cfg: dict[str, Any]) -> str:
    return ", ".join(f"{k}={cfg[k]}" for k in sorted(cfg))


def settings(grid: dict[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``grid`` (baseline criteria added), in a stable order."""
    if not isinstance(grid, dict) or not grid:
        raise PruneError("grid must be a non-empty dict of option -> list of values, e.g. {'sparsity': [0.5, 0.9]}")
    grid = {k: list(v) if not isinstance(v, (str, bytes)) else [v] for k, v in grid.items()}
    for k in (k for k, v in grid.items() if not v):
        raise PruneError(f"grid option {k!r} has no values")
    if "sparsity" not in grid and "threshold" not in grid:
        raise PruneError("grid needs 'sparsity' (or 'threshold') values")
    taken = {k: v for k, v in _SET_BY_SEARCH.items() if k in grid}
    if taken:
        raise PruneError(f"grid options {sorted(taken)} are set by search itself, not per setting: "
                         + "; ".join(f"{k} by {v}" for k, v in taken.items()))
    crits = grid.get("criterion", ["magnitude"])
    grid["criterion"] = list(dict.fromkeys(list(crits) + [b for b in BASELINES if b not in crits]))
    names = sorted(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def check_settings(cfgs: list[dict[str, Any]]) -> None:
    """Refuse, before any run, a setting ``pk.prune`` or the schedules would refuse."""
    from .pruner import Pruner

    for cfg in cfgs:
        opts = {k: v for k, v in cfg.items() if k not in ("schedule", "progress")}
        if cfg.get("schedule", "oneshot") not in ("oneshot", "gradual", "iterative"):
            raise PruneError(f"schedule {cfg['schedule']!r} is not one of ['gradual', 'iterative', 'oneshot']")
        known = set(inspect.signature(Pruner).parameters)
        if set(opts) - known:
            raise PruneTypeError(f"grid options {sorted(set(opts) - known)} are not pk.prune options; "
                                 f"the grid takes {sorted(known - set(_SET_BY_SEARCH) | {'schedule'})}")
        Pruner(**opts).resolve()


def kfold(n: int, folds: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``folds`` (train, held-out) index pairs covering ``range(n)``, shuffled by ``seed``."""
    integer("folds", folds, minimum=2, maximum=n)
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

    if task["key"] == DENSE:  # the same training and fine-tuning, no pruning
        if task["finetune_epochs"]:
            fit(model, train, epochs=task["finetune_epochs"], lr=task["lr"], batch_size=_BATCH_SIZE, seed=seed,
                progress=False)
    else:
        opts = dict(cfg)
        sp = opts.pop("sparsity", None)
        schedule = opts.pop("schedule", "oneshot")
        with warnings.catch_warnings():  # search() warned once about a degenerate schedule
            warnings.simplefilter("ignore", ScheduleWarning)
            prune_on_schedule(model, train, sp, schedule=schedule, epochs=task["finetune_epochs"], lr=task["lr"],
                              batch_size=_BATCH_SIZE, seed=seed, calib=[(x, y)],
                              loss_fn=torch.nn.functional.cross_entropy, example_inputs=x[:8], **opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        m = measure(model, x[:1], latency=False)
    return {"key": task["key"], "fold": task["fold"], "seed": seed, "setting": cfg,
            "accuracy": evaluate(model, val), "nonzero_params": m.nonzero_params, "flops_effective": m.flops_effective}


def chance_level(labels: torch.Tensor) -> float:
    """Accuracy of always answering the most frequent label: 1/num_classes for balanced
    classes, more for imbalanced ones."""
    if labels.numel() == 0:
        raise PruneError("no labels to compute the chance level from")
    _, counts = torch.unique(labels, return_counts=True)
    return float(counts.max()) / labels.numel()


def pareto(rows: list[dict[str, Any]], better: str = "accuracy_mean", smaller: str = "nonzero_params",
           floor: float | None = None) -> list[dict[str, Any]]:
    """Rows no other row beats on both ``better`` (higher) and ``smaller`` (lower).

    With ``floor``, rows whose ``better`` is at or below it (e.g. chance-level accuracy)
    are left out first: they are never on the front, and they dominate no other row.
    """
    if floor is not None:
        rows = [r for r in rows if r[better] > floor]
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
    model_fn: Callable[[int], nn.Module], data: TensorDataset, grid: dict[str, Iterable[Any]], *, folds: int = 3,
    seeds: Iterable[int] = (0,), train_epochs: int = 0, finetune_epochs: int = 1, lr: float = 1e-3,
    results: str | os.PathLike | None = None, workers: int = 1, chance_margin: float = CHANCE_MARGIN,
    progress: Callable[[str, int], Any] | None = None,
) -> SearchResult:
    """Cross-validated grid search over pruning settings; see the module docstring.

    Args:
        model_fn: ``model_fn(seed)`` builds a fresh model (module-level with ``workers > 1``).
        data: a ``TensorDataset(inputs, labels)``, split into ``folds``.
        grid: option -> values, e.g. ``{"sparsity": [0.5, 0.9], "criterion": ["taylor"]}``.
        folds: cross-validation folds.
        seeds: one cross-validation per seed.
        train_epochs: dense training epochs on each fold before pruning.
        finetune_epochs: fine-tuning (or prune-while-training) epochs after.
        lr: learning rate of both.
        results: JSON-lines file every finished run is appended to (and resumed from: a
            run is reused only for this search's settings, seeds and folds, made with the
            same model, data, ``folds``, epochs and ``lr``; the others are named in a warning).
        workers: parallel processes.
        chance_margin: how far above chance (the most frequent class's share of the
            labels) a setting's mean accuracy must be to be on the Pareto front, in [0, 1).
        progress: called once with a name and the number of runs left to do; returns an
            object whose ``advance(1, info)`` is called after every finished run (``info``
            names it), e.g. :class:`prunekit.progress.StageProgress`.

    Returns:
        The :class:`SearchResult`: rows, Pareto front, runs, and the dense reference.
    """
    if not isinstance(data, TensorDataset) or len(data.tensors) < 2:
        raise PruneError("data must be a TensorDataset(inputs, labels), e.g. prunekit.datasets.load_digits()")
    integer("workers", workers, minimum=1)
    fraction("chance_margin", chance_margin, hint="e.g. 0.05")
    cfgs = settings(grid)
    check_settings(cfgs)
    seeds = list(seeds)
    _warn_degenerate(cfgs, len(data), folds, finetune_epochs)
    # a run is reused only if made with this call's folds, data size, epochs and lr
    context = {"folds": folds, "samples": len(data), "train_epochs": train_epochs,
               "finetune_epochs": finetune_epochs, "lr": lr, "model": model_name(model_fn), "data": data_digest(data)}
    splits = {seed: kfold(len(data), folds, seed) for seed in seeds}
    wanted = {(DENSE if c is None else _key(c), f, sd) for sd in seeds for c in [None, *cfgs] for f in range(folds)}
    path = Path(results) if results is not None else None
    done = reusable_runs(path, context, wanted) if path is not None and path.exists() else {}
    tasks = []
    for seed in seeds:
        for cfg in [None, *cfgs]:  # None: the dense reference
            key = DENSE if cfg is None else _key(cfg)
            for f, (tr, va) in enumerate(splits[seed]):
                if (key, f, seed) not in done:
                    tasks.append({"cfg": cfg, "key": key, "seed": seed, "fold": f, "data": data, "train_idx": tr,
                                  "val_idx": va, "model_fn": model_fn, "train_epochs": train_epochs,
                                  "finetune_epochs": finetune_epochs, "lr": lr})

    if path is not None:
        end_cut_line(path)

    def record(r: dict[str, Any]) -> None:
        r = {**r, **context}
        done[(r["key"], r["fold"], r["seed"])] = r
        if path is not None:
            append_run(path, r)

    bar = None
    if progress is not None:
        resumed = f", {len(done)} done before" if done else ""
        bar = progress(f"search: {len(tasks)} runs ({len(cfgs) + 1} settings × {folds} folds × {len(seeds)} "
                       f"seed{'s' * (len(seeds) != 1)}{resumed})", len(tasks))

    def finished(r: dict[str, Any]) -> None:
        record(r)
        if bar is not None:
            bar.advance(1, f"last: {r['key']} fold {r['fold']} seed {r['seed']}")

    if workers == 1:
        for t in tasks:
            finished(_one(t))
    else:
        # spawn, not fork: a forked child of a process running torch threads can deadlock
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for r in pool.map(_one, tasks):
                finished(r)
    runs = list(done.values())  # this search's runs only: _resume left the others out
    chance = chance_level(data.tensors[1])
    floor = chance + float(chance_margin)
    dense = _aggregate(DENSE, {}, [r for r in runs if r["key"] == DENSE])
    rows = []
    for cfg in cfgs:
        key = _key(cfg)
        row = _aggregate(key, cfg, [r for r in runs if r["key"] == key])
        assert row is not None
        row["baseline"] = cfg.get("criterion") in BASELINES
        row["above_chance"] = row["accuracy_mean"] > floor
        row["delta_dense"] = None if dense is None else row["accuracy_mean"] - dense["accuracy_mean"]
        rows.append(row)
    rows.sort(key=lambda r: (-r["accuracy_mean"], r["nonzero_params"]))
    return SearchResult(rows, pareto(rows, floor=floor), runs, dense=dense, chance=chance, floor=floor)


def _aggregate(key: str, setting: dict[str, Any], mine: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean ± std accuracy and mean sizes of one setting's runs (None without runs)."""
    if not mine:
        return None
    accs = [r["accuracy"] for r in mine]
    return {"key": key, "setting": setting, "runs": len(mine), "accuracy_mean": statistics.fmean(accs),
            "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,  # sample std, as compare's
            "nonzero_params": round(statistics.fmean(r["nonzero_params"] for r in mine)),
            "flops_effective": round(statistics.fmean(r["flops_effective"] for r in mine))}


def _warn_degenerate(cfgs: list[dict[str, Any]], n: int, folds: int, finetune_epochs: int) -> None:
    """Warn once per "gradual"/"iterative" schedule of the settings that prunes only once in
    ``finetune_epochs`` on the smallest fold's training part (and refuse them without
    fine-tuning epochs: they prune while fine-tuning)."""
    from .callbacks import degenerate_training

    schedules = list(dict.fromkeys(c.get("schedule", "oneshot") for c in cfgs))
    while_training = [v for v in schedules if v in ("gradual", "iterative")]
    if while_training:
        integer("finetune_epochs", finetune_epochs, minimum=1, hint=f"schedule {while_training[0]!r} prunes while "
                "fine-tuning; use the oneshot schedule to prune without fine-tuning")
    positive = [c["sparsity"] for c in cfgs if isinstance(c.get("sparsity"), (int, float)) and 0 < c["sparsity"] < 1]
    if not while_training or not positive or isinstance(folds, bool) or not isinstance(folds, int) \
            or not 2 <= folds <= n:
        return  # nothing prunes while training, or kfold() reports the problem
    per_epoch = math.ceil((n - math.ceil(n / folds)) / _BATCH_SIZE)
    for name in while_training:
        message = degenerate_training(name, max(positive), finetune_epochs, per_epoch, "finetune_epochs")
        if message is not None:
            warnings.warn(message, ScheduleWarning, stacklevel=3)


__all__ = ["CHANCE_MARGIN", "DENSE", "SearchResult", "ZooModel", "chance_level", "check_settings", "kfold", "pareto",
           "search", "settings"]
