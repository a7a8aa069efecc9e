"""Recipes for language models: a causal LM, its calibration and evaluation text, and pruning stages in YAML.

A recipe with ``task: llm`` at the top::

    task: llm
    name: smollm2-owl                  # optional; default: the file name
    model: smollm2                     # or a save_pretrained folder, or a .gguf file
    calibration: {text: kjv, windows: 64, seqlen: 512, seed: 0}
    evaluation: {text: [kjv, pydoc, news], windows: 32, seqlen: 512}
    stages:
      - structured: {heads: 0.0, neurons: 0.25, criterion: wanda}
      - oneshot: {method: sparsegpt, sparsity: 0.5, allocation: owl}

``text: kjv`` is the King James Bible, split by books into a calibration half and an
evaluation half that share no verse; any other value is a UTF-8 text file (relative paths
are looked up beside the recipe file first, then in the current folder). The evaluation
text may also be another evaluation domain of :data:`prunekit.llm.data.EVAL_DOMAINS`
(``pydoc``: Python's documentation topics; ``news``: BBC News articles), or a list of
domains and files, each measured on its own. Calibration and evaluation may not be the
same file.

Stages run in order on the same calibration windows: ``structured``
(:func:`prunekit.llm.structured.prune_structured`, heads and MLP neurons physically removed)
and ``oneshot`` (:func:`prunekit.llm.prune_llm`, unstructured or N:M masks). Masks are
committed before a structured stage and at the end. :func:`run_llm_recipe` writes the
pruned model (``save_pretrained`` + tokenizer) to ``out/model``, ``out/metrics.json`` and
``out/recipe.yaml`` (the recipe as run, defaults filled in and paths absolute).

``prunekit run FILE`` and :func:`prunekit.recipes.load_recipe` / :func:`prunekit.recipes.run_recipe`
dispatch here when ``task: llm`` is present; ``prunekit llm prune`` runs the same code.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..errors import PruneError, PruneTypeError
from ..recipe_io import explain_validation_error, write_json_atomic, yaml_line
from .oneshot import ALLOCATIONS, COMPARISONS, METHODS

__all__ = [
    "KJV", "LLMRecipe", "LLMStage", "OneshotStage", "StructuredStage", "TextSpec", "EvaluationSpec",
    "check_eval_text", "check_supported", "execute", "is_llm_recipe", "load_texts", "run_llm_recipe", "save_model",
]

KJV = "kjv"
STRUCTURED_CRITERIA = ("wanda", "magnitude")
GQA_MODES = ("groups", "queries")
# prune_llm options passed only when set (prune_llm's own defaults apply otherwise)
OPTIONAL_ONESHOT = ("allocation", "owl_lambda", "owl_m", "depth_lambda", "sequential", "reconstruct", "reconstruct_lr",
                    "reconstruct_holdout", "shrink", "self_calibration")

_STRICT = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------ paths


def _base(info: ValidationInfo) -> Path | None:
    ctx = info.context or {}
    base = ctx.get("base") if isinstance(ctx, dict) else None
    return Path(base) if base is not None else None


def _locate(value: str, base: Path | None) -> Path:
    """``value`` as a path: beside the recipe file if it exists there, else as given."""
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None and (base / p).exists():
        p = base / p
    return p


def check_text(value: str, base: Path | None = None) -> str:
    """``"kjv"`` or the absolute path of an existing text file; else a :class:`PruneError`."""
    if value == KJV:
        return value
    from .data import EVAL_DOMAINS

    p = _locate(value, base)
    if not p.is_file() and value in EVAL_DOMAINS:
        raise PruneError(f"text {value!r} is an evaluation domain; calibration text is 'kjv' (the King James "
                         "Bible's calibration half) or a text file, so that it shares no document with the evaluation")
    if not p.is_file():
        raise PruneError(f"text {value!r} is neither 'kjv' (the King James Bible halves) nor an existing text file")
    return str(p.resolve())


def check_model(value: str, base: Path | None = None) -> str:
    """A package name (``"smollm2"``) as given, or the absolute path of a model folder / .gguf file."""
    from .models import ALIASES, PACKAGES, resolve_source

    if not value:
        raise PruneError("model is empty; give 'smollm2', a save_pretrained folder or a .gguf file")
    key = ALIASES.get(value.lower(), value.lower())
    p = _locate(value, base)
    if key in PACKAGES and not p.exists():
        if PACKAGES[key]["kind"] != "causal":
            raise PruneError(f"model {value!r} is a sentence encoder; a recipe prunes a causal LM such as 'smollm2'")
        return value
    kind, where = resolve_source(str(p))
    return str(Path(where).resolve())


def check_eval_text(value: str, base: Path | None = None) -> str:
    """An evaluation domain name (``kjv``, ``pydoc``, ``news``) as given, or the absolute path of
    an existing text file; else a :class:`PruneError`.

    A domain whose package is missing is refused here, with the ``pip`` command that installs it.
    """
    from .data import EVAL_DOMAINS, eval_domain

    if value in EVAL_DOMAINS:
        eval_domain(value).locate()
        return value
    p = _locate(value, base)
    if not p.is_file():
        raise PruneError(f"text {value!r} is neither an evaluation domain ({', '.join(EVAL_DOMAINS)}) "
                         "nor an existing text file")
    return str(p.resolve())


def same_file(a: str, b: str) -> bool:
    """Whether two text sources are the same file or the same domain (``"kjv"``'s halves are
    disjoint, so ``"kjv"`` is never the same as itself)."""
    from .data import EVAL_DOMAINS

    if KJV in (a, b):
        return False
    if a in EVAL_DOMAINS or b in EVAL_DOMAINS:
        return a == b
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


# ------------------------------------------------------------------------------ schema


class TextSpec(BaseModel):
    """Calibration text: ``kjv`` (its calibration half) or a text file; windows drawn at random offsets."""

    model_config = _STRICT
    text: str = KJV
    windows: int = Field(default=64, ge=1)
    seqlen: int = Field(default=512, ge=2)
    seed: int = Field(default=0, ge=0)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str, info: ValidationInfo) -> str:
        try:
            return check_text(v, _base(info))
        except PruneError as e:
            raise ValueError(str(e)) from None


class EvaluationSpec(TextSpec):
    """Evaluation text: an evaluation domain (``kjv``: the KJV's evaluation half, ``pydoc``,
    ``news``), a text file, or a list of them, each measured on its own; distinct
    non-overlapping windows. ``seqlen`` defaults to the calibration's."""

    text: str | list[str] = KJV  # type: ignore[assignment]
    windows: int = Field(default=32, ge=1)
    seqlen: int | None = Field(default=None, ge=2)  # type: ignore[assignment]

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | list[str], info: ValidationInfo) -> str | list[str]:  # type: ignore[override]
        items = [v] if isinstance(v, str) else list(v)
        if not items:
            raise ValueError("an empty list; give one or more evaluation domains (kjv, pydoc, news) or text files")
        checked: list[str] = []
        for item in items:
            try:
                t = check_eval_text(item, _base(info))
            except PruneError as e:
                raise ValueError(str(e)) from None
            if any(same_file(t, c) for c in checked) or (t == KJV and KJV in checked):
                raise ValueError(f"{item!r} is listed twice; give each text once")
            checked.append(t)
        return checked[0] if isinstance(v, str) else checked

    @property
    def texts(self) -> list[str]:
        """The evaluation texts as a list (one item when ``text`` is a single name or path)."""
        return [self.text] if isinstance(self.text, str) else list(self.text)


