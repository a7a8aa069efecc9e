"""Early stop on an accuracy floor: prunekit.callbacks.AccuracyFloor with prunekit.train.fit.

Accuracy is made to collapse for real: a one-shot pruning to 99.5 % at a chosen step leaves
the network near chance on held-out digits, and the floor must stop the run right there.
"""

from __future__ import annotations

import pytest
import torch

from prunekit import datasets, zoo
from prunekit.callbacks import AccuracyFloor, PruningCallback
from prunekit.errors import PruneError, PruneTypeError
from prunekit.schedules import OneShot
from prunekit.train import CHECKPOINT_FILE, fit, load_checkpoint

STEPS_PER_EPOCH = 22  # ceil(1347 / 64)


@pytest.fixture(scope="module")
def digits():
    return datasets.load_digits("train", flatten=True), datasets.load_digits("test", flatten=True)


class CrashAt:
    """Raises after step ``at`` (0-based), standing in for a crash; None: never."""

    def __init__(self, at: int | None) -> None:
        self.at = at

    def on_step_end(self, step: int, model, loss: float) -> None:
        if step == self.at:
            raise KeyboardInterrupt("simulated crash")


def _run(digits, *, prune_at=None, epochs=4, crash_at=None, ckpt=None, every_ckpt=0, **floor_args):
    train, held_out = digits
    torch.manual_seed(0)
    model = zoo.create("lenet300100", in_features=64, hidden=(32,))
    callbacks = []
    if prune_at is not None:
        # 99.5 % of 2,400 weights: 12 left, accuracy near chance.
        callbacks.append(PruningCallback(OneShot(0.995, step=prune_at)))
    floor = AccuracyFloor(held_out, **{"floor": 0.5, **floor_args})
    callbacks += [floor, CrashAt(crash_at)]
    history = fit(
        model, train, epochs=epochs, lr=1e-2, batch_size=64, seed=0, progress=False,
        callbacks=callbacks, checkpoint_dir=ckpt, checkpoint_every=every_ckpt,
    )
    return model, floor, history


def test_stops_at_the_epoch_accuracy_falls_below_the_floor(digits):
    # Pruned after the last step of epoch 1: the end-of-epoch-1 evaluation sees it.
    _, floor, history = _run(digits, prune_at=2 * STEPS_PER_EPOCH, epochs=5)
    assert history["stopped"] is True
    assert history["epochs"] == 2 and len(history["loss"]) == 2
    assert history["steps"] == 2 * STEPS_PER_EPOCH
    assert floor.stopped_epoch == 1 and floor.stopped_step == 2 * STEPS_PER_EPOCH
    (s0, acc0), (s1, acc1) = floor.history
    assert (s0, s1) == (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)
    assert acc0 >= 0.5 > acc1
    assert floor.last_accuracy == acc1


def test_patience_tolerates_evaluations_below_the_floor(digits):
    _, floor, history = _run(digits, prune_at=2 * STEPS_PER_EPOCH, epochs=6, patience=2)
    # Below the floor at the ends of epochs 1, 2 and 3: the third one in a row stops it.
    assert floor.stopped_epoch == 3 and history["epochs"] == 4 and history["stopped"]
    accs = [a for _, a in floor.history]
    assert len(accs) == 4 and accs[0] >= 0.5 and all(a < 0.5 for a in accs[1:])


def test_does_not_stop_while_accuracy_stays_above_the_floor(digits):
    _, floor, history = _run(digits, prune_at=None, epochs=4)
    assert history["stopped"] is False and history["epochs"] == 4
    assert history["steps"] == 4 * STEPS_PER_EPOCH
    assert [s for s, _ in floor.history] == [STEPS_PER_EPOCH * (e + 1) for e in range(4)]
    assert all(a >= 0.5 for _, a in floor.history)
    assert floor.stop_training is False and floor.stopped_epoch is None


def test_every_n_steps_stops_in_the_middle_of_an_epoch(digits):
    _, floor, history = _run(digits, prune_at=33, epochs=4, every=11)
    assert [s for s, _ in floor.history] == [11, 22, 33]
    assert history["stopped"] and history["steps"] == 33
    # Epoch 1 is closed after its 11th batch: its loss averages those batches only.
    assert history["epochs"] == 2 and len(history["loss"]) == 2
    assert floor.stopped_step == 33 and floor.stopped_epoch == 1


def test_a_stopped_run_resumes_as_stopped(digits, tmp_path):
    stopped, floor, history = _run(digits, prune_at=2 * STEPS_PER_EPOCH, epochs=5, ckpt=tmp_path)
    saved = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert saved["epoch"] == 2 and saved["history"]["stopped"] is True

    again, floor2, history2 = _run(digits, prune_at=2 * STEPS_PER_EPOCH, epochs=5, ckpt=tmp_path)
    assert history2["stopped"] and history2["steps"] == history["steps"]
    assert history2["loss"] == history["loss"]
    assert floor2.history == floor.history and floor2.stopped_epoch == 1
    a, b = again.state_dict(), stopped.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_a_crash_stops_where_the_uninterrupted_run_does(digits, tmp_path):
    _, ref_floor, ref_history = _run(digits, prune_at=2 * STEPS_PER_EPOCH, epochs=5, patience=1)
    with pytest.raises(KeyboardInterrupt):
        _run(digits, prune_at=2 * STEPS_PER_EPOCH, epochs=5, patience=1, crash_at=50,
             ckpt=tmp_path, every_ckpt=7)
    # One evaluation below the floor (end of epoch 1) is in the checkpoint at step 49.
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["callbacks"][1]["bad"] == 1
    _, floor, history = _run(digits, prune_at=2 * STEPS_PER_EPOCH, epochs=5, patience=1,
                             ckpt=tmp_path, every_ckpt=7)
    assert floor.stopped_epoch == ref_floor.stopped_epoch == 2
    assert floor.history == ref_floor.history
    assert history["steps"] == ref_history["steps"] == 3 * STEPS_PER_EPOCH


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"floor": 1.5}, PruneError, r"floor must be a number in \[0, 1\] \(an accuracy\); got 1\.5$"),
        ({"floor": -0.1}, PruneError, r"floor must be .*; got -0\.1$"),
        ({"floor": float("nan")}, PruneError, r"floor must be .*; got nan$"),
        ({"floor": "0.9"}, PruneTypeError, r"floor must be .*; got '0\.9'$"),
        ({"floor": True}, PruneTypeError, r"floor must be .*; got True$"),
        ({"floor": 0.9, "patience": -1}, PruneError, r"patience must be an integer >= 0; got -1$"),
        ({"floor": 0.9, "patience": 1.5}, PruneTypeError, r"patience must be an integer >= 0; got 1\.5$"),
        ({"floor": 0.9, "every": 0}, PruneError, r"every must be an integer >= 1; got 0$"),
        ({"floor": 0.9, "batch_size": 0}, PruneError, r"batch_size must be an integer >= 1; got 0$"),
    ],
)
def test_bad_arguments_name_the_value(digits, kwargs, error, match):
    with pytest.raises(error, match=match):
        AccuracyFloor(digits[1], **kwargs)


def test_missing_data_is_refused():
    with pytest.raises(PruneTypeError, match="held-out"):
        AccuracyFloor(None, floor=0.9)
