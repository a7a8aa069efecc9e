"""Recovery by distillation: the loss is what it says, the student moves towards the
teacher on unlabelled inputs, masks stay exact, the teacher never changes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.distillation import distillation_loss
from prunekit.errors import PruneError


def _flat(digits_batches):
    x = torch.cat([b[0] for b in digits_batches]).reshape(-1, 64)
    y = torch.cat([b[1] for b in digits_batches])
    return x, y


def _teacher(x, y) -> nn.Module:
    torch.manual_seed(0)
    t = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    pk.train.fit(t, (x, y), epochs=30, lr=1e-2, batch_size=64, seed=0, progress=False)
    return t.eval()


def _agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x).argmax(1) == b(x).argmax(1)).float().mean())


def test_loss_is_temperature_scaled_kl():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    T = 3.0
    p = F.softmax(t / T, dim=-1)
    expected = (p * (p.log() - F.log_softmax(s / T, dim=-1))).sum(-1).mean() * T * T
    assert torch.allclose(distillation_loss(s, t, T), expected, atol=1e-6)
    assert float(distillation_loss(t, t, T)) == pytest.approx(0.0, abs=1e-6)
    # Sequence logits are compared token by token.
    seq_s, seq_t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    assert torch.allclose(distillation_loss(seq_s, seq_t, 1.0), distillation_loss(seq_s.reshape(6, 5), seq_t.reshape(6, 5), 1.0))


def test_unlabelled_distillation_recovers_a_pruned_student_and_keeps_masks(digits_batches):
    import prunekit.train  # noqa: F401  (pk.train for the teacher)

    x, y = _flat(digits_batches)
    teacher = _teacher(x, y)
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = copy.deepcopy(teacher)
    pk.prune(student, 0.8)
    zeros = {n: m == 0 for n, m in pk.masks(student).items()}
    before = _agreement(student, teacher, x)
    pk.distill(student, teacher, x, epochs=20, lr=1e-2, batch_size=64, temperature=2.0, seed=0, progress=False)
    after = _agreement(student, teacher, x)
    assert after > before + 0.05 and after > 0.9, (before, after)
    for name, z in zeros.items():  # the zeros are still exact
        module, _, attr = name.rpartition(".")
        assert torch.all(getattr(student.get_submodule(module), attr)[z] == 0)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in state.items())  # the teacher is untouched
    assert not teacher.training


def test_labels_and_features_enter_the_loss(digits_batches):
    x, y = _flat(digits_batches)
    teacher = _teacher(x, y)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student[0].weight.mul_(0.5)
    seen = []

    class Spy(nn.Module):  # records the losses fit sees
        def on_step_end(self, step, model, loss):
            seen.append(float(loss))

    pk.distill(student, teacher, [(x, y)], epochs=1, lr=1e-9, alpha=1.0, progress=False, callbacks=[Spy()])
    with torch.no_grad():
        assert seen[0] == pytest.approx(float(F.cross_entropy(copy.deepcopy(student)(x), y)), rel=1e-3)
    seen.clear()
    s2 = copy.deepcopy(teacher)
    with torch.no_grad():
        s2[0].weight.mul_(0.5)
    pk.distill(s2, teacher, [x], epochs=1, lr=1e-9, features={"0": "0"}, feature_weight=1.0, progress=False,
               callbacks=[Spy()])
    with torch.no_grad():
        kd = distillation_loss(s2(x), teacher(x), 2.0)
        mse = F.mse_loss(s2[0](x), teacher[0](x))
    assert seen[0] == pytest.approx(float(kd + mse), rel=1e-3)


def test_bad_arguments_are_refused_before_training(digits_batches):
    x, y = _flat(digits_batches)
    teacher = _teacher(x, y)
    student = copy.deepcopy(teacher)
    state = {k: v.clone() for k, v in student.state_dict().items()}
    for kwargs, match in [
        (dict(temperature=0), r"temperature must be a number > 0"),
        (dict(alpha=1.5), r"alpha must be a number in \[0, 1\]"),
        (dict(features={"nope": "0"}), "features: no module student 'nope'"),
        (dict(features={"0": "2"}), r"features: student '0' gives \(256, 32\), teacher gives \(256, 10\)"),
    ]:
        with pytest.raises(PruneError, match=match):
            pk.distill(student, teacher, [x], progress=False, **kwargs)
    with pytest.raises(PruneError, match="the same module"):
        pk.distill(teacher, teacher, [x], progress=False)
    # The refused shapes are found on the first batch, after one forward pass: nothing stepped.
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in state.items())


def test_a_pruned_language_model_moves_towards_its_dense_teacher():
    pytest.importorskip("transformers")
    from llm_fixtures import tiny_llama, token_ids

    from prunekit.llm import prune_llm

    teacher = tiny_llama()
    student = copy.deepcopy(teacher)
    calib = token_ids(8, 32, vocab=teacher.config.vocab_size, seed=0)
    prune_llm(student, calib, method="magnitude", sparsity=0.6, keep_masks=True)
    zeros = {n: m == 0 for n, m in pk.masks(student).items()}
    held = token_ids(4, 32, vocab=teacher.config.vocab_size, seed=1)

    def kl(ids: torch.Tensor) -> float:
        with torch.no_grad():
            return float(distillation_loss(student(ids).logits, teacher(ids).logits, 1.0))

    before = kl(calib), kl(held)
    pk.distill(student, teacher, [calib[i : i + 4] for i in range(0, 8, 4)], epochs=10, lr=3e-3, temperature=1.0,
               progress=False)
    after = kl(calib), kl(held)
    # Token-level KL to the teacher falls on the distillation text, and (less) on other text.
    assert after[0] < 0.6 * before[0] and after[1] < 0.95 * before[1], (before, after)
    for name, z in zeros.items():
        module, _, attr = name.rpartition(".")
        assert torch.all(getattr(student.get_submodule(module), attr)[z] == 0)


class _Steps:
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, step, model, loss) -> None:
        self.steps += 1


def test_a_sample_budget_stops_after_the_step_that_reaches_it(digits_batches, tmp_path):
    x, y = _flat(digits_batches)
    teacher = _teacher(x, y)
    student = copy.deepcopy(teacher)
    pk.prune(student, 0.8)
    steps = _Steps()
    hist = pk.distill(student, teacher, x, epochs=50, batch_size=64, max_samples=200, progress=False, seed=0,
                      callbacks=[steps], checkpoint_dir=tmp_path)
    assert steps.steps == 4 and hist["samples"] == 256  # ceil(200 / 64) batches of 64
    # Resuming the finished run does no further step and reports the same spend.
    again = _Steps()
    hist2 = pk.distill(student, teacher, x, epochs=50, batch_size=64, max_samples=200, progress=False, seed=0,
                       callbacks=[again], checkpoint_dir=tmp_path)
    assert again.steps == 0 and hist2["samples"] == 256


def test_a_token_budget_counts_token_ids_and_the_attention_mask():
    pytest.importorskip("transformers")
    from llm_fixtures import tiny_llama, token_ids

    teacher = tiny_llama()
    student = copy.deepcopy(teacher)
    ids = token_ids(8, 16, vocab=teacher.config.vocab_size, seed=0)
    steps = _Steps()
    hist = pk.distill(student, teacher, [ids[i : i + 2] for i in range(0, 8, 2)], epochs=3, max_tokens=40,
                      progress=False, callbacks=[steps])
    assert steps.steps == 2 and hist["tokens"] == 64  # 32 tokens a batch: the second batch reaches 40

    from prunekit.distillation import Budget

    b = Budget(10, "tokens")
    b.count((ids[:2],), {"attention_mask": torch.tensor([[1] * 5 + [0] * 11, [1] * 16])})
    assert b.spent == 21


def test_bad_budgets_are_refused(digits_batches):
    x, y = _flat(digits_batches)
    teacher = _teacher(x, y)
    student = copy.deepcopy(teacher)
    state = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(PruneError, match="max_samples= or max_tokens=, not both"):
        pk.distill(student, teacher, x, max_samples=10, max_tokens=10, progress=False)
    with pytest.raises(PruneError, match="max_samples must be"):
        pk.distill(student, teacher, x, max_samples=0, progress=False)
    with pytest.raises(PruneError, match="max_tokens counts token ids"):
        pk.distill(student, teacher, x, max_tokens=100, progress=False)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in state.items())


def test_a_reiterable_loader_is_read_anew_every_epoch_and_a_generator_lasts_all_epochs():
    class Fresh:  # an augmenting loader: new batches at every pass
        def __init__(self):
            self.passes, self.seen = 0, []

        def __iter__(self):
            self.passes += 1
            g = torch.Generator().manual_seed(self.passes)
            for _ in range(3):
                batch = torch.randn(8, 4, generator=g)
                self.seen.append(batch)
                yield batch

    torch.manual_seed(0)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    loader = Fresh()
    hist = pk.distill(student, teacher, loader, epochs=3, lr=1e-2, progress=False)
    assert loader.passes == 3 and hist["steps"] == 9
    assert not torch.equal(loader.seen[0], loader.seen[3])  # epoch 2 drew new batches
    gen = (torch.randn(8, 4) for _ in range(2))
    assert pk.distill(nn.Linear(4, 3), teacher, gen, epochs=3, lr=1e-2, progress=False)["steps"] == 6


@pytest.mark.parametrize("form", ["dataset_of_tensors", "tensor_dataset", "iterable_dataset"])
def test_datasets_of_bare_inputs_distill_like_a_tensor_of_them(digits_batches, form):
    from torch.utils.data import Dataset, IterableDataset, TensorDataset

    x, y = _flat(digits_batches)
    teacher = _teacher(x, y)

    class Items(Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i]

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(x)

    data = {"dataset_of_tensors": Items(), "tensor_dataset": TensorDataset(x), "iterable_dataset": Stream()}[form]
    runs = []
    for d in (x, data):
        student = copy.deepcopy(teacher)
        pk.prune(student, 0.8)
        pk.distill(student, teacher, d, epochs=3, lr=1e-2, batch_size=64, temperature=2.0, seed=0, progress=False)
        runs.append(_agreement(student, teacher, x))
    if form == "iterable_dataset":  # read in stream order (a tensor is shuffled): same recovery, not the same steps
        assert abs(runs[1] - runs[0]) < 0.05, runs
    else:
        assert runs[1] == runs[0]  # the same items in the same shuffled order: the same training


def test_labels_are_required_where_alpha_reads_them(digits_batches):
    from torch.utils.data import TensorDataset

    x, y = _flat(digits_batches)
    teacher = _teacher(x, y)
    student = copy.deepcopy(teacher)
    pk.prune(student, 0.5)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    for unlabelled in (x, TensorDataset(x), [x[:64], x[64:128], x[128:192]]):
        with pytest.raises(PruneError, match="came without labels|without labels"):
            pk.distill(student, teacher, unlabelled, alpha=0.5, epochs=1, progress=False)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())  # refused before any step
    pk.distill(student, teacher, (x, y), alpha=0.5, epochs=1, progress=False)  # labelled: accepted


class _ScalesItsInput(nn.Module):
    def forward(self, x):
        return x.mul_(10.0)  # an in-place stem


def test_a_student_that_changes_its_input_in_place_does_not_change_what_the_teacher_reads():
    torch.manual_seed(0)
    teacher = nn.Sequential(_ScalesItsInput(), nn.Linear(8, 5)).eval()
    student = copy.deepcopy(teacher)
    student[1].weight.requires_grad_(False)
    h = pk.distill(student, teacher, torch.randn(32, 8), optimizer="sgd", lr=1e-12, batch_size=64, progress=False)
    assert h["loss"][0] == pytest.approx(0.0, abs=1e-6)  # the same model on the same input
    relu = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(8, 5)).eval()
    pk.distill(copy.deepcopy(relu), relu, torch.randn(32, 8), progress=False)  # backward ran


def test_a_teacher_in_bfloat16_reads_the_batches_in_its_own_dtype():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    student = copy.deepcopy(teacher)
    h = pk.distill(student, copy.deepcopy(teacher).bfloat16(), torch.randn(32, 8), lr=1e-12, progress=False)
    assert h["loss"][0] < 1e-3  # the same weights, rounded to bfloat16 in the teacher


def test_a_refused_distillation_leaves_the_student_batchnorm_statistics_as_they_were():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))
    student = nn.Sequential(nn.Linear(8, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 5))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(pk.PruneError, match="features: student '1' gives"):
        pk.distill(student, teacher, torch.randn(64, 8), features={"1": "1"}, progress=False)
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
