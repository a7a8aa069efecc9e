"""Running an llm recipe: load the model and texts, run the stages, evaluate, save.

:func:`execute` does the work in memory and returns the metrics; :func:`run_llm_recipe`
also writes ``out/model`` (:func:`prunekit.llm.output.save_model`), ``out/metrics.json``
and ``out/recipe.yaml``. :func:`check_supported` fails fast, before any model is loaded,
on a stage this installation cannot run.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PruneError
from ..recipe_io import write_json_atomic
from .output import save_model
from .texts import evaluation_windows, load_texts

if TYPE_CHECKING:
    from .recipe import LLMRecipe

__all__ = ["check_supported", "execute", "linear_stats", "parameter_count", "run_llm_recipe"]


def check_supported(recipe: LLMRecipe) -> None:
    """Fail fast, before any model is loaded, on stages this installation cannot run."""
    from .oneshot import prune_llm

    accepted = inspect.signature(prune_llm).parameters
    for i, stage in enumerate(recipe.stages):
        if stage.kind == "oneshot":
            for key, value in stage.options.kwargs().items():
                if key not in accepted:
                    raise PruneError(
                        f"stages.{i}.oneshot.{key}: {value!r} is not supported by this installation's "
                        f"prunekit.llm.prune_llm (it accepts {', '.join(k for k in accepted if k not in ('model', 'calibration'))})"
                    )
        elif stage.kind == "structured":
            _structured()


def _structured() -> Callable[..., Any]:
    try:
        from .structured import prune_structured
    except ImportError as e:
        raise PruneError(
            f"structured pruning (heads/neurons) needs prunekit.llm.structured, which cannot be imported here ({e})"
        ) from None
    return prune_structured


def _shrink_or_distill(kind: str, o: Any, model: Any, teacher: Any, calib: Any) -> tuple[Any, dict[str, Any]]:
    """Run a ``shrink`` or ``distill`` stage; returns ``(model, stage record)``."""
    if kind == "shrink":
        from .shrink import shrink

        multi = len(o.modes) > 1 and calib.shape[0] > o.heldout
        train, heldout = (calib[:-o.heldout], calib[-o.heldout:]) if multi else (calib, None)
        budget = {"params": o.params} if o.params is not None else {"macs_budget": o.macs}
        small, rep = shrink(model, train, modes=tuple(o.modes) if multi else tuple(o.modes[:1]),
                            importance=o.importance, depth_criterion=o.depth_criterion, heldout=heldout,
                            distill_tokens=o.search_tokens,
                            search_tokens=o.search_tokens, seqlen=o.seqlen, lr=o.lr, batch_size=o.batch_size, **budget)
        info = _plain(rep.as_dict())
        info["summary"] = f"{rep.chosen['shape']['mode']} {rep.chosen['params']:,} parameters"
        return small, info
    from ..distillation import distill

    hist = distill(model, teacher, calib, epochs=max(1, math.ceil(o.tokens / calib.numel())), lr=o.lr,
                   batch_size=o.batch_size, temperature=o.temperature, seed=o.seed, max_tokens=o.tokens,
                   progress=False)
    model.eval()
    return model, {"settings": o.model_dump(), "tokens": int(hist.get("tokens", 0)), "summary": f"{hist.get('tokens', 0):,} tokens"}


def _plain(obj: Any) -> Any:
    """JSON-ready copy: dataclasses to dicts, tuples to lists, tensors to numbers."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if hasattr(obj, "tolist"):
        return _plain(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def linear_stats(model: Any) -> dict[str, int]:
    """Weights and zeros of the linear layers inside the transformer blocks (what is pruned:
    ``nn.Linear`` and GPT-2's ``Conv1D``)."""
    import torch

    from .blocks import transformer_blocks
    from .linears import is_linear

    total = zeros = 0
    with torch.no_grad():
        for layer in transformer_blocks(model):
            for m in layer.modules():
                if is_linear(m):
                    total += m.weight.numel()
                    zeros += m.weight.numel() - int(torch.count_nonzero(m.weight))
    return {"weights": total, "zeros": zeros}


def parameter_count(model: Any) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def execute(recipe: LLMRecipe, *, log: Callable[[str], None] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Load the model, run the stages, commit the masks and evaluate.

    Returns:
        ``(model, tokenizer, metrics)``; nothing is written to disk except the model cache of
        :func:`prunekit.llm.models.load_causal_lm`.
    """
    import torch

    from ..api import commit, masks
    from .data import calibration_windows
    from .models import load_causal_lm
    from .oneshot import perplexity, prune_llm

    say = log or (lambda s: None)
    check_supported(recipe)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    model, tok = load_causal_lm(recipe.model, log=say)
    timings["load_s"] = time.perf_counter() - t0

    cal, ev = recipe.calibration, recipe.evaluation
    texts = ev.texts if ev is not None else []
    t0 = time.perf_counter()
    need_calib = recipe.needs_calibration
    calib_stream, eval_streams, kjv, text_info = load_texts(tok, cal.text if need_calib else None, texts)
    calib = calibration_windows(calib_stream, cal.windows, cal.seqlen, cal.seed) if need_calib else None
    windows = evaluation_windows(eval_streams, ev.windows, recipe.eval_seqlen, ev.seed) if ev is not None else {}
    timings["data_s"] = time.perf_counter() - t0
    if calib is not None:
        say(f"calibration: {cal.windows} windows of {cal.seqlen} tokens from {cal.text}")

    metrics: dict[str, Any] = {
        "task": "llm",
        "recipe": recipe.name,
        "model": recipe.model,
        "architecture": type(model).__name__,
        "calibration": ({"text": cal.text, "windows": cal.windows, "seqlen": cal.seqlen, "seed": cal.seed,
                         "tokens": int(calib.numel())} if calib is not None else None),
        "evaluation": ({"text": ev.text, "windows": ev.windows, "seqlen": recipe.eval_seqlen, "seed": ev.seed,
                        "tokens": int(windows[texts[0]].numel())} if ev is not None else None),
        "evaluation_texts": text_info if ev is not None else None,
    }
    if kjv is not None:
        metrics["kjv"] = kjv
    params_before = parameter_count(model)
    lin_before = linear_stats(model)

    by_text: dict[str, dict[str, float | None]] = {t: {"dense": None, "pruned": None} for t in texts}

    def evaluate(which: str) -> None:
        t0 = time.perf_counter()
        for text in texts:
            by_text[text][which] = perplexity(model, windows[text], seqlen=recipe.eval_seqlen)
            say(f"{which} perplexity {by_text[text][which]:.3f}" + (f" on {text}" if len(texts) > 1 else ""))
        timings[f"eval_{which}_s"] = time.perf_counter() - t0

    if texts:
        evaluate("dense")

    stages: list[dict[str, Any]] = []
    # the dense model teaches a distill stage
    teacher = copy.deepcopy(model) if any(s.kind == "distill" for s in recipe.stages) else None
    for i, stage in enumerate(recipe.stages):
        o = stage.options
        t0 = time.perf_counter()
        if stage.kind in ("shrink", "distill"):
            if masks(model) and stage.kind == "shrink":  # width surgery slices plain weights
                commit(model)
            model, info = _shrink_or_distill(stage.kind, o, model, teacher, calib)
            say(f"{stage.kind}: {info['summary']} in {time.perf_counter() - t0:.1f} s")
        elif stage.kind == "structured":
            if masks(model):  # structured removal slices plain weights: bake earlier masks in first
                commit(model)
            prune_structured = _structured()
            rep = prune_structured(model, calib if o.needs_calibration else None, heads=o.heads, neurons=o.neurons,
                                   criterion=o.criterion, gqa=o.gqa, batch_size=o.batch_size)
            info = _plain(rep)
            for layer in info.get("layers", []):
                layer.pop("kept_neurons", None)  # thousands of indices per block; the saved config says enough
            say(f"structured: heads {o.heads:.0%} neurons {o.neurons:.0%} ({o.criterion}) "
                f"in {time.perf_counter() - t0:.1f} s")
        else:
            kw = o.kwargs()
            rep = prune_llm(model, calib if o.needs_calibration else None, **kw)
            info = {"settings": kw, **_plain(rep), "overall_sparsity": rep.overall_sparsity}
            pat = f" {o.pattern}" if o.pattern else ""
            say(f"oneshot: {o.method}{pat} {rep.overall_sparsity:.2%} in {time.perf_counter() - t0:.1f} s")
        stages.append({"stage": stage.kind, **info, "wall_s": time.perf_counter() - t0})
        timings[f"stage{i}_{stage.kind}_s"] = time.perf_counter() - t0
    commit(model)
    metrics["stages"] = stages

    if texts:
        evaluate("pruned")
    lin_after = linear_stats(model)
    nonzero_after = lin_after["weights"] - lin_after["zeros"]
    metrics["params"] = {"before": params_before, "after": parameter_count(model)}
    metrics["linear_weights"] = {"before": lin_before["weights"], "after": lin_after["weights"],
                                 "nonzero_before": lin_before["weights"] - lin_before["zeros"],
                                 "nonzero_after": nonzero_after}
    metrics["sparsity"] = {
        # zeros among the block linears the model still has
        "linear": lin_after["zeros"] / lin_after["weights"] if lin_after["weights"] else 0.0,
        # linear weights gone (zeroed or removed), relative to the dense model
        "linear_vs_dense": 1 - nonzero_after / lin_before["weights"] if lin_before["weights"] else 0.0,
    }
    # "perplexity": the first evaluation text (the only one when `text` names one); every text in "perplexity_by_text"
    metrics["perplexity"] = dict(by_text[texts[0]]) if texts else None
    metrics["perplexity_by_text"] = by_text if texts else None
    timings["total_s"] = time.perf_counter() - t_start
    metrics["timings"] = timings
    metrics["torch_threads"] = torch.get_num_threads()
    return model, tok, metrics


def run_llm_recipe(recipe: LLMRecipe, out: str | os.PathLike[str], *, progress: bool = False) -> dict[str, Any]:
    """Execute an llm recipe; write ``out/model`` (``save_pretrained`` + tokenizer + the record
    of :func:`save_model`; an earlier one there is replaced), ``out/metrics.json`` and
    ``out/recipe.yaml``. Returns the metrics.

    The metrics hold the settings and reports of every stage, parameter and linear-weight
    counts before and after, the sparsity of the block linears, the dense and pruned
    perplexities (``perplexity``: the first evaluation text; ``perplexity_by_text``: every
    one; with an ``evaluation`` section and ``evaluation_texts``, what each text holds) and
    wall times.
    """
    out = Path(out)
    check_supported(recipe)
    model, tok, metrics = execute(recipe, log=print if progress else None)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, tok, out / "model", force=True)
    metrics["timings"]["save_s"] = time.perf_counter() - t0
    write_json_atomic(out / "metrics.json", metrics)
    (out / "recipe.yaml").write_text(recipe.to_yaml())
    return metrics
