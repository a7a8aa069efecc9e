"""What ``prunekit prune`` calibrates on, what it evaluates on, and its options that mirror
``pk.prune``'s (``--threshold``, ``--block-shape``, ``--ignore``).

* A zoo model: MNIST (calibration from the training split, accuracy on the 10,000 test
  images). Only ``mnistnet`` has trained weights; the others are pruned untrained, and a
  ``note:`` line says so.
* A saved folder whose spec records its data set (``prunekit run``, ``prunekit train`` and
  ``prunekit prune`` write it): that data set, MNIST or digits, for both.
* A saved folder that records none: MNIST calibration, and one line saying why no
  accuracy is shown.

This module imports neither torch nor the rest of prunekit at import time; `prunekit.cli`
imports it inside the commands (it is not one of the package's light modules).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import prunekit.cli_util as cu

#: the data sets ``prunekit prune`` can load, and their test split's size
TEST_IMAGES = {"mnist": "10,000", "digits": "450"}


@dataclass(frozen=True)
class PruneData:
    name: str  # "mnist" or "digits"
    flatten: bool
    input_shape: list[int]
    evaluate: bool  # accuracy before and after is printed
    why_not: Optional[str] = None  # when not: the one line that says why
    note: Optional[str] = None  # printed before the tables (an untrained zoo model)

    @property
    def record(self) -> dict[str, Any]:
        """What the pruned model's spec records, so that ``evaluate`` needs no flag."""
        return {"name": self.name, "flatten": self.flatten}


def _default_shape(name: str, flatten: bool) -> list[int]:
    if name == "digits":
        return [1, 64] if flatten else [1, 1, 8, 8]
    return [1, 784] if flatten else list(cu.MNIST_INPUT)


def prune_data(source: str) -> PruneData:
    """Where ``prunekit prune SOURCE`` gets its data (reads the spec only; no torch)."""
    if not os.path.isdir(source):
        note = None
        if source != "mnistnet":
            note = (f"note: {source} has no trained weights (only mnistnet is pretrained), so its accuracy is "
                    f"near chance before and after; train it first: prunekit train {source} --out DIR")
        return PruneData("mnist", False, list(cu.MNIST_INPUT), True, note=note)
    folder = Path(source)
    recorded = cu.spec_data(folder)
    shape = cu.spec_input_shape(folder)
    if recorded is None:
        return PruneData("mnist", False, shape or list(cu.MNIST_INPUT), False,
                         why_not=f"no accuracy shown: SOURCE {source!r} does not record its data set "
                                 "(saved without it); calibrated on MNIST")
    name, flatten = recorded["name"], bool(recorded.get("flatten", False))
    if name not in TEST_IMAGES:
        return PruneData("mnist", False, shape or list(cu.MNIST_INPUT), False,
                         why_not=f"no accuracy shown: SOURCE {source!r} records the data set {name!r}, which "
                                 "prunekit prune cannot load (mnist, digits); calibrated on MNIST")
    return PruneData(name, flatten, shape or _default_shape(name, flatten), True)


def load(data: PruneData, calibration_batches: int) -> tuple[Any, Any]:
    """(calibration subset of the training split, test split or None)."""
    from prunekit.datasets import load_digits, load_mnist, subset

    loader = load_mnist if data.name == "mnist" else load_digits
    train = loader("train", flatten=data.flatten)
    calib = subset(train, min(len(train), 128 * calibration_batches), seed=0)
    return calib, (loader("test", flatten=data.flatten) if data.evaluate else None)


def check_fits(model: Any, source: str, data: PruneData) -> None:
    """The model takes the data set's inputs (a clear error before any work)."""
    if data.name == "mnist" and data.input_shape == cu.MNIST_INPUT:
        cu.check_mnist_fits(model, source, classes=None)
    else:
        cu.check_input_fits(model, data.input_shape,
                            f"SOURCE {source!r} does not take {data.name} inputs of shape {data.input_shape}")


def accuracy_line(data: PruneData, before: float, after: float) -> str:
    from prunekit.cli_format import pct, points

    return (f"accuracy on the {data.name} test set ({TEST_IMAGES[data.name]} images): "
            f"{pct(before)} before, {pct(after)} after ({points(before, after)})")


# --- the options that mirror pk.prune's -------------------------------------------------------


def parse_block_shape(text: Optional[str], granularity: str) -> Optional[tuple[int, int]]:
    """``"4,4"`` or ``"4x4"`` -> ``(4, 4)``; only with ``--granularity block``."""
    if text is None:
        return None
    parts = [p.strip() for p in text.lower().replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 2 or min(shape) < 1:
        cu.fail(f"--block-shape: {text!r} is not a block shape (expected two positive integers ROWS,COLS, e.g. 4,4)")
    if granularity != "block":
        cu.fail(f"--block-shape {text!r} applies only to --granularity block, got --granularity {granularity}")
    return shape  # type: ignore[return-value]


def check_threshold(threshold: Optional[float], sparsity: Optional[float], granularity: str,
                    allocation: str) -> None:
    """--threshold in [0, 1], instead of --sparsity, with an allocation that supports it."""
    if threshold is None:
        return
    if not 0 <= threshold <= 1:
        cu.fail(f"--threshold: {threshold!r} is outside [0, 1] (the normalized score at or below which "
                "units are removed, e.g. 0.1)")
    if sparsity is not None:
        cu.fail(f"give --sparsity or --threshold, not both (got --sparsity {sparsity!r} and --threshold {threshold!r})")
    if ":" in granularity:
        cu.fail(f"--threshold {threshold!r} does not apply to N:M granularity {granularity}")
    import prunekit as pk
    from prunekit.registry import create

    ok = [n for n in pk.available("allocation") if create("allocation", n).supports_threshold]
    if allocation not in ok:
        cu.fail(f"--threshold {threshold!r} does not work with --allocation {allocation}; "
                f"it works with {', '.join(ok)}")


def parse_ignore(values: Optional[Sequence[str]]) -> list[str]:
    """Repeated ``--ignore`` values, each also split at commas; an empty one is an error."""
    patterns: list[str] = []
    for v in values or ():
        parts = [p.strip() for p in v.split(",") if p.strip()]
        if not parts:
            cu.fail(f"--ignore: {v!r} names no weight or module (expected a name or a pattern such as 'classifier.*')")
        patterns.extend(parts)
    return patterns
