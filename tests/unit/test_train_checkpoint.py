"""Checkpoints of the train loop: atomic writes, and in-process resume after a failure."""

from __future__ import annotations

import os

import pytest
import torch

from prunekit import datasets, zoo
from prunekit.callbacks import PruningCallback
from prunekit.errors import PruneError, PruneTypeError
from prunekit.masking import get_masks
from prunekit.schedules import Gradual
from prunekit.checkpoint import atomic_save
from prunekit.train import CHECKPOINT_FILE, fit, load_checkpoint


class ResumablePruning(PruningCallback):
    """PruningCallback that also restores its history from a checkpoint."""

    def load_state_dict(self, state: dict) -> None:
        self.history = [tuple(h) for h in state["history"]]


class CrashAt:
    """Raises after step ``at`` (0-based), standing in for a crash; None: never."""

    def __init__(self, at: int | None) -> None:
        self.at = at

    def on_step_end(self, step: int, model, loss: float) -> None:
        if step == self.at:
            raise KeyboardInterrupt("simulated crash")


@pytest.fixture(scope="module")
def train_set():
    return datasets.load_digits("train", flatten=True)


def _run(train_set, ckpt_dir=None, crash_at=None, every=7, epochs=3):
    torch.manual_seed(0)
    model = zoo.create("lenet300100", in_features=64, hidden=(32,))
    pruning = ResumablePruning(Gradual(0.7, begin=5, end=45, frequency=5))
    history = fit(
        model, train_set, epochs=epochs, batch_size=64, seed=0, progress=False,
        callbacks=[pruning, CrashAt(crash_at)], checkpoint_dir=ckpt_dir, checkpoint_every=every,
    )
    return model, pruning, history


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("every", [7, 0])
def test_resume_after_crash_matches_uninterrupted_run(train_set, tmp_path, every):
    ref, ref_cb, ref_hist = _run(train_set)
    with pytest.raises(KeyboardInterrupt):
        _run(train_set, tmp_path, crash_at=40, every=every)
    saved = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    # every=7: mid-epoch (step 35 is batch 13 of epoch 1); every=0: the end of epoch 0.
    assert saved["step"] == (35 if every else 22)
    assert saved["batch"] == (13 if every else 0)
    model, cb, hist = _run(train_set, tmp_path, crash_at=None, every=every)
    _same_state(model, ref)
    assert get_masks(model).keys() == get_masks(ref).keys() != set()
    assert cb.history == ref_cb.history
    assert hist["loss"] == ref_hist["loss"]
    assert hist["steps"] == ref_hist["steps"] == 3 * 22


def test_finished_run_resumes_as_finished(train_set, tmp_path):
    first, _, hist = _run(train_set, tmp_path, epochs=1)
    again, _, hist2 = _run(train_set, tmp_path, epochs=1)
    _same_state(again, first)
    assert hist2["loss"] == hist["loss"] and hist2["steps"] == 22
    # More epochs continue from the finished one.
    _, _, hist3 = _run(train_set, tmp_path, epochs=2)
    assert hist3["epochs"] == 2 and hist3["loss"][0] == hist["loss"][0]


def test_resume_false_starts_over(train_set, tmp_path):
    _run(train_set, tmp_path, epochs=1)
    model = zoo.create("lenet300100", in_features=64, hidden=(32,))
    hist = fit(model, train_set, epochs=1, batch_size=64, seed=0, progress=False,
               checkpoint_dir=tmp_path, resume=False)
    assert hist["steps"] == 22
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["callbacks"] == []


def test_resume_with_other_callbacks_is_refused(train_set, tmp_path):
    _run(train_set, tmp_path, epochs=1)
    model = zoo.create("lenet300100", in_features=64, hidden=(32,))
    with pytest.raises(PruneError, match="callbacks"):
        fit(model, train_set, epochs=2, seed=0, progress=False, checkpoint_dir=tmp_path)


@pytest.mark.parametrize("bad, exc", [(-1, PruneError), (1.5, PruneTypeError), (True, PruneTypeError)])
def test_checkpoint_every_is_validated(tmp_path, bad, exc):
    with pytest.raises(exc, match="checkpoint_every"):
        fit(torch.nn.Linear(2, 2), (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)),
            progress=False, checkpoint_dir=tmp_path, checkpoint_every=bad)


def test_not_a_checkpoint(tmp_path):
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(PruneError, match="not a prunekit training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def _failing_save(obj, f, *args, **kwargs):
    f.write(b"half a checkpoint")  # the temp file now exists and holds garbage
    raise OSError("disk full")


def test_atomic_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"v": 1}, path)
    monkeypatch.setattr(torch, "save", _failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"v": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_failed_checkpoint_write_in_fit_keeps_last_good_one(train_set, tmp_path, monkeypatch):
    _run(train_set, tmp_path, epochs=1)
    path = tmp_path / CHECKPOINT_FILE
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _failing_save)
    with pytest.raises(OSError, match="disk full"):
        _run(train_set, tmp_path, epochs=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 22
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]


@pytest.mark.parametrize("umask,folder_mode,file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_checkpoint_folder_and_file_follow_the_umask(tmp_path, umask, folder_mode, file_mode):
    """``last.pt`` gets the mode a plain ``open`` gives (not mkstemp's 0600), also when replaced."""
    folder = tmp_path / "ckpt"
    x, y = torch.randn(8, 2), torch.zeros(8, dtype=torch.long)
    old = os.umask(umask)
    try:
        fit(torch.nn.Linear(2, 2), (x, y), epochs=1, batch_size=4, progress=False, checkpoint_dir=folder)
        atomic_save(load_checkpoint(folder / CHECKPOINT_FILE), folder / CHECKPOINT_FILE)  # replaced
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == folder_mode
    assert [(p.name, p.stat().st_mode & 0o777) for p in folder.iterdir()] == [(CHECKPOINT_FILE, file_mode)]
