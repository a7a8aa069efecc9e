"""Regularizers: penalty values, analytic gradients, wrap, training effect, registry, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from prunekit import datasets
from prunekit.errors import PruneError, PruneTypeError
from prunekit.masking import apply_masks
from prunekit.registry import available
from prunekit.regularizers import BNL1, L1, L2, GroupLasso, Regularizer, make
from prunekit.targets import find_targets
from prunekit.train import fit

F = nn.functional
NAMES = ["bn_l1", "group_lasso", "l1", "l2"]


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)
    ).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -1.5, 2.0]))  # mixed signs for bn_l1
    return model


def masked_model() -> nn.Module:
    model = small_model()
    g = torch.Generator().manual_seed(1)
    lin = (torch.rand(4, 12, generator=g) > 0.5).double()
    lin[2] = 0  # one fully masked neuron: group lasso must not give NaN there
    conv = (torch.rand(3, 2, 3, 3, generator=g) > 0.3).double()
    apply_masks(model, {"4.weight": lin, "0.weight": conv})
    return model


def weights(model: nn.Module) -> list[torch.Tensor]:
    """Effective (masked) prunable weights, in module order."""
    return [t.weight.detach() for t in find_targets(model)]


def direct_penalty(name: str, model: nn.Module) -> torch.Tensor:
    if name == "l1":
        return sum(w.abs().sum() for w in weights(model))
    if name == "l2":
        return sum((w * w).sum() for w in weights(model))
    if name == "group_lasso":
        return sum(w.reshape(w.shape[0], -1).pow(2).sum(1).sqrt().sum() for w in weights(model))
    return model[1].weight.detach().abs().sum()


def analytic_grads(name: str, model: nn.Module, strength: float) -> list[torch.Tensor]:
    if name == "l1":
        return [strength * w.sign() for w in weights(model)]
    if name == "l2":
        return [2 * strength * w for w in weights(model)]
    if name == "group_lasso":
        out = []
        for w in weights(model):
            norm = w.reshape(w.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))
            out.append(torch.where(norm > 0, strength * w / norm.clamp_min(1e-300), torch.zeros_like(w)))
        return out
    return [strength * model[1].weight.detach().sign()]


def trainable(name: str, model: nn.Module) -> list[torch.Tensor]:
    if name == "bn_l1":
        return [model[1].weight]
    return [t.original for t in find_targets(model)]


# --- values and gradients --------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("name", NAMES)
def test_penalty_value(name, masked):
    model = masked_model() if masked else small_model()
    got = make(name, strength=0.1).penalty(model)
    assert got.dim() == 0 and got.requires_grad
    assert_close(got.detach(), torch.as_tensor(direct_penalty(name, model), dtype=torch.float64))


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("name", NAMES)
def test_gradient_is_analytic(name, masked):
    model = masked_model() if masked else small_model()
    strength = 0.3
    reg = make(name, strength=strength)
    params = trainable(name, model)
    grads = torch.autograd.grad(reg(model), params)
    for g, want in zip(grads, analytic_grads(name, model, strength)):
        assert torch.isfinite(g).all()
        assert_close(g, want)
    if masked and name != "bn_l1":
        for t, g in zip(find_targets(model), grads):
            mask = t.module.parametrizations[t.param][0].mask
            assert (g[mask == 0] == 0).all()  # masked positions get nothing


def test_penalty_on_trainable_tensor_not_a_copy():
    # Training must move the very parameters the optimizer holds.
    model = small_model()
    L1(strength=1.0).penalty(model).backward()
    assert model[0].weight.grad is not None and model[4].weight.grad is not None
    assert model[1].weight.grad is None  # l1 covers Linear/Conv only, not BatchNorm


def test_ignore_leaves_layers_out():
    model = small_model()
    full = L1(strength=1.0).penalty(model)
    part = L1(strength=1.0, ignore=["4"]).penalty(model)
    assert_close(full - part, model[4].weight.detach().abs().sum())
    outer = nn.Sequential(model, nn.BatchNorm1d(4))  # "1" is the outer BatchNorm, |gamma| sum 4
    assert_close(BNL1(strength=1.0, ignore="1").penalty(outer), torch.tensor(4.0, dtype=torch.float64))
    with pytest.raises(PruneError, match="match no"):
        L1(strength=1.0, ignore=["nope"]).penalty(model)
    with pytest.raises(PruneError, match="match no BatchNorm"):
        BNL1(strength=1.0, ignore=["nope"]).penalty(model)


def test_group_lasso_conv_groups_are_filters():
    conv = nn.Conv2d(3, 5, 3)
    want = conv.weight.detach().flatten(1).norm(dim=1).sum()
    assert_close(GroupLasso(strength=1.0).penalty(conv).detach(), want)


def test_group_lasso_grouped_conv_transpose_groups_are_output_channels():
    torch.manual_seed(0)
    ct = nn.ConvTranspose2d(4, 6, 3, groups=2)  # weight [4, 3, 3, 3]: in, out / groups, k, k
    with torch.no_grad():
        ct.weight[:2, 0] = 0  # output channel 0 = column 0 of group 0's input rows
    y = ct(torch.randn(1, 4, 5, 5))
    assert torch.allclose(y[0, 0], ct.bias[0].expand_as(y[0, 0]))  # it is the removed channel
    w = ct.weight.detach()
    per_channel = [w[2 * (c // 3):2 * (c // 3) + 2, c % 3].norm() for c in range(6)]
    assert float(per_channel[0]) == 0.0
    assert_close(GroupLasso(strength=1.0).penalty(ct).detach(), torch.stack(per_channel).sum())


# --- wrap ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_wrap_adds_strength_times_penalty(name):
    model = small_model()
    reg = make(name, strength=0.25)
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    out = model(x)
    got = reg.wrap(F.cross_entropy, model)(out, y)
    assert_close(got, F.cross_entropy(out, y) + 0.25 * reg.penalty(model))


def test_wrap_validates_early():
    with pytest.raises(PruneTypeError, match="loss_fn must be callable"):
        L1(strength=1.0).wrap("cross_entropy", small_model())  # type: ignore[arg-type]
    with pytest.raises(PruneTypeError, match="torch.nn.Module"):
        L1(strength=1.0).wrap(F.cross_entropy, object())  # type: ignore[arg-type]
    with pytest.raises(PruneError, match="no BatchNorm|no affine BatchNorm"):
        BNL1(strength=1.0).wrap(F.cross_entropy, nn.Linear(3, 2))
    with pytest.raises(PruneError, match="no prunable weights"):
        L2(strength=1.0).wrap(F.cross_entropy, nn.Sequential(nn.ReLU()))


# --- training effect on digits ---------------------------------------------------------


@pytest.fixture(scope="module")
def digits_train():
    return datasets.load_digits("train", flatten=True)


def _train(data, reg: Regularizer | None, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    loss_fn = F.cross_entropy if reg is None else reg.wrap(F.cross_entropy, model)
    fit(model, data, epochs=5, batch_size=64, seed=0, progress=False, loss_fn=loss_fn, **kwargs)
    return model


def test_l1_training_makes_weights_near_zero(digits_train):
    def near_zero(model: nn.Module) -> int:
        return sum(int((w.abs() < 1e-3).sum()) for w in weights(model))

    plain = near_zero(_train(digits_train, None))
    sparse = near_zero(_train(digits_train, make("l1", strength=1e-3)))
    assert sparse > 3 * max(plain, 1)


def test_group_lasso_training_makes_neurons_near_zero(digits_train):
    def dead(model: nn.Module) -> int:
        return int((model[0].weight.detach().norm(dim=1) < 1e-2).sum())

    # SGD: the group-lasso step shrinks whole rows steadily, where Adam rescales it away.
    plain = dead(_train(digits_train, None, optimizer="sgd", lr=0.1))
    sparse = dead(_train(digits_train, make("group_lasso", strength=3e-2), optimizer="sgd", lr=0.1))
    assert plain == 0
    assert sparse >= 5


# --- registry, config, errors -----------------------------------------------------------


def test_registry_contract():
    assert available("regularizer") == NAMES
    classes = {"bn_l1": BNL1, "group_lasso": GroupLasso, "l1": L1, "l2": L2}
    for name in NAMES:
        reg = make(name, strength=0.5, ignore=["x.*"])
        assert type(reg) is classes[name] and reg.name == name and isinstance(reg, Regularizer)
        config = reg.get_config()
        assert config == {"strength": 0.5, "ignore": ["x.*"]}
        again = type(reg).from_config(config)
        assert again == reg and again.get_config() == config
        assert make(reg) is reg


def test_make_errors():
    with pytest.raises(PruneError, match="unknown regularizer 'l3'"):
        make("l3", strength=1.0)
    with pytest.raises(PruneTypeError, match="regularizer 'l1'"):
        make("l1", strength=1.0, lam=2)
    with pytest.raises(PruneError, match="not both"):
        make(L1(strength=1.0), strength=2.0)
    with pytest.raises(PruneTypeError):
        make(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1e-3, math.nan, math.inf])
def test_bad_strength_value(bad):
    with pytest.raises(PruneError, match=f"strength must be .*{bad!r}"):
        make("l1", strength=bad)


@pytest.mark.parametrize("bad", ["1e-3", True, None])
def test_bad_strength_type(bad):
    with pytest.raises(PruneTypeError, match="strength"):
        L2(strength=bad)  # type: ignore[arg-type]


def test_bad_ignore_type():
    with pytest.raises(PruneTypeError, match="ignore"):
        L1(strength=1.0, ignore=[3])  # type: ignore[list-item]
