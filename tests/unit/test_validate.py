"""The shared option checks: what they accept, what they refuse, and one wording."""

from __future__ import annotations

import math

import pytest

from prunekit import validate as V
from prunekit.errors import PruneError, PruneTypeError


def test_numbers_in_ranges_and_their_messages():
    assert V.fraction("sparsity", 0) == 0.0 and isinstance(V.fraction("sparsity", 0), float)
    assert V.fraction("shrink", 1, one=True) == 1.0
    with pytest.raises(PruneError, match=r"^sparsity must be a number in \[0, 1\); got 1$"):
        V.fraction("sparsity", 1)
    with pytest.raises(PruneError, match=r"^lr must be a number in \(0, 1\) \(e\.g\. 3e-4\); got 0$"):
        V.fraction("lr", 0, zero=False, hint="e.g. 3e-4")
    with pytest.raises(PruneError, match=r"^m must be a number > 0; got -1$"):
        V.number("m", -1, lo=0, lo_open=True)
    for bad in (math.nan, math.inf):
        with pytest.raises(PruneError, match="must be a number >= 0"):
            V.number("percdamp", bad, lo=0)


@pytest.mark.parametrize("bad", [True, "0.5", None, [0.5]])
def test_non_numbers_are_type_errors(bad):
    with pytest.raises(PruneTypeError, match=r"must be a number in \[0, 1\)"):
        V.fraction("sparsity", bad)
    with pytest.raises(PruneTypeError, match="must be an integer >= 1"):
        V.integer("batch_size", bad, minimum=1)


def test_integers_booleans_and_choices():
    assert V.integer("n", 3, minimum=1, maximum=3) == 3
    with pytest.raises(PruneTypeError, match=r"^n must be an integer >= 1; got 2\.0$"):
        V.integer("n", 2.0, minimum=1)
    with pytest.raises(PruneError, match=r"^stride must be an integer in \[1, 4\]; got 5$"):
        V.integer("stride", 5, minimum=1, maximum=4)
    assert V.boolean("flag", False) is False
    with pytest.raises(PruneTypeError, match="^flag must be True or False; got 1$"):
        V.boolean("flag", 1)
    assert V.choice("per", "row", ("layer", "row")) == "row"
    with pytest.raises(PruneError, match=r"^per must be one of 'layer', 'row'; got 'col'$") as e:
        V.choice("per", "col", ("layer", "row"))
    assert not isinstance(e.value, TypeError)
    with pytest.raises(PruneTypeError):
        V.choice("per", 3, ("layer", "row"))
