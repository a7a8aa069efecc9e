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
(:func:`prunekit.llm.structured.prune_structured`, heads and MLP neurons physically removed),
``oneshot`` (:func:`prunekit.llm.prune_llm`, unstructured or N:M masks), ``shrink`` (width and
depth to a budget) and ``distill`` (from the dense model); see :mod:`prunekit.llm.recipe_shrink`. Masks are
committed before a structured stage and at the end. :func:`run_llm_recipe` writes the
pruned model (``save_pretrained`` + tokenizer) to ``out/model``, ``out/metrics.json`` and
``out/recipe.yaml`` (the recipe as run, defaults filled in and paths absolute).

``prunekit run FILE`` and :func:`prunekit.recipes.load_recipe` / :func:`prunekit.recipes.run_recipe`
dispatch here when ``task: llm`` is present; ``prunekit llm prune`` runs the same code.

The schema is here; the texts are checked and loaded by :mod:`prunekit.llm.texts`, a recipe
runs in :mod:`prunekit.llm.run` and its model is saved by :mod:`prunekit.llm.output`. Their
public names are importable from this module too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..errors import PruneError
from ..recipe_io import explain_validation_error, yaml_line
from .oneshot import ALLOCATIONS, COMPARISONS, METHODS, REFINEMENTS
from .output import RECORD, is_empty_dir, output_problem, save_model  # noqa: F401  (defined in output; public here too)
from .recipe_shrink import DistillStage, ShrinkStage
from .run import (  # noqa: F401  (defined in run; public here too)
    check_supported, execute, linear_stats, parameter_count, run_llm_recipe,
)
from .texts import (  # noqa: F401  (defined in texts; public here too)
    KJV, check_eval_text, check_text, evaluation_windows, load_streams, load_texts, locate, same_file,
)

__all__ = [
    "KJV", "LLMRecipe", "LLMStage", "OneshotStage", "StructuredStage", "TextSpec", "EvaluationSpec",
    "check_eval_text", "check_supported", "execute", "is_llm_recipe", "load_texts", "run_llm_recipe", "save_model",
]

STRUCTURED_CRITERIA = ("wanda", "magnitude")
GQA_MODES = ("groups", "queries")
# prune_llm options passed only when set (prune_llm's own defaults apply otherwise)
OPTIONAL_ONESHOT = ("allocation", "owl_lambda", "owl_m", "depth_lambda", "sequential", "reconstruct", "reconstruct_lr",
                    "reconstruct_holdout", "shrink", "self_calibration", "refine", "refine_cycles")

_STRICT = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------ model


def _base(info: ValidationInfo) -> Path | None:
    ctx = info.context or {}
    base = ctx.get("base") if isinstance(ctx, dict) else None
    return Path(base) if base is not None else None


def check_model(value: str, base: Path | None = None) -> str:
    """A package name (``"smollm2"``) as given, or the absolute path of a model folder / .gguf file."""
    from .models import ALIASES, PACKAGES, resolve_source

    if not value:
        raise PruneError("model is empty; give 'smollm2', a save_pretrained folder or a .gguf file")
    key = ALIASES.get(value.lower(), value.lower())
    p = locate(value, base)
    if key in PACKAGES and not p.exists():
        if PACKAGES[key]["kind"] != "causal":
            raise PruneError(f"model {value!r} is a sentence encoder; a recipe prunes a causal LM such as 'smollm2'")
        return value
    kind, where = resolve_source(str(p))
    return str(Path(where).resolve())


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
    ``reconstruct_holdout``, ``shrink``, ``self_calibration``, ``refine`` and ``refine_cycles``
    are passed only when given."""

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
    refine: str | None = None
    refine_cycles: int | None = Field(default=None, ge=1)
    blocksize: int = Field(default=128, ge=1)
    percdamp: float = Field(default=0.01, ge=0)
    comparison: str = "row"
    batch_size: int = Field(default=8, ge=1)

    @field_validator("method", "allocation", "comparison", "refine")
    @classmethod
    def _choice(cls, v: str | None, info: ValidationInfo) -> str | None:
        """The accepted names are prune_llm's own lists (methods: the core's local criteria)."""
        accepted = {"method": METHODS, "allocation": ALLOCATIONS, "comparison": COMPARISONS,
                    "refine": REFINEMENTS}[info.field_name]
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
        if self.refine is not None and self.method == "sparsegpt":
            raise ValueError("refine: dsnot refines the masks of wanda, ria, rgs or magnitude; sparsegpt has updated the weights it keeps")
        if self.refine_cycles is not None and self.refine is None:
            raise ValueError("refine_cycles needs refine: dsnot")
        if self.pattern is not None and self.allocation in ("owl", "depth"):
            raise ValueError(
                f"allocation: {self.allocation} needs unstructured sparsity; pattern {self.pattern!r} fixes every layer"
            )
        return self

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude" or self.allocation == "owl" or bool(self.reconstruct) or self.refine is not None

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`prunekit.llm.prune_llm` (optional ones only when set)."""
        kw = self.model_dump(exclude=set(OPTIONAL_ONESHOT))
        kw.update({k: getattr(self, k) for k in OPTIONAL_ONESHOT if getattr(self, k) is not None})
        return kw


_LLM_STAGES: dict[str, type[BaseModel]] = {"structured": StructuredStage, "oneshot": OneshotStage,
                                           "shrink": ShrinkStage, "distill": DistillStage}


class LLMStage(BaseModel):
    """One step: a mapping with exactly one of the keys ``structured``, ``oneshot``, ``shrink``, ``distill``."""

    model_config = _STRICT
    structured: StructuredStage | None = None
    oneshot: OneshotStage | None = None
    shrink: ShrinkStage | None = None
    distill: DistillStage | None = None

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
