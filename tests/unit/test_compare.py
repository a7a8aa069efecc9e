"""prunekit.compare: every method on the same model, data and epoch budget (real digits)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import TensorDataset

from prunekit import datasets, zoo
from prunekit.callbacks import LRScheduler
from prunekit.compare import DENSE, METHODS, Recipe, Row, ShuffledBatches, compare, format_rows
from prunekit.errors import PruneError, PruneTypeError
from prunekit.schedules import ScheduleWarning
from prunekit.train import fit


@pytest.fixture(scope="module")
def digits():
    return datasets.load_digits("train", flatten=True), datasets.load_digits("test", flatten=True)


def _mlp() -> torch.nn.Module:
    return zoo.create("lenet300100", in_features=64, hidden=(48, 32))


@pytest.fixture(scope="module")
def rows(digits):
    train, test = digits
    recipe = Recipe(sparsity=0.9, epochs=3, lr=1e-2, finetune_lr=1e-2, gradual_frequency=5)
    # 1 fine-tuning epoch: iterative gets a single round; the ramp (22 steps, every 5) is fine.
    with pytest.warns(ScheduleWarning) as caught:
        rows = compare(_mlp, train, test, recipe, val=test, seeds=(0,))
    assert [str(w.message).split(" degenerates")[0] for w in caught] == ["'iterative'"]
    return rows


def test_every_method_reaches_the_target_on_the_same_budget(rows):
    assert [r.method for r in rows] == [DENSE, *METHODS]
    for r in rows:
        # 3 epochs: 2 of training (round(4/7 * 3)) then 1 of fine-tuning, for every method.
        assert (r.epochs, r.train_epochs, r.finetune_epochs) == (3, 2, 1), r.method
        assert r.seconds > 0 and r.val_accuracy == r.accuracy
        if r.method == DENSE:
            assert r.sparsity < 0.01
        else:
            assert r.sparsity == pytest.approx(0.9, abs=2e-3), r.method
    by = {r.method: r for r in rows}
    assert by[DENSE].accuracy > 0.9  # real training, not a stub
    assert all(by[m].accuracy > 0.5 for m in METHODS)


def test_methods_prune_the_way_they_say(rows):
    by = {r.method: r for r in rows}
    assert by["iterative"].detail["rounds"] == 1
    # The ramps reach the target during training; the penalties leave the cut to the threshold.
    for m in ("gradual", "combined"):
        assert by[m].detail["sparsity_before_cut"] == pytest.approx(0.9, abs=2e-3), m
    for m in ("oneshot", "l1", "l2"):
        assert by[m].detail["sparsity_before_cut"] < 0.5, m


def test_runs_are_reproducible_and_share_the_dense_phase(digits, rows):
    train, test = digits
    recipe = Recipe(sparsity=0.9, epochs=3, lr=1e-2, finetune_lr=1e-2, gradual_frequency=5)
    again = compare(_mlp, train, test, recipe, methods=("oneshot", DENSE), seeds=0)
    by = {r.method: r for r in rows}
    assert [r.method for r in again] == ["oneshot", DENSE]
    assert again[0].accuracy == by["oneshot"].accuracy
    assert again[1].accuracy == by[DENSE].accuracy


def test_format_rows_has_a_line_per_method_with_mean_and_std(rows, digits):
    table = format_rows(rows)
    lines = table.splitlines()
    assert len(lines) == 1 + 1 + len(METHODS)
    for name in (DENSE, *METHODS):
        assert sum(line.split()[0] == name for line in lines[1:]) == 1
    assert "2+1" in lines[1] and "90.00" in table and "val acc %" in lines[0]
    two = rows + [Row(**{**rows[0].as_dict(), "seed": 1, "accuracy": rows[0].accuracy - 0.02})]
    dense_line = next(l for l in format_rows(two).splitlines() if l.startswith(DENSE))
    assert f"{100 * (rows[0].accuracy - 0.01):.2f} ± 1.41" in dense_line


def test_format_rows_shows_the_difference_to_dense(rows):
    lines = format_rows(rows).splitlines()
    assert "Δ dense pt" in lines[0]
    dense = 100 * next(r.accuracy for r in rows if r.method == DENSE)
    oneshot = 100 * next(r.accuracy for r in rows if r.method == "oneshot")
    assert lines[1].split()[:5] == [DENSE, f"{dense:.2f}", "±", "0.00", "—"]
    line = next(l for l in lines if l.split()[0] == "oneshot")
    assert line.split()[4] == f"{oneshot - dense:+.2f}"


@pytest.fixture(scope="module")
def short(digits):
    """300 training images: 3 optimizer steps per epoch at batch size 128."""
    train, test = digits
    return TensorDataset(train.tensors[0][:300], train.tensors[1][:300]), test


def test_short_budget_warns_that_gradual_and_iterative_are_one_shot(short):
    train, test = short
    recipe = Recipe(sparsity=0.9, epochs=2, lr=1e-2)  # 1 + 1 epochs of 3 steps; gradual_frequency=25
    with pytest.warns(ScheduleWarning) as caught:
        rows = compare(_mlp, train, test, recipe, methods=("oneshot", "gradual", "iterative", "combined"))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and all("\n" not in m for m in messages)
    ramp, iterative = messages
    assert ramp.startswith("'gradual' and 'combined' degenerate to one-shot pruning")
    assert "the training phase has 3 optimizer steps (1 epoch of 3 batches)" in ramp
    assert "window has 3 steps, fewer than gradual_frequency=25" in ramp
    assert "prunes only at step 3 of 3" in ramp
    assert "epochs >= 59, i.e. a training phase of >= 34 epochs" in ramp and "gradual_frequency <= 1" in ramp
    assert iterative.startswith("'iterative' degenerates to one-shot pruning")
    assert "fine-tuning phase has 1 epoch" in iterative and "epochs >= 4" in iterative
    # The warnings tell the truth: both prune once, to the same mask, as one-shot does.
    by = {r.method: r for r in rows}
    assert by["gradual"].accuracy == by["oneshot"].accuracy == by["iterative"].accuracy


def test_enough_steps_for_the_ramp_do_not_warn(short):
    train, test = short
    recipe = Recipe(sparsity=0.9, epochs=4, lr=1e-2, gradual_frequency=1)  # 2 + 2 epochs: 6 ramp steps, 2 rounds
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleWarning)
        rows = compare(_mlp, train, test, recipe, methods=("gradual", "iterative"))
    by = {r.method: r for r in rows}
    assert by["iterative"].detail["rounds"] == 2
    assert by["gradual"].accuracy != by["iterative"].accuracy


def test_explicit_train_epochs_get_advice_in_train_epochs(short):
    train, test = short
    recipe = Recipe(sparsity=0.9, epochs=3, train_epochs=2, lr=1e-2, gradual_frequency=10)
    with pytest.warns(ScheduleWarning, match=r"6 optimizer steps \(2 epochs of 3 batches\).*"
                                             r"train_epochs >= 14 and epochs >= 15, .*gradual_frequency <= 1"):
        compare(_mlp, train, test, recipe, methods=("gradual",), baseline=False)


def test_the_dense_baseline_is_always_reported(short):
    train, test = short
    recipe = Recipe(sparsity=0.9, epochs=2, lr=1e-2)
    rows = compare(_mlp, train, test, recipe, methods=("oneshot",))
    assert [r.method for r in rows] == [DENSE, "oneshot"]
    dense = rows[0]
    assert dense.sparsity < 0.01 and dense.epochs == 2 and 0 < dense.accuracy <= 1
    alone = compare(_mlp, train, test, recipe, methods=(DENSE,))
    assert alone[0].accuracy == dense.accuracy  # the same training and evaluation
    assert [r.method for r in compare(_mlp, train, test, recipe, methods=("oneshot",), baseline=False)] == ["oneshot"]


def test_phases_split_the_budget():
    assert Recipe(epochs=7).phases == (4, 3)
    assert Recipe(epochs=15).phases == (9, 6)
    assert Recipe(epochs=2).phases == (1, 1)
    assert Recipe(epochs=7, train_epochs=5).phases == (5, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": 1}, PruneError, r"epochs must be an integer >= 2; got 1$"),
        ({"epochs": 7, "train_epochs": 7}, PruneError, r"train_epochs=7 leaves no fine-tuning .* 1 \.\. 6"),
        ({"sparsity": 1.0}, PruneError, r"sparsity must be a number in \[0, 1\); got 1\.0$"),
        ({"sparsity": "high"}, PruneTypeError, r"sparsity must be a number in \[0, 1\); got 'high'$"),
        ({"optimizer": "lion"}, PruneError, r"unknown optimizer 'lion'; available: 'adam', 'adamw', 'sgd'"),
        ({"decay": "step"}, PruneError, r"unknown decay 'step'; available: 'constant', 'cosine'"),
        ({"lr": 0}, PruneError, r"lr must be a number > 0; got 0$"),
        ({"gradual_begin": 0.8, "gradual_end": 0.5}, PruneError, r"gradual_begin=0.8 must be before gradual_end=0.5"),
        ({"gradual_frequency": 0}, PruneError, r"gradual_frequency must be an integer >= 1; got 0$"),
    ],
)
def test_bad_recipes_name_the_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        Recipe(**kwargs)


def test_bad_compare_arguments(digits):
    train, test = digits
    with pytest.raises(PruneError, match=r"unknown method 'snip'; available: .*'gradual'"):
        compare(_mlp, train, test, methods=("snip",))
    with pytest.raises(PruneTypeError, match="train must be a TensorDataset .* got list"):
        compare(_mlp, [(1, 2, 3)], test, Recipe(epochs=2), methods=(DENSE,))
    with pytest.raises(PruneTypeError, match="recipe must be a prunekit.compare.Recipe, got dict"):
        compare(_mlp, train, test, {"epochs": 2})  # type: ignore[arg-type]


def test_shuffled_batches_cover_the_data_in_a_seeded_order():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    a, b = ShuffledBatches(x, y, 4, seed=3), ShuffledBatches(x, y, 4, seed=3)
    assert len(a) == 3
    first = [yb.tolist() for _, yb in a]
    assert first == [yb.tolist() for _, yb in b]
    assert sorted(sum(first, [])) == list(range(10)) and [len(f) for f in first] == [4, 4, 2]
    assert [yb.tolist() for _, yb in a] != first  # the next pass is reshuffled
    with pytest.raises(PruneError, match="batch_size must be an integer >= 1; got 0$"):
        ShuffledBatches(x, y, 0)


def test_lr_scheduler_callback_decays_the_lr_to_zero(digits):
    model = _mlp()
    data = ShuffledBatches(*digits[0].tensors, 128)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    cb = LRScheduler(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2 * len(data)))
    fit(model, data, epochs=2, optimizer=opt, progress=False, callbacks=[cb])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert cb.state_dict()["last_epoch"] == 2 * len(data)
    with pytest.raises(PruneError, match="interval must be one of .*got 'batch'"):
        LRScheduler(cb.scheduler, interval="batch")
    with pytest.raises(PruneTypeError, match="scheduler must be .* got int"):
        LRScheduler(3)
