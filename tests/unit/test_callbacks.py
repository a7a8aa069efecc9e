"""Pruning on a schedule during training, through prunekit.train.fit and a plain loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.callbacks import PruningCallback
from prunekit.schedules import Gradual, OneShot
from prunekit.train import fit


def _data(digits_batches):
    x = torch.cat([b[0] for b in digits_batches])
    y = torch.cat([b[1] for b in digits_batches])
    return torch.utils.data.TensorDataset(x, y)


def test_gradual_pruning_during_fit(mlp, digits_batches):
    cb = PruningCallback(Gradual(0.8, begin=0, end=6, frequency=2), allocation="lamp")
    fit(mlp, _data(digits_batches), epochs=4, batch_size=64, progress=False, callbacks=[cb])
    assert [s for s, _ in cb.history] == [2, 4, 6]
    targets = [t for _, t in cb.history]
    assert targets == sorted(targets) and targets[-1] == pytest.approx(0.8)
    assert pk.sparsity(mlp) == pytest.approx(0.8, abs=1e-3)  # zeros held through later steps
    assert cb.state_dict()["schedule"] == "gradual"


def test_oneshot_before_training_and_plain_loop(mlp, digits_batches):
    cb = PruningCallback(OneShot(0.5), criterion="taylor", data=digits_batches[:1],
                         loss_fn=nn.functional.cross_entropy)
    cb.on_train_begin(mlp)
    assert pk.sparsity(mlp) == pytest.approx(0.5, abs=1e-3)
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1, momentum=0.9)
    for step, (x, y) in enumerate(digits_batches):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(mlp(x), y)
        loss.backward()
        opt.step()
        cb.on_step_end(step, mlp, loss.item())
    assert cb.history == [(0, 0.5)]
    assert pk.sparsity(mlp) == pytest.approx(0.5, abs=1e-3)


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="unknown criterion"):
        PruningCallback("gradual", schedule_args={"sparsity": 0.5}, criterion="nope")
    with pytest.raises(TypeError, match="schedule sets the sparsity"):
        PruningCallback(OneShot(0.5), sparsity=0.3)


def test_targets_the_pruner_refuses_fail_at_construction():
    with pytest.raises(pk.PruneError, match=r"Gradual prunes to sparsity 0.7 at step 5.*conflicts with N:M 2:4"):
        PruningCallback(Gradual(0.8, begin=0, end=10, frequency=5), granularity="2:4")
    cb = PruningCallback(OneShot(0.5, step=0), granularity="2:4")  # the pattern's own sparsity
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    fit(model, (torch.randn(64, 64), torch.randint(0, 10, (64,))), epochs=1, batch_size=32, progress=False, callbacks=[cb])
    assert float((model[0].weight == 0).float().mean()) == 0.5
