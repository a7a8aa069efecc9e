"""Schedules are pure functions of the step whose configs round-trip exactly."""

from __future__ import annotations

import warnings

import pytest
import torch

import prunekit as pk
from prunekit.callbacks import PruningCallback, prune_on_schedule
from prunekit.registry import available
from prunekit.schedules import Gradual, Iterative, OneShot, Schedule, ScheduleWarning, make, printed_warnings


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
        ("gradual", dict(sparsity=1.0), r"sparsity must be a number in \[0, 1\); got 1\.0$"),
        ("gradual", dict(sparsity=0.5, begin=10, end=5), "must be after"),
        ("gradual", dict(sparsity=0.5, initial=0.7), "above the final"),
        ("gradual", dict(sparsity=0.5, frequency=0), "frequency must be an integer >= 1; got 0$"),
        ("iterative", dict(sparsity=0.5, rounds=0), "rounds must be an integer >= 1; got 0$"),
        ("oneshot", dict(sparsity="x"), r"sparsity must be a number in \[0, 1\); got 'x'$"),
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


def test_gradual_window_shorter_than_frequency_warns_and_prunes_once():
    with pytest.warns(ScheduleWarning) as caught:
        s = Gradual(0.9, begin=0, end=10, frequency=25)
    message = str(caught[0].message)
    assert "gradual schedule Gradual(sparsity=0.9, begin=0, end=10, frequency=25" in message
    assert "has 10 steps, fewer than frequency=25" in message
    assert "prunes once (step 10 -> 0.9): one-shot pruning" in message
    assert "smaller frequency (<= 2)" in message and "longer window (end - begin >= 100" in message
    assert "\n" not in message
    assert s.pruning_steps() == [10]  # the warning tells the truth
    assert s.degeneracy() is not None and s.degeneracy().pruning_steps == (10,)


def test_gradual_window_shorter_than_frequency_warns_even_with_two_prunings():
    with pytest.warns(ScheduleWarning, match=r"has 5 steps, fewer than frequency=10, so it prunes 2 times "
                                             r"\(step 0 -> 0.2, step 5 -> 0.9\): no ramp"):
        Gradual(0.9, begin=0, end=5, frequency=10, initial=0.2)


def test_gradual_with_room_for_one_pruning_warns():
    with pytest.warns(ScheduleWarning, match=r"has 10 steps, room for only one pruning at frequency=10"):
        s = Gradual(0.5, begin=3, end=13, frequency=10)
    assert s.pruning_steps() == [13]


def test_iterative_with_one_round_warns():
    with pytest.warns(ScheduleWarning, match=r"Iterative\(sparsity=0.9, rounds=1.*prunes once \(step 0 -> 0.9\).*"
                                             r"Use rounds >= 2"):
        s = Iterative(0.9, rounds=1, every=10)
    assert s.pruning_steps() == [0]


def test_schedules_that_prune_several_times_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleWarning)
        assert Gradual(0.9, end=100, frequency=10).pruning_steps() == list(range(10, 101, 10))
        assert Iterative(0.9, rounds=3, every=10).pruning_steps() == [0, 10, 20]
        assert OneShot(0.9).degeneracy() is None and OneShot(0.9, step=7).pruning_steps() == [7]
        assert Gradual(0.0, end=5, frequency=10).degeneracy() is None  # nothing to prune


def test_degeneracy_within_a_run_names_the_steps_and_what_to_change():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleWarning)
        g = Gradual(0.9, end=1000, frequency=100)
        it = Iterative(0.9, rounds=3, every=100)
    assert g.degeneracy(300) is None and it.degeneracy(250) is None
    short = str(g.degeneracy(50))
    assert "in a run of 50 steps" in short and "has 50 steps, fewer than frequency=100" in short
    assert "never prunes" in short and "more steps (at least 1000: more epochs)" in short
    assert "smaller frequency (<= 12)" in short
    cut = str(it.degeneracy(50))
    assert "only 1 of its 3 rounds falls in the run" in cut
    assert "Run at least 200 steps (more epochs) or every <= 25" in cut
    assert "never prunes in a run of 5 steps" in str(OneShot(0.9, step=10).degeneracy(5))


def test_pruning_callback_checks_the_schedule_against_the_run_length():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleWarning)
        g = Gradual(0.9, end=1000, frequency=100)
        PruningCallback(g, steps=1000)  # long enough: silent
    with pytest.warns(ScheduleWarning, match=r"in a run of 60 steps: .* has 60 steps, fewer than frequency=100"):
        PruningCallback(g, steps=60)
    with pytest.raises(ValueError, match="steps must be an integer >= 0; got -1$"):
        PruningCallback(g, steps=-1)


def test_prune_on_schedule_warns_when_the_epochs_are_too_short():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    data = torch.utils.data.TensorDataset(torch.randn(100, 8), torch.randint(0, 3, (100,)))
    with pytest.warns(ScheduleWarning, match=r"gradual schedule .* in a run of 1 step: .* prunes once .*"
                                             r"\(epochs=1, 1 optimizer step each\)\. Use epochs >= 3, or the oneshot"):
        res = prune_on_schedule(model, data, 0.5, schedule="gradual", epochs=1, batch_size=128)
    assert res.sparsity == pytest.approx(0.5, abs=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleWarning)
        prune_on_schedule(model, data, 0.6, schedule="gradual", epochs=3, batch_size=128)
    with pytest.raises(ValueError, match=r"epochs must be an integer >= 1 \(schedule 'iterative' prunes while "
                                         r"training; use the oneshot schedule to prune without training\); got 0$"):
        prune_on_schedule(model, data, 0.5, schedule="iterative", epochs=0)


def test_printed_warnings_routes_schedule_warnings_only():
    lines: list[str] = []
    with pytest.warns(UserWarning, match="other"):
        with printed_warnings(lines.append):
            Gradual(0.9, end=10, frequency=25)
            warnings.warn("other", UserWarning)
    assert len(lines) == 1 and lines[0].startswith("gradual schedule Gradual(") and "frequency=25" in lines[0]


def test_from_config_with_an_unknown_key_names_what_the_schedule_takes():
    from prunekit.errors import PruneTypeError
    from prunekit.regularizers import Regularizer, make as make_regularizer
    from prunekit.schedules import Gradual

    with pytest.raises(PruneTypeError, match=r"schedule Gradual: .*'bogus'; it takes sparsity, begin, end, frequency"):
        Gradual.from_config({"sparsity": 0.5, "bogus": 1})
    assert Gradual.from_config(Gradual(0.5, begin=0, end=10).get_config()) == Gradual(0.5, begin=0, end=10)
    reg = make_regularizer("l1", strength=1e-4)
    with pytest.raises(PruneTypeError, match=r"regularizer .*'bogus'; it takes"):
        type(reg).from_config({**reg.get_config(), "bogus": 1})
    assert isinstance(type(reg).from_config(reg.get_config()), Regularizer)
