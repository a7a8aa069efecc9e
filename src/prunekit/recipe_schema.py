"""What a recipe file may say: the pydantic schema of a classifier recipe, read from YAML
with a line number for every problem, and the built-in recipes.

Part of :mod:`prunekit.recipes` (which re-exports these names; import them from there).
A recipe with ``task: llm`` at the top is a language-model recipe, validated by
:mod:`prunekit.llm.recipe`.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import PruneError
from .recipe_io import explain_validation_error, yaml_line

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelSpec(BaseModel):
    """A zoo model by name, or ``factory: "package.module:function"`` (called with ``kwargs``)."""

    model_config = _STRICT
    zoo: str | None = None
    factory: str | None = None
    pretrained: bool = False
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.zoo is None) == (self.factory is None):
            raise ValueError("give exactly one of 'zoo' (a zoo model name) or 'factory' ('module:function')")
        if self.zoo is not None:
            from . import zoo

            if self.zoo not in zoo.available():
                raise ValueError(f"zoo model {self.zoo!r} is not one of {zoo.available()}")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"factory {self.factory!r} must look like 'package.module:function'")
        return self


class DataSpec(BaseModel):
    """``name: mnist | digits`` (built in), or ``factory: "module:function"`` returning
    ``(train_dataset, test_dataset)``."""

    model_config = _STRICT
    name: Literal["mnist", "digits"] | None = None
    factory: str | None = None
    flatten: bool = False
    train_samples: int | None = Field(default=None, ge=1)
    test_samples: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=128, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.name is None) == (self.factory is None):
            raise ValueError("give exactly one of 'name' (mnist or digits) or 'factory' ('module:function')")
        return self


class PruneStage(BaseModel):
    model_config = _STRICT
    sparsity: float | None = Field(default=None, ge=0, lt=1)
    threshold: float | None = Field(default=None, ge=0, le=1)
    criterion: str = "magnitude"
    granularity: str = "unstructured"
    allocation: str = "global"
    ignore: list[str] = Field(default_factory=list)
    min_keep: int = Field(default=1, ge=0)
    max_sparsity: float | None = Field(default=None, gt=0, le=1)
    group_reduce: Literal["joint", "mean", "sum", "max"] = "joint"
    calibration_batches: int = Field(default=4, ge=1)
    schedule: Literal["oneshot", "gradual", "iterative"] = "oneshot"
    epochs: int = Field(default=0, ge=0)
    lr: float = Field(default=1e-3, gt=0)

    @model_validator(mode="after")
    def _schedule(self) -> PruneStage:
        if self.schedule != "oneshot" and (self.epochs < 1 or self.sparsity is None):
            raise ValueError(f"schedule {self.schedule!r} prunes while training: give sparsity and epochs >= 1")
        from .api import Pruner

        try:  # the run's own rules (sparsity or threshold, N:M's fixed sparsity, ...), checked before it starts
            Pruner(self.sparsity, threshold=self.threshold, criterion=self.criterion, granularity=self.granularity,
                   allocation=self.allocation, min_keep=self.min_keep, max_sparsity=self.max_sparsity,
                   group_reduce=self.group_reduce).resolve()
        except PruneError as e:
            raise ValueError(str(e)) from None
        return self

    @field_validator("criterion", "allocation")
    @classmethod
    def _registered(cls, v: str, info: Any) -> str:
        from .registry import available

        if v not in available(info.field_name):
            raise ValueError(f"{info.field_name} {v!r} is not one of {available(info.field_name)}")
        return v

    @field_validator("granularity")
    @classmethod
    def _granularity(cls, v: str) -> str:
        from .granularity import make

        try:
            make(v)
        except PruneError as e:
            raise ValueError(str(e)) from None
        return v


class TrainStage(BaseModel):
    model_config = _STRICT
    epochs: int = Field(default=1, ge=0)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int | None = Field(default=None, ge=1)


class RegularizeStage(TrainStage):
    kind: Literal["l1", "l2", "group_lasso", "bn_l1"] = "l1"
    strength: float = Field(default=1e-4, gt=0)


class CompactStage(BaseModel):
    model_config = _STRICT


class ExportStage(BaseModel):
    model_config = _STRICT
    format: Literal["safetensors", "packed"] = "safetensors"
    quantize: str | None = None

    @model_validator(mode="after")
    def _quantize(self) -> ExportStage:
        if self.quantize is not None:
            if self.format != "packed":
                raise ValueError("quantize needs format: packed")
            from .deploy.packed import parse_scheme

            try:
                parse_scheme(self.quantize)
            except PruneError as e:
                raise ValueError(str(e)) from None
        return self


_STAGES = {"prune": PruneStage, "regularize": RegularizeStage, "finetune": TrainStage,
           "compact": CompactStage, "export": ExportStage}


class Stage(BaseModel):
    """One step: a mapping with exactly one of the keys prune, regularize, finetune, compact, export."""

    model_config = _STRICT
    prune: PruneStage | None = None
    regularize: RegularizeStage | None = None
    finetune: TrainStage | None = None
    compact: CompactStage | None = None
    export: ExportStage | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_key(cls, v: Any) -> Any:
        if not isinstance(v, dict) or len(v) != 1:
            raise ValueError(f"a stage is a mapping with exactly one of {list(_STAGES)}, got {v!r}")
        key = next(iter(v))
        if key not in _STAGES:
            raise ValueError(f"unknown stage {key!r}; stages are {list(_STAGES)}")
        return {key: {} if v[key] is None else v[key]}

    @property
    def kind(self) -> str:
        return next(k for k in _STAGES if getattr(self, k) is not None)

    @property
    def options(self) -> BaseModel:
        return getattr(self, self.kind)


class Recipe(BaseModel):
    """A whole run. ``Recipe.from_yaml(text)`` validates with line numbers."""

    model_config = _STRICT
    name: str
    seed: int = Field(default=0, ge=0)
    model: ModelSpec
    data: DataSpec
    stages: list[Stage] = Field(min_length=1)

    @field_validator("stages")
    @classmethod
    def _export_last(cls, stages: list[Stage]) -> list[Stage]:
        kinds = [s.kind for s in stages]
        if "export" in kinds[:-1]:
            raise ValueError(f"export writes the finished model: it can only be the last stage (stages: {kinds}); "
                             "move it to the end, or leave it out (the model is saved after the last stage)")
        return stages

    @classmethod
    def from_yaml(cls, text: str, source: str = "<recipe>") -> Any:
        """A :class:`Recipe`, or a :class:`prunekit.llm.recipe.LLMRecipe` when the YAML has ``task: llm``."""
        try:
            node = yaml.compose(text)
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise PruneError(_yaml_error(e, source)) from None
        if not isinstance(raw, dict):
            raise PruneError(f"{source}: a recipe is a YAML mapping with name, model, data and stages")
        if "task" in raw:  # language models: prunekit.llm.recipe
            if raw["task"] != "llm":
                raise PruneError(f"invalid recipe:\n{source}:{yaml_line(node, ('task',))}: task: {raw['task']!r} is not "
                                 "a task; use 'llm' for a language model, or leave task out for a classifier recipe")
            from .llm.recipe import LLMRecipe

            return LLMRecipe.from_yaml(text, source)
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise PruneError(explain_validation_error(e, node, source)) from None

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_defaults=False)
        data["stages"] = [{s.kind: s.options.model_dump(mode="json")} for s in self.stages]
        return yaml.safe_dump(data, sort_keys=False)


def _yaml_error(e: yaml.YAMLError, source: str) -> str:
    """``source:line: not valid YAML: problem (context)`` from a YAML parser error."""
    mark = getattr(e, "problem_mark", None)
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def builtin() -> list[str]:
    """Names of the recipes shipped with prunekit (``prunekit run <name>``)."""
    folder = resources.files("prunekit") / "builtin_recipes"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(source: str | os.PathLike) -> Any:
    """A recipe from a YAML file path or a built-in name (an ``LLMRecipe`` for ``task: llm``)."""
    path = Path(source)
    if path.is_file():
        return Recipe.from_yaml(path.read_text(), str(path))
    if str(source) in builtin():
        text = (resources.files("prunekit") / "builtin_recipes" / f"{source}.yaml").read_text()
        return Recipe.from_yaml(text, f"{source}.yaml")
    raise PruneError(f"recipe {str(source)!r} is neither a file nor a built-in recipe ({', '.join(builtin())})")


__all__ = ["CompactStage", "DataSpec", "ExportStage", "ModelSpec", "PruneStage", "Recipe", "RegularizeStage", "Stage",
           "TrainStage", "builtin", "load_recipe"]