class StructuredStage(BaseModel):
    """:func:`prunekit.llm.structured.prune_structured`: remove heads and MLP neurons."""

    model_config = _STRICT
    heads: float = Field(default=0.0, ge=0, lt=1)
    neurons: float = Field(default=0.0, ge=0, lt=1)
    criterion: Literal["wanda", "magnitude"] = "wanda"
    gqa: Literal["groups", "queries"] = "groups"
    batch_size: int = Field(default=8, ge=1)

    @model_validator(mode="after")
    def _something(self) -> StructuredStage:
        if self.heads == 0 and self.neurons == 0:
            raise ValueError("a structured stage removes nothing with heads: 0 and neurons: 0; give a fraction in (0, 1)")
        return self

    @property
    def needs_calibration(self) -> bool:
        return self.criterion == "wanda"


class OneshotStage(BaseModel):
    """:func:`prunekit.llm.prune_llm`: unstructured or N:M masks. ``allocation``, ``owl_lambda``,
    ``owl_m``, ``depth_lambda``, ``sequential``, ``reconstruct``, ``reconstruct_lr``,
    ``reconstruct_holdout``, ``shrink`` and ``self_calibration`` are passed only when given."""

    model_config = _STRICT
    method: str = "sparsegpt"
    sparsity: float = Field(default=0.5, ge=0, lt=1)
    pattern: str | None = None
    allocation: str | None = None
    owl_lambda: float | None = Field(default=None, ge=0, lt=1)
    owl_m: float | None = Field(default=None, gt=0)
    depth_lambda: float | None = Field(default=None, ge=0, lt=1)
    sequential: bool | None = None
    reconstruct: int | None = Field(default=None, ge=0)
    reconstruct_lr: float | None = Field(default=None, gt=0, lt=1)
    reconstruct_holdout: float | None = Field(default=None, ge=0, lt=1)
    shrink: float | None = Field(default=None, ge=0, le=1)
    self_calibration: float | None = Field(default=None, ge=0, le=1)
    blocksize: int = Field(default=128, ge=1)
    percdamp: float = Field(default=0.01, ge=0)
    comparison: str = "row"
    batch_size: int = Field(default=8, ge=1)

    @field_validator("method", "allocation", "comparison")
    @classmethod
    def _choice(cls, v: str | None, info: ValidationInfo) -> str | None:
        """The accepted names are prune_llm's own lists (methods: the core's local criteria)."""
        accepted = {"method": METHODS, "allocation": ALLOCATIONS, "comparison": COMPARISONS}[info.field_name]
        if v is not None and v not in accepted:
            raise ValueError(f"{v!r} is not one of {', '.join(map(repr, accepted))}")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from .oneshot import parse_pattern

        try:
            n, m = parse_pattern(v)  # type: ignore[misc]
        except PruneError as e:
            raise ValueError(str(e)) from None
        return f"{n}:{m}"

    @model_validator(mode="after")
    def _combination(self) -> OneshotStage:
        if (self.owl_lambda is not None or self.owl_m is not None) and self.allocation != "owl":
            raise ValueError("owl_lambda and owl_m need allocation: owl")
        if self.depth_lambda is not None and self.allocation != "depth":
            raise ValueError("depth_lambda needs allocation: depth")
        if self.reconstruct_lr is not None and self.reconstruct == 0:
            raise ValueError("reconstruct_lr needs reconstruction; reconstruct: 0 turns it off")
        if self.reconstruct_holdout is not None and self.reconstruct == 0:
            raise ValueError("reconstruct_holdout needs reconstruction; reconstruct: 0 turns it off")
        if self.shrink is not None and self.method != "sparsegpt":
            raise ValueError(f"shrink applies to method: sparsegpt, not {self.method}")
        if self.pattern is not None and self.allocation in ("owl", "depth"):
            raise ValueError(
                f"allocation: {self.allocation} needs unstructured sparsity; pattern {self.pattern!r} fixes every layer"
            )
        return self

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude" or self.allocation == "owl" or bool(self.reconstruct)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`prunekit.llm.prune_llm` (optional ones only when set)."""
        kw = self.model_dump(exclude=set(OPTIONAL_ONESHOT))
        kw.update({k: getattr(self, k) for k in OPTIONAL_ONESHOT if getattr(self, k) is not None})
        return kw


