"""The report of a recipe run, completed from what the run wrote into its folder.

:func:`prunekit.recipes.run_recipe` writes ``report.html`` (before/after, trade-off against
cost, files, sparsity per layer, energy) before it writes ``metrics.json`` and
``recipe.yaml``; :func:`complete_run_report` then adds what those hold: the accuracy after
every stage, the recipe's settings beside the machine, and a snippet that loads and
evaluates the saved model, runnable as written from the run folder. ``run_recipe`` calls
it at the end of every run (so ``prunekit run`` and Python get the same report); call it
again to refresh the machine section.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import PruneError, PruneTypeError
from . import sections as S
from .checks import check_stages
from .environment import environment
from .html import add_sections

__all__ = ["complete_run_report", "usage_snippet"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PruneError(f"cannot read {str(path)!r}: {e}") from e
    except ValueError as e:
        raise PruneError(f"{str(path)!r} is not valid JSON: {e}") from e


def _recipe(folder: Path) -> dict[str, Any]:
    path = folder / "recipe.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PruneError(f"{str(path)!r} is not valid YAML: {e}") from e
    return data if isinstance(data, dict) else {}


def _settings(recipe: Mapping[str, Any], command: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if command:
        out["command"] = command
    for key in ("name", "seed", "model", "data"):
        if key in recipe:
            out["recipe" if key == "name" else key] = recipe[key]
    for i, stage in enumerate(recipe.get("stages") or [], 1):
        if isinstance(stage, Mapping) and len(stage) == 1:
            kind, opts = next(iter(stage.items()))
            out[f"stage {i}"] = f"{kind}: {S.value_text(opts)}" if isinstance(opts, Mapping) and opts else str(kind)
    return out


def usage_snippet(spec: Mapping[str, Any], recipe: Mapping[str, Any], accuracy: float | None,
                  model_dir: str = "model") -> str:
    """Python that loads the saved model from the run folder, runs it on an input of the
    recorded shape and, when the data set is known, evaluates it as the run did.

    Args:
        spec: the saved folder's ``spec.json``.
        recipe: the recipe as run (``recipe.yaml``), for a model or data factory and the
            test subset.
        accuracy: the accuracy the run measured, quoted in a comment.
        model_dir: the saved folder, relative to where the snippet runs.
    """
    def mapping(v: Any) -> Mapping[str, Any]:
        return v if isinstance(v, Mapping) else {}

    meta, data, model = mapping(spec.get("metadata")), mapping(recipe.get("data")), mapping(recipe.get("model"))
    saved_data = mapping(meta.get("data"))
    name = saved_data.get("name") or data.get("name")
    factory = None if name else data.get("factory")
    subset = data.get("test_samples") if isinstance(data.get("test_samples"), int) and data["test_samples"] > 0 else None
    evaluates = name in ("digits", "mnist") or bool(factory)
    imports = ["import torch", "", "import prunekit as pk"]
    if evaluates:
        imports.append("from prunekit import datasets, train" if name or subset else "from prunekit import train")
    body = []
    if "zoo" not in spec and model.get("factory"):
        module, _, fn = str(model["factory"]).partition(":")
        imports.append(f"from {module} import {fn} as make_model")
        body.append(f"model = pk.load({model_dir!r}, model=make_model(**{dict(model.get('kwargs') or {})!r}))")
    else:
        body.append(f"model = pk.load({model_dir!r})  # the saved folder beside this report")
    shape = meta.get("input_shape")
    if isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape):
        dtype = str(meta.get("input_dtype") or "torch.float32")
        args = ", ".join(map(str, shape)) + ("" if dtype == "torch.float32" else f", dtype={dtype}")
        body += [f"x = torch.zeros({args})  # the input shape recorded in {model_dir}/spec.json",
                 "with torch.no_grad():",
                 '    print("output shape:", tuple(model(x).shape))']
    if name in ("digits", "mnist"):
        flatten = bool(saved_data.get("flatten", data.get("flatten", False)))
        body.append(f'test = datasets.{"load_digits" if name == "digits" else "load_mnist"}("test", flatten={flatten})')
    elif factory:
        module, _, fn = str(factory).partition(":")
        imports.append(f"from {module} import {fn} as make_data")
        body.append("_, test = make_data()")
    if evaluates:
        if subset:
            body.append(f"test = datasets.subset(test, min({subset}, len(test)), seed={int(recipe.get('seed') or 0)})"
                        "  # the run's test subset")
        ran = f" (the run measured {accuracy:.2%} before saving)" if isinstance(accuracy, float) else ""
        body.append(f'print(f"test accuracy: {{train.evaluate(model, test):.2%}}{ran}")')
    return "\n".join(imports + [""] + body) + "\n"


def complete_run_report(folder: str | os.PathLike, *, command: str | None = None) -> Path:
    """Add the stage, settings and usage sections to a recipe run's ``report.html`` and
    ``report.md``, from the ``metrics.json``, ``recipe.yaml`` and ``model/spec.json`` in
    ``folder``; the machine section is collected now. Both files are rewritten atomically.

    Args:
        folder: a folder :func:`prunekit.recipes.run_recipe` wrote (with matplotlib
            installed, so that it holds ``report.html``).
        command: the command line that ran the recipe, shown with the settings.

    Returns:
        The path of ``report.html``.

    Example:
        >>> metrics = run_recipe(load_recipe("digits-quick"), "out/run")  # calls it already
        >>> complete_run_report("out/run", command="rerun on this machine")
    """
    try:
        root = Path(os.fspath(folder))
    except TypeError as e:
        raise PruneTypeError(f"folder must be a str or os.PathLike, got {type(folder).__name__}: {folder!r}") from e
    metrics = _read_json(root / "metrics.json")
    if not isinstance(metrics, dict) or not isinstance(metrics.get("stages"), list) or not all(
            isinstance(metrics.get(k), dict) and "accuracy" in metrics[k] for k in ("before", "after")):
        raise PruneError(f"{str(root / 'metrics.json')!r} is not what prunekit run writes "
                         "(it needs 'stages', and 'before' and 'after' with an accuracy)")
    report = root / str(metrics.get("report") or "report.html")
    if not report.is_file():
        raise PruneError(f"{str(report)!r} does not exist: the run wrote no report (is matplotlib installed?)")
    recipe = _recipe(root)
    keep = ("stage", "accuracy", "sparsity", "loss")
    model = recipe.get("model") if isinstance(recipe.get("model"), Mapping) else {}
    start = "start" if "pretrained" not in model else f"start ({'pretrained' if model['pretrained'] else 'untrained'})"
    rows = [{"stage": start, "accuracy": metrics["before"]["accuracy"]}]
    rows += [{k: s[k] for k in keep if k in s} for s in metrics["stages"] if isinstance(s, Mapping)]
    baseline = metrics.get("before_pruning", metrics["before"])["accuracy"]
    new = [S.stages(check_stages(rows), baseline)]
    spec_path = root / "model" / "spec.json"
    if spec_path.is_file():
        spec = _read_json(spec_path)
        code = usage_snippet(spec if isinstance(spec, dict) else {}, recipe, metrics["after"].get("accuracy"))
        new.append(S.usage(code, "prunekit inspect model\nprunekit evaluate model\nprunekit measure model",
                           "Run from this report's folder (model/ is beside it); the commands need no extra flags."))
    new.append(S.settings(_settings(recipe, command), environment(),
                          "Recipe runs do not time latency; prunekit measure model does, on this machine."))
    return add_sections(report, new)
