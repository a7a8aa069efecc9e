"""The train/evaluate loop: learning, modes, validation, callbacks, masked models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit import datasets, zoo
from prunekit.errors import PruneError, PruneTypeError
from prunekit.masking import apply_masks
from prunekit.train import evaluate, fit, set_seed


@pytest.fixture(scope="module")
def digits():
    return (
        datasets.load_digits("train", flatten=True),
        datasets.load_digits("test", flatten=True),
    )


def tiny_data(n: int = 100, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_fit_learns_digits(digits):
    train, test = digits
    model = zoo.create("lenet300100", in_features=64)
    before = evaluate(model, test)
    history = fit(model, train, epochs=5, lr=1e-3, batch_size=64, seed=0, progress=False)
    after = evaluate(model, test)
    assert before < 0.3
    assert after > 0.85
    assert history["epochs"] == 5
    assert len(history["loss"]) == len(history["time"]) == 5
    assert history["loss"][-1] < history["loss"][0]
    assert history["steps"] == 5 * 22  # ceil(1347 / 64)
    assert all(t > 0 for t in history["time"])


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "ADAM"])
def test_fit_optimizer_names(digits, optimizer):
    train, _ = digits
    model = zoo.create("lenet300100", in_features=64, hidden=(32,))
    history = fit(
        model, train, epochs=3, lr=1e-2, optimizer=optimizer, weight_decay=1e-4, seed=0,
        progress=False,
    )
    assert history["loss"][-1] < history["loss"][0]


def test_fit_accepts_optimizer_instance_and_loader():
    model = nn.Linear(8, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(tiny_data(), batch_size=25)
    before = model.weight.detach().clone()
    history = fit(model, loader, epochs=2, optimizer=opt, progress=False)
    assert history["steps"] == 8
    assert not torch.equal(model.weight, before)
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.1


def test_fit_accepts_tensor_pair():
    x, y = tiny_data().tensors
    history = fit(nn.Linear(8, 3), (x, y), batch_size=10, progress=False)
    assert history["steps"] == 10


def test_fit_is_reproducible_with_seed():
    results = []
    for disturb in (1, 2):
        torch.manual_seed(0)
        model = nn.Linear(8, 3)
        torch.manual_seed(disturb)  # shuffling must depend on `seed`, not the global state
        fit(model, tiny_data(), epochs=2, batch_size=16, seed=7, progress=False)
        results.append(model.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_fit_custom_loss_fn():
    calls = []

    def loss_fn(logits, y):
        calls.append(logits.shape)
        return nn.functional.cross_entropy(logits, y)

    fit(nn.Linear(8, 3), tiny_data(), batch_size=50, loss_fn=loss_fn, progress=False)
    assert calls == [(50, 3), (50, 3)]


def test_fit_progress_bar_does_not_break_training():
    history = fit(nn.Linear(8, 3), tiny_data(), batch_size=50, progress=True)
    assert history["steps"] == 2


class Recorder:
    def __init__(self):
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.epochs: list[int] = []
        self.logs: list[dict] = []

    def on_step_end(self, step, model, loss):
        self.steps.append(step)
        self.losses.append(loss)

    def on_epoch_end(self, epoch, model, logs):
        self.epochs.append(epoch)
        self.logs.append(dict(logs))


def test_callbacks_get_step_and_epoch_counts():
    rec = Recorder()

    class EpochOnly:  # callbacks may define only some hooks
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, epoch, model, logs):
            self.seen.append(epoch)

    only = EpochOnly()
    history = fit(
        nn.Linear(8, 3), tiny_data(100), epochs=3, batch_size=32, callbacks=[rec, only],
        progress=False,
    )
    assert rec.steps == list(range(12))  # ceil(100 / 32) = 4 steps per epoch
    assert rec.epochs == [0, 1, 2] == only.seen
    assert [log["steps"] for log in rec.logs] == [4, 8, 12]
    assert all(isinstance(v, float) for v in rec.losses)
    assert [log["loss"] for log in rec.logs] == pytest.approx(history["loss"])


def test_callback_sees_model_after_step():
    model = nn.Linear(8, 3)
    snapshots = []

    class Snap:
        def on_step_end(self, step, m, loss):
            assert m is model
            snapshots.append(m.weight.detach().clone())

    start = model.weight.detach().clone()
    fit(model, tiny_data(), batch_size=100, optimizer="sgd", lr=0.5, callbacks=[Snap()], progress=False)
    assert len(snapshots) == 1
    assert not torch.equal(snapshots[0], start)


@pytest.mark.parametrize("lr", [0, -1e-3, float("nan"), float("inf")])
def test_bad_lr(lr):
    with pytest.raises(PruneError, match="lr") as info:
        fit(nn.Linear(8, 3), tiny_data(), lr=lr, progress=False)
    assert repr(lr) in str(info.value)


@pytest.mark.parametrize("epochs", [0, -2, 1.5, True, "3"])
def test_bad_epochs(epochs):
    with pytest.raises(PruneError, match="epochs") as info:
        fit(nn.Linear(8, 3), tiny_data(), epochs=epochs, progress=False)
    assert repr(epochs) in str(info.value)


def test_unknown_optimizer_lists_names():
    with pytest.raises(PruneError, match="'adamw'") as info:
        fit(nn.Linear(8, 3), tiny_data(), optimizer="rmsprop", progress=False)
    assert "'rmsprop'" in str(info.value)


def test_optimizer_of_wrong_type():
    with pytest.raises(PruneTypeError, match="optimizer"):
        fit(nn.Linear(8, 3), tiny_data(), optimizer=42, progress=False)


def test_bad_weight_decay_and_batch_size():
    with pytest.raises(PruneError, match="weight_decay"):
        fit(nn.Linear(8, 3), tiny_data(), weight_decay=-1.0, progress=False)
    with pytest.raises(PruneError, match="batch_size"):
        fit(nn.Linear(8, 3), tiny_data(), batch_size=0, progress=False)


def test_one_pass_iterator_with_several_epochs_is_refused():
    batches = iter(DataLoader(tiny_data(), batch_size=10))
    with pytest.raises(PruneError, match="epochs=2"):
        fit(nn.Linear(8, 3), batches, epochs=2, progress=False)


def test_bad_validation_leaves_model_unchanged():
    model = nn.Linear(8, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PruneError):
        fit(model, tiny_data(), lr=-1, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def _mixed_mode_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.BatchNorm1d(16), nn.Linear(16, 3))
    model.train()
    model[2].eval()  # a frozen BatchNorm inside a training model
    return model


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_evaluate_restores_modes(mode):
    model = _mixed_mode_model()
    if mode == "train":
        model.train()
    elif mode == "eval":
        model.eval()
    before = [m.training for m in model.modules()]
    evaluate(model, tiny_data())
    assert [m.training for m in model.modules()] == before


def test_fit_restores_modes():
    model = _mixed_mode_model()
    before = [m.training for m in model.modules()]
    fit(model, tiny_data(), batch_size=50, progress=False)
    assert [m.training for m in model.modules()] == before


def test_evaluate_runs_in_eval_mode_without_grad():
    model = _mixed_mode_model().train()
    data = tiny_data()
    # Dropout active would make two runs differ; in eval mode they agree.
    assert evaluate(model, data) == evaluate(model, data)

    class NoGradCheck(nn.Module):
        def forward(self, x):
            assert not torch.is_grad_enabled()
            return torch.zeros(len(x), 3)

    evaluate(NoGradCheck(), data)


def test_evaluate_accuracy_value_and_inputs():
    class Echo(nn.Module):  # predicts class = first feature
        def forward(self, x):
            return nn.functional.one_hot(x[:, 0].long(), 3).float()

    x = torch.tensor([[0.0], [1.0], [2.0], [0.0]])
    y = torch.tensor([0, 1, 1, 2])
    assert evaluate(Echo(), TensorDataset(x, y)) == 0.5
    assert evaluate(Echo(), (x, y), batch_size=3) == 0.5
    assert evaluate(Echo(), DataLoader(TensorDataset(x, y), batch_size=1)) == 0.5


def test_evaluate_empty_data():
    with pytest.raises(PruneError, match="empty"):
        evaluate(nn.Linear(1, 2), TensorDataset(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)))


def test_masked_model_trains_and_keeps_zeros():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    mask = (torch.rand(16, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    apply_masks(model, {"0.weight": mask})
    original = model[0].parametrizations.weight.original
    ident = id(original)
    before = original.detach().clone()
    fit(model, tiny_data(), epochs=2, batch_size=20, optimizer="adamw", weight_decay=0.1, progress=False)
    assert id(model[0].parametrizations.weight.original) == ident
    assert torch.all(model[0].weight[mask == 0] == 0)
    assert not torch.equal(original.detach()[mask == 1], before[mask == 1])


def test_set_seed_reproduces_random_streams():
    import random

    import numpy as np

    set_seed(5)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_seed(5)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b
    with pytest.raises(PruneError):
        set_seed(-1)


def test_fit_reads_an_iterable_dataset_in_its_own_order():
    from torch.utils.data import IterableDataset

    torch.manual_seed(0)
    x, y = torch.randn(96, 8), torch.randint(0, 3, (96,))

    class Stream(IterableDataset):
        def __iter__(self):
            return zip(x, y)

    runs = []
    for data in (Stream(), [(x[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)]):  # the same batches, in order
        torch.manual_seed(1)
        model = nn.Linear(8, 3)
        fit(model, data, epochs=2, lr=0.1, batch_size=16, seed=0, progress=False)
        runs.append(model.weight.detach().clone())
    assert torch.equal(runs[0], runs[1])
