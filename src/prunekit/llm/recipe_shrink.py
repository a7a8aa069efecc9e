"""The ``shrink`` and ``distill`` stages of llm recipes (schema; they run in :mod:`prunekit.llm.run`).

::

    stages:
      - shrink: {params: 100M, modes: [width, depth, mixed], importance: activation}
      - distill: {tokens: 2M, lr: 1.0e-4}

``shrink`` (:func:`prunekit.llm.shrink.shrink`) prunes width and depth to a parameter or MAC
budget; with more than one mode, the last ``heldout`` calibration windows (not scored or
trained on in the stage) pick the candidate. ``distill`` (:func:`prunekit.distill`) trains the
model to reproduce the dense model loaded at the start of the recipe on the calibration
windows, for ``tokens`` tokens (masks of earlier stages stay exact).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import PruneError
from .budget import MODES, parse_count

__all__ = ["DistillStage", "ShrinkStage"]

_STRICT = ConfigDict(extra="forbid")


def _count(name: str, v: Any) -> int | None:
    if v is None:
        return None
    try:
        return parse_count(name, v)
    except PruneError as e:
        raise ValueError(str(e)) from None


class ShrinkStage(BaseModel):
    """:func:`prunekit.llm.shrink.shrink`: width and depth pruning to ``params`` or ``macs``."""

    model_config = _STRICT
    params: int | str | None = None
    macs: int | str | None = None
    seqlen: int = Field(default=256, ge=1)
    modes: list[str] = Field(default_factory=lambda: list(MODES))
    importance: Literal["activation", "taylor"] = "activation"
    depth_criterion: Literal["influence", "perplexity"] = "influence"
    heldout: int = Field(default=4, ge=1)
    search_tokens: int | str = 0
    lr: float = Field(default=1e-4, gt=0, lt=1)
    batch_size: int = Field(default=8, ge=1)

    @field_validator("params", "macs")
    @classmethod
    def _budget(cls, v: Any, info: Any) -> int | None:
        return _count(info.field_name, v)

    @field_validator("search_tokens")
    @classmethod
    def _tokens(cls, v: Any) -> int:
        return 0 if v in (0, "0") else int(_count("search_tokens", v) or 0)

    @field_validator("modes")
    @classmethod
    def _modes(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in MODES]
        if bad or not v:
            raise ValueError(f"{bad or v!r}: modes are one or more of {', '.join(MODES)}")
        return v

    @model_validator(mode="after")
    def _one_budget(self) -> ShrinkStage:
        if (self.params is None) == (self.macs is None):
            raise ValueError("give exactly one budget: params (e.g. 100M) or macs")
        return self

    @property
    def needs_calibration(self) -> bool:
        return True


class DistillStage(BaseModel):
    """:func:`prunekit.distill` from the dense model on the calibration windows."""

    model_config = _STRICT
    tokens: int | str
    lr: float = Field(default=1e-4, gt=0, lt=1)
    batch_size: int = Field(default=8, ge=1)
    temperature: float = Field(default=2.0, gt=0)
    seed: int = Field(default=0, ge=0)

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, v: Any) -> int:
        return int(_count("tokens", v) or 0)

    @property
    def needs_calibration(self) -> bool:
        return True
