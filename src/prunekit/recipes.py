"""Recipes: a pruning run written down as YAML, validated, and executed the same way twice.

A recipe names a model, the data and a list of stages::

    name: mnistnet-channels
    seed: 0
    model: {zoo: mnistnet, pretrained: true}
    data: {name: mnist, train_samples: 10000, test_samples: 2000}
    stages:
      - prune: {sparsity: 0.5, granularity: channel, allocation: uniform}
      - finetune: {epochs: 1, lr: 0.001}
      - compact: {}
      - export: {format: packed, quantize: int8}

Stages: ``prune`` (every :class:`prunekit.Pruner` option plus ``calibration_batches``),
``regularize`` (train with a regularizer added to the loss), ``finetune`` (masks kept),
``compact`` and ``export``. Unknown keys and bad values are errors that name the field and
the line. ``load_recipe`` / ``Recipe.from_yaml`` read one, ``run_recipe`` executes it and
writes an output folder (the model, ``metrics.json``, the recipe as run). A recipe with
``task: llm`` at the top is a language-model recipe: see :mod:`prunekit.llm.recipe`.

This module runs a recipe (:func:`run_recipe`); the schema a recipe is validated against
(:class:`Recipe`, :class:`Stage`, :func:`load_recipe`, :func:`builtin`) lives in
:mod:`prunekit.recipe_schema` and is re-exported here.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import PruneError
from .progress import StageProgress
from .recipe_io import (  # noqa: F401  (defined in recipe_io, shared with llm.recipe; public here too)
    explain_validation_error, write_json_atomic, write_text_atomic, yaml_line,
)
from .recipe_schema import (  # noqa: F401  (defined in recipe_schema; public here too)
    CompactStage, DataSpec, ExportStage, ModelSpec, PruneStage, Recipe, RegularizeStage, Stage, TrainStage, builtin,
    load_recipe,
)


def _resolve(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise PruneError(f"cannot import {spec!r}: {e}") from e


def stage_plan(stage: Stage, n_train: int, batch_size: int) -> tuple[str, int]:
    """What a stage's progress bar shows: its label ("prune 80% gradual, 2 epochs",
    "finetune 1 epoch") and its number of steps (optimizer steps; 1 for a stage without
    training)."""
    o, kind = stage.options, stage.kind
    epochs = getattr(o, "epochs", 0) or 0
    per_epoch = -(-n_train // (getattr(o, "batch_size", None) or batch_size))
    parts = [kind]
    if kind == "prune":
        parts += [f"{o.sparsity:.0%}" if o.sparsity is not None else
                  f"threshold {o.threshold}" if o.threshold is not None else "",
                  "" if o.granularity == "unstructured" else o.granularity,
                  "" if o.schedule == "oneshot" else o.schedule]
    elif kind == "export":
        parts += [o.format, o.quantize or ""]
    label = " ".join(p for p in parts if p)
    if epochs:
        label += f"{',' if kind == 'prune' else ''} {epochs} epoch{'s' if epochs != 1 else ''}"
    return label, max(1, epochs * per_epoch)


def _report(out: Path, recipe: Recipe, before: Any, after: Any, last_prune: list[Any], acc0: float, acc1: float,
            files: dict[str, int]) -> str | None:
    """``out/report.html`` (+ ``report.md``) when matplotlib is there; the file name or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    from .report import write_report

    write_report(out / "report.html", before=before, after=after, result=last_prune[0] if last_prune else None,
                 before_acc=acc0, after_acc=acc1, title=f"prunekit run {recipe.name}", files=files)
    return "report.html"


