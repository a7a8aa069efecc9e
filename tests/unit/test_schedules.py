"""Schedules are pure functions of the step whose configs round-trip exactly."""

from __future__ import annotations

import pytest

import prunekit as pk
from prunekit.registry import available
from prunekit.schedules import Gradual, Iterative, OneShot, Schedule, make


def test_registry_lists_schedules():
    assert available("schedule") == ["gradual", "iterative", "oneshot"]


def test_oneshot():
    s = OneShot(0.9, step=5)
    assert [s(t) for t in (0, 5, 6)] == [(False, 0.0), (True, 0.9), (False, 0.9)]


def test_gradual_matches_zhu_gupta_formula():
    s = Gradual(0.9, begin=100, end=1100, frequency=100, initial=0.1)
    for t in range(100, 1101, 50):
        expect = 0.9 + (0.1 - 0.9) * (1 - (t - 100) / 1000) ** 3
        assert s.sparsity_at(t) == pytest.approx(expect)
    assert s.sparsity_at(50) == 0.0 and s.sparsity_at(5000) == pytest.approx(0.9)
    prune_steps = [t for t in range(0, 2000) if s(t)[0]]
    assert prune_steps == list(range(100, 1101, 100))
    # Monotone non-decreasing: a later step never asks for fewer zeros.
    values = [s.sparsity_at(t) for t in range(0, 1200)]
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_iterative_removes_same_fraction_each_round():
    s = Iterative(0.99, rounds=3, every=100, begin=10)
    steps = [t for t in range(0, 1000) if s(t)[0]]
    assert steps == [10, 110, 210]
    kept = [1 - s.sparsity_at(t) for t in steps]
    assert kept[1] / kept[0] == pytest.approx(kept[2] / kept[1])
    assert s.sparsity_at(210) == pytest.approx(0.99)
    assert s.final_step == 210


@pytest.mark.parametrize("name", available("schedule"))
def test_config_round_trip_and_purity(name):
    s = make(name, sparsity=0.8)
    assert isinstance(s, Schedule)
    again = type(s).from_config(s.get_config())
    assert again == s
    assert [s(t) for t in range(0, 3000, 37)] == [again(t) for t in range(0, 3000, 37)]
    assert make(s) is s


@pytest.mark.parametrize(
    "name,kwargs,pattern",
    [
        ("gradual", dict(sparsity=1.0), r"sparsity=1\.0 is outside"),
        ("gradual", dict(sparsity=0.5, begin=10, end=5), "must be after"),
        ("gradual", dict(sparsity=0.5, initial=0.7), "above the final"),
        ("gradual", dict(sparsity=0.5, frequency=0), "frequency must be an int >= 1"),
        ("iterative", dict(sparsity=0.5, rounds=0), "rounds must be an int >= 1"),
        ("oneshot", dict(sparsity="x"), "finite number"),
        ("cosine", dict(sparsity=0.5), "unknown schedule 'cosine'"),
        ("gradual", dict(sparsity=0.5, bogus=1), "bogus"),
    ],
)
def test_bad_arguments(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        make(name, **kwargs)


def test_negative_step_rejected():
    with pytest.raises(ValueError, match="step"):
        Gradual(0.5)(-1)
    assert pk.schedules.make is make