_LLM_STAGES: dict[str, type[BaseModel]] = {"structured": StructuredStage, "oneshot": OneshotStage}


class LLMStage(BaseModel):
    """One step: a mapping with exactly one of the keys ``structured``, ``oneshot``."""

    model_config = _STRICT
    structured: StructuredStage | None = None
    oneshot: OneshotStage | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_key(cls, v: Any) -> Any:
        if not isinstance(v, dict) or len(v) != 1:
            raise ValueError(f"a stage is a mapping with exactly one of {list(_LLM_STAGES)}, got {v!r}")
        key = next(iter(v))
        if key not in _LLM_STAGES:
            raise ValueError(f"unknown stage {key!r}; stages of an llm recipe are {list(_LLM_STAGES)}")
        return {key: {} if v[key] is None else v[key]}

    @property
    def kind(self) -> str:
        return next(k for k in _LLM_STAGES if getattr(self, k) is not None)

    @property
    def options(self) -> Any:
        return getattr(self, self.kind)


class LLMRecipe(BaseModel):
    """A language-model pruning run. ``LLMRecipe.from_yaml(text)`` validates with line numbers."""

    model_config = _STRICT
    task: Literal["llm"]
    name: str = "llm"
    model: str
    calibration: TextSpec = Field(default_factory=TextSpec)
    evaluation: EvaluationSpec | None = None
    stages: list[LLMStage]

    @field_validator("model")
    @classmethod
    def _model(cls, v: str, info: ValidationInfo) -> str:
        try:
            return check_model(v, _base(info))
        except PruneError as e:
            raise ValueError(str(e)) from None

    @property
    def eval_seqlen(self) -> int:
        assert self.evaluation is not None
        return self.evaluation.seqlen or self.calibration.seqlen

    @property
    def needs_calibration(self) -> bool:
        return any(s.options.needs_calibration for s in self.stages)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<recipe>") -> LLMRecipe:
        try:
            node = yaml.compose(text)
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise PruneError(f"{source}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise PruneError(f"{source}: an llm recipe is a YAML mapping with task, model and stages")
        src = Path(source)
        base = src.parent if src.is_file() else None
        if "name" not in raw and base is not None:
            raw = {**raw, "name": src.name.removesuffix(".yaml").removesuffix(".yml")}
        return cls.validate_dict(raw, node=node, source=source, base=base)

    @classmethod
    def validate_dict(cls, raw: dict[str, Any], *, node: yaml.Node | None = None, source: str = "<recipe>",
                      base: Path | None = None) -> LLMRecipe:
        """Validate a mapping (``node``, when given, supplies line numbers for the errors)."""
        try:
            recipe = cls.model_validate(raw, context={"base": base})
        except ValidationError as e:
            raise PruneError(explain_validation_error(e, node, source)) from None
        ev = recipe.evaluation
        for text in ev.texts if ev is not None else []:
            if same_file(recipe.calibration.text, text):
                where = yaml_line(node, ("evaluation", "text")) if node is not None else None
                raise PruneError(
                    f"invalid recipe:\n{source}:{where}: evaluation.text: {text!r} is also the calibration text; "
                    "evaluate on other text (or use 'kjv', whose halves are disjoint)"
                )
        return recipe

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        data["stages"] = [{s.kind: s.options.model_dump(mode="json", exclude_none=True)} for s in self.stages]
        return yaml.safe_dump(data, sort_keys=False)


def is_llm_recipe(raw: Any) -> bool:
    """Whether a parsed YAML mapping is an llm recipe (``task: llm``)."""
    return isinstance(raw, dict) and raw.get("task") == "llm"


# ------------------------------------------------------------------------------ running


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
    """Weights and zeros of the ``nn.Linear`` layers inside the transformer blocks (what is pruned)."""
    import torch
    from torch import nn

    from .blocks import transformer_blocks

    total = zeros = 0
    with torch.no_grad():
        for layer in transformer_blocks(model):
            for m in layer.modules():
                if isinstance(m, nn.Linear):
                    total += m.weight.numel()
                    zeros += m.weight.numel() - int(torch.count_nonzero(m.weight))
    return {"weights": total, "zeros": zeros}


def parameter_count(model: Any) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _kjv_summary(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if not k.endswith("_books")}


def load_streams(tokenizer: Any, calib_text: str | None, eval_text: str | None) -> tuple[Any, Any, dict[str, Any] | None]:
    """Token streams ``(calibration, evaluation, kjv info)`` for ``"kjv"``, other evaluation
    domains or file sources (``None``: not needed)."""
    calib, evals, kjv, _ = load_texts(tokenizer, calib_text, [eval_text] if eval_text is not None else [])
    return calib, (evals[eval_text] if eval_text is not None else None), kjv


def load_texts(tokenizer: Any, calib_text: str | None,
               eval_texts: list[str]) -> tuple[Any, dict[str, Any], dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """Token streams of a calibration text and of evaluation texts.

    Args:
        tokenizer: the model's tokenizer.
        calib_text: ``"kjv"`` (its calibration half) or a file; ``None`` when not needed.
        eval_texts: evaluation domains (``"kjv"``: its evaluation half, ``"pydoc"``, ``"news"``)
            and files.

    Returns:
        ``(calibration stream or None, {text: evaluation stream}, kjv info or None,
        {text: what the stream holds})``. The KJV is tokenized once for both halves.
    """
    from .data import domain_info, eval_stream, kjv_streams, text_tokens

    kjv = kjv_streams(tokenizer) if KJV == calib_text or KJV in eval_texts else None
    calib = None
    if calib_text is not None:
        calib = kjv[0] if calib_text == KJV else text_tokens(calib_text, tokenizer)
    streams: dict[str, Any] = {}
    infos: dict[str, dict[str, Any]] = {}
    for text in eval_texts:
        if text == KJV:
            assert kjv is not None
            streams[text], infos[text] = kjv[1], domain_info(KJV, kjv[1])
        else:
            streams[text], infos[text] = eval_stream(text, tokenizer)
    return calib, streams, (_kjv_summary(kjv[2]) if kjv is not None else None), infos


def evaluation_windows(streams: dict[str, Any], n: int, seqlen: int, seed: int) -> dict[str, Any]:
    """:func:`prunekit.llm.data.eval_windows` of every stream; an error names the text it is about."""
    from .data import eval_windows

    out = {}
    for text, stream in streams.items():
        try:
            out[text] = eval_windows(stream, n, seqlen, seed)
        except PruneError as e:
            raise PruneError(f"evaluation text {text!r}: {e}") from None
    return out


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
    for i, stage in enumerate(recipe.stages):
        o = stage.options
        t0 = time.perf_counter()
        if stage.kind == "structured":
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


def _save_pretrained(model: Any, folder: Path) -> None:
    """``model.save_pretrained``, also for a model dequantized from GGUF (whose weights are plain fp32)."""
    q = getattr(model, "hf_quantizer", None)
    if q is not None:
        method = getattr(getattr(q, "quantization_config", None), "quant_method", None)
        if str(getattr(method, "value", method)).lower() == "gguf":
            # transformers marks GGUF-loaded models as quantized and refuses to save them,
            # but the weights were dequantized to fp32 on load: save them as a plain model.
            model.hf_quantizer = None
            for obj in (model, getattr(model, "config", None)):
                if obj is not None and "quantization_config" in getattr(obj, "__dict__", {}):
                    delattr(obj, "quantization_config")
            if hasattr(model, "is_quantized"):
                try:
                    model.is_quantized = False
                except AttributeError:
                    pass
    model.save_pretrained(folder)


def is_empty_dir(path: Path) -> bool:
    """``path`` is a folder with nothing in it."""
    return path.is_dir() and not any(path.iterdir())


#: The record :func:`save_model` writes into every folder it writes: the caller's payload
#: (``prunekit llm prune``: its settings and metrics) and ``"files"``, the names written.
RECORD = "prunekit-llm.json"
#: What ``save_pretrained`` and a tokenizer write: the files of a record that does not list
#: its own (one written by an earlier prunekit version).
_PRETRAINED = re.compile(
    r"(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|added_tokens|vocab|merges"
    r"|chat_template)\.(json|txt|jinja)|tokenizer\.model|spiece\.model"
    r"|(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?|model\.safetensors\.index\.json"
)
_SHOWN = 3  # names listed in a message before "and N more"


def _listing(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _written(folder: Path) -> set[str] | None:
    """The names an earlier :func:`save_model` wrote into ``folder``, read from its record;
    None when the folder holds no record (prunekit did not write it)."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    files = record.get("files")
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        return {*files, RECORD}
    if str(record.get("command", "")).startswith("prunekit llm"):  # a record that does not list its files
        return {p.name for p in folder.iterdir() if _PRETRAINED.fullmatch(p.name)} | {RECORD}
    return None


def output_problem(dest: str | os.PathLike[str], replace: bool, flag: str = "force=True") -> str | None:
    """Why :func:`save_model` may not write the folder ``dest``, or None when it may.

    It may write a new or empty folder and, with ``replace``, an earlier output of
    :func:`save_model` that holds nothing but what that save wrote (its record lists the
    files). A non-empty folder prunekit did not write, or an earlier output with other
    files in it, is refused even with ``replace``: the output replaces the whole folder,
    and no file prunekit did not write is ever deleted.

    Returns:
        The end of a sentence that starts with the folder's path ("is a file; ...");
        ``flag`` is what it tells the caller to pass to replace an earlier output.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        return "is a file, not a folder; give a folder path"
    if not dest.is_dir() or is_empty_dir(dest):
        return None
    names = sorted(p.name for p in dest.iterdir())
    written = _written(dest)
    if written is None:
        return (f"is a non-empty folder that prunekit did not write ({_listing(names)}); choose a new or empty "
                f"folder (the output replaces the whole folder, so {flag} does not apply to a folder of yours)")
    others = [n for n in names if n not in written]
    if others:
        return (f"holds an earlier prunekit output and files prunekit did not write ({_listing(others)}); "
                "move them or choose another folder (the output replaces the whole folder)")
    if not replace:
        return f"holds an earlier prunekit output; pass {flag} to replace it"
    return None


def _follow_umask(folder: Path) -> None:
    """Give ``folder``, the folders in it and its files the modes ``mkdir`` and ``open``
    give (0o777 and 0o666 less the umask): ``mkdtemp`` makes 0700, and some writers 0600."""
    from ..export import current_umask

    umask = current_umask()
    os.chmod(folder, 0o777 & ~umask)
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~umask)
        for n in names:
            os.chmod(os.path.join(root, n), 0o666 & ~umask)


def save_model(model: Any, tokenizer: Any, dest: str | os.PathLike[str], *, files: dict[str, Any] | None = None,
               force: bool = False) -> Path:
    """Write ``save_pretrained`` + tokenizer (+ JSON ``files``) to the folder ``dest`` atomically.

    Everything goes to a temporary folder beside ``dest`` that is renamed into place, so a
    failed or interrupted save leaves ``dest`` as it was. The folder also gets the record
    ``prunekit-llm.json``: ``files["prunekit-llm.json"]`` (a dict) if given, plus
    ``"files"``, the names this save wrote. ``dest`` may be new or empty; an earlier output
    of ``save_model`` is replaced, as a whole, only with ``force=True``, and any other
    non-empty folder (or an earlier output holding files it did not write) is refused even
    then (see :func:`output_problem`). The folder and its files get the modes ``mkdir``
    and ``open`` give them (0755 and 0644 under the usual umask 022).

    Raises:
        PruneError: ``dest`` may not be written (the message says why).
        PruneTypeError: the record's payload is not a dict.
    """
    dest = Path(dest)
    files = dict(files or {})
    payload = files.pop(RECORD, {})
    if not isinstance(payload, dict):
        raise PruneTypeError(f"files[{RECORD!r}] must be a dict, got {type(payload).__name__}")
    problem = output_problem(dest, force)
    if problem:
        raise PruneError(f"output folder {str(dest)!r} {problem}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    old: Path | None = None
    try:
        _save_pretrained(model, tmp)
        tokenizer.save_pretrained(tmp)
        for name, data in files.items():
            (tmp / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        written = sorted({p.name for p in tmp.iterdir()} | {RECORD})
        (tmp / RECORD).write_text(json.dumps({**payload, "files": written}, indent=2) + "\n", encoding="utf-8")
        _follow_umask(tmp)
        problem = output_problem(dest, force)  # files may have arrived while the model was written
        if problem:
            raise PruneError(f"output folder {str(dest)!r} {problem}")
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
            os.replace(dest, old / "x")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "x").exists() and not dest.exists():
            os.replace(old / "x", dest)  # put the previous folder back
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


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