def run_recipe(recipe: Recipe, out: str | os.PathLike, *, progress: bool = False,
               command: str | None = None) -> dict[str, Any]:
    """Execute ``recipe``; write the model, ``metrics.json``, ``recipe.yaml`` and (with
    matplotlib) ``report.html`` + ``report.md`` into ``out``.

    The report is the complete one ``prunekit run`` writes (the CLI calls this function):
    before/after, accuracy per stage, trade-off against size and compute, files, a snippet
    that loads the saved model, sparsity per layer, energy, and the settings and machine
    (:func:`prunekit.report.complete_run_report`). ``progress``: a bar per stage on stderr,
    naming the stage, with an ETA (only on a terminal). ``command``: the command line
    shown with the settings (``prunekit run`` passes its own).

    Returns the metrics: accuracy, parameters, non-zero and prunable counts, FLOPs and file
    bytes before and after, and one entry per stage. Everything but latency (not measured
    here) is reproducible: the same recipe and seed give the same numbers. A language-model
    recipe (``task: llm``) runs :func:`prunekit.llm.recipe.run_llm_recipe` instead.
    """
    if getattr(recipe, "task", None) == "llm":
        from .llm.recipe import run_llm_recipe

        return run_llm_recipe(recipe, out, progress=progress)
    from . import api, datasets, zoo
    from .export import save
    from .metrics import measure
    from .regularizers import make as make_reg
    from .callbacks import prune_on_schedule
    from .train import evaluate, fit, set_seed

    out = Path(out)
    set_seed(recipe.seed)
    m = recipe.model
    model = zoo.create(m.zoo, pretrained=m.pretrained, **m.kwargs) if m.zoo else _resolve(m.factory)(**m.kwargs)
    d = recipe.data
    if d.name is not None:
        loader = datasets.load_mnist if d.name == "mnist" else datasets.load_digits
        train, test = loader("train", flatten=d.flatten), loader("test", flatten=d.flatten)
    else:
        train, test = _resolve(d.factory)()
    if d.train_samples:
        train = datasets.subset(train, min(d.train_samples, len(train)), seed=recipe.seed)
    if d.test_samples:
        test = datasets.subset(test, min(d.test_samples, len(test)), seed=recipe.seed)
    x = test.tensors[0][:8]
    loss = torch.nn.functional.cross_entropy
    # What the saved model needs to be evaluated and measured without extra flags.
    describe: dict[str, Any] = {"recipe": recipe.name, "input_shape": [1, *x.shape[1:]], "input_dtype": str(x.dtype)}
    if d.name is not None:
        describe["data"] = {"name": d.name, "flatten": d.flatten}

    measured: list[Any] = []
    last_prune: list[Any] = []
    before_index = 0

    def snapshot() -> dict[str, Any]:
        with warnings.catch_warnings():  # the speed note goes into the metrics instead
            warnings.simplefilter("ignore", UserWarning)
            met = measure(model, x, latency=False)
        measured.append(met)
        return {"speed_note": met.speed_note, "accuracy": evaluate(model, test), "params": met.params, "nonzero_params": met.nonzero_params,
                "sparsity": met.sparsity, "flops_dense": met.flops_dense, "flops_effective": met.flops_effective,
                "size_bytes": met.size_bytes, "size_bytes_compressed": met.size_bytes_compressed}

    metrics: dict[str, Any] = {"recipe": recipe.name, "seed": recipe.seed, "before": snapshot(), "stages": []}
    out.mkdir(parents=True, exist_ok=True)

    def run_stage(i: int, stage: Stage, bar: Any) -> None:
        nonlocal model, before_index
        o, kind = stage.options, stage.kind
        info: dict[str, Any] = {"stage": kind}
        if kind == "prune":
            if "before_pruning" not in metrics:  # the dense model the report compares against
                metrics["before_pruning"] = snapshot()
                before_index = len(measured) - 1
            tx, ty = train.tensors
            calib = [(tx[j : j + d.batch_size], ty[j : j + d.batch_size])
                     for j in range(0, min(len(ty), o.calibration_batches * d.batch_size), d.batch_size)]
            opts = o.model_dump(exclude={"calibration_batches", "schedule", "epochs", "lr"})
            oneshot = o.schedule == "oneshot"  # then the fine-tuning after it is run here, with its bar
            res = prune_on_schedule(model, train, opts.pop("sparsity"), schedule=o.schedule,
                                    epochs=0 if oneshot else o.epochs, lr=o.lr, batch_size=d.batch_size,
                                    seed=recipe.seed + i, calib=calib, loss_fn=loss, example_inputs=x, **opts)
            if oneshot and o.epochs:
                fit(model, train, epochs=o.epochs, lr=o.lr, batch_size=d.batch_size, seed=recipe.seed + i,
                    progress=False, callbacks=[bar])
            info["sparsity"] = res.weight_sparsity  # zeros over the pruned weights, at every granularity
            if res.groups is not None:
                info["units_removed"] = res.sparsity
            last_prune[:] = [res]
        elif kind in ("finetune", "regularize"):
            lf = make_reg(o.kind, strength=o.strength).wrap(loss, model) if kind == "regularize" else loss
            hist = fit(model, train, epochs=o.epochs, lr=o.lr, batch_size=o.batch_size or d.batch_size,
                       loss_fn=lf, seed=recipe.seed + i, progress=False, callbacks=[bar])
            info["loss"] = hist["loss"][-1] if hist.get("loss") else None
        elif kind == "compact":
            model = api.compact(model, x)
        elif kind == "export":
            save(model, out / "model", format=o.format, quantize=o.quantize, metadata=describe)
        info["accuracy"] = evaluate(model, test)
        if kind == "export" and o.quantize:  # the file holds the quantized values: that is the model's accuracy
            from .deploy.quantize import quantized

            info["accuracy_before_quantization"] = info["accuracy"]
            info["accuracy"] = evaluate(quantized(model, o.quantize), test)
        metrics["stages"].append(info)

    plan = [stage_plan(s, len(train), d.batch_size) for s in recipe.stages]
    with StageProgress(progress, title=f"run {recipe.name}", total=sum(n for _, n in plan)) as bars:
        for i, stage in enumerate(recipe.stages):
            with bars.stage(f"stage {i + 1}/{len(plan)} {plan[i][0]}", plan[i][1]) as bar:
                run_stage(i, stage, bar)
    if not any(s.kind == "export" for s in recipe.stages):
        save(model, out / "model", metadata=describe)
    metrics["after"] = snapshot()
    last = metrics["stages"][-1]
    if "accuracy_before_quantization" in last:  # export is the last stage (the schema says so)
        metrics["after"]["accuracy_before_quantization"] = last["accuracy_before_quantization"]
        metrics["after"]["accuracy"] = last["accuracy"]
    # The sizes of the files as written (a packed or quantized export is smaller than the
    # model as safetensors, which is what "size_bytes" measures).
    metrics["files"] = {f"model/{f.name}": f.stat().st_size for f in sorted((out / "model").iterdir()) if f.is_file()}
    metrics["report"] = _report(out, recipe, measured[before_index], measured[-1], last_prune,
                                metrics.get("before_pruning", metrics["before"])["accuracy"], metrics["after"]["accuracy"],
                                metrics["files"])
    write_json_atomic(out / "metrics.json", metrics)
    write_text_atomic(out / "recipe.yaml", recipe.to_yaml())
    if metrics["report"]:
        from .report import complete_run_report

        # stages, settings, machine and a runnable snippet, from what was just written
        complete_run_report(out, command=command)
    return metrics


__all__ = ["Recipe", "Stage", "builtin", "explain_validation_error", "load_recipe", "run_recipe", "write_json_atomic",
           "write_text_atomic", "yaml_line"]
