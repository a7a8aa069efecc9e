"""prunekit.distillation.recalibrate_bn: running statistics re-estimated exactly on the given
inputs, everything else as it was; refusals leave the model untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.distillation import recalibrate_bn
from prunekit.errors import PruneError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(8, 6, 3),
                         nn.BatchNorm2d(6, momentum=0.01), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 4))


def _norm_inputs(model: nn.Module, batches: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Per BatchNorm, its input at each batch, computed as recalibration runs the model: the
    norms normalise by batch statistics, everything else in eval mode."""
    ref = copy.deepcopy(model).eval()
    norms = [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
    seen: list[list[torch.Tensor]] = [[] for _ in norms]
    for bn, out in zip(norms, seen):
        bn.train()
        bn.register_forward_hook(lambda m, args, _, out=out: out.append(args[0].detach()))
    with torch.no_grad():
        for x in batches:
            ref(x)
    return seen


def test_statistics_are_the_average_over_batches_of_what_reaches_each_norm_after_pruning():
    model = _net()
    pk.prune(model, 0.5, granularity="channel", example_inputs=torch.randn(1, 1, 8, 8))
    torch.manual_seed(1)
    batches = [torch.randn(16, 1, 8, 8) * 2 + 1 for _ in range(3)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    model.train()
    model[3].eval()  # a mode that must come back as it was
    inputs = _norm_inputs(model, batches)
    modes = [m.training for m in model.modules()]
    assert recalibrate_bn(model, batches) == 2
    for bn, xs in zip(norms, inputs):
        mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0)
        var = torch.stack([x.transpose(0, 1).reshape(x.shape[1], -1).var(dim=1) for x in xs]).mean(0)
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
        assert int(bn.num_batches_tracked) == 3
    assert [bn.momentum for bn in norms] == [0.1, 0.01]
    assert [m.training for m in model.modules()] == modes and not model[3].training


def test_a_tensor_of_inputs_is_batched_and_max_batches_stops_early():
    model = _net()
    x = torch.randn(40, 1, 8, 8)
    recalibrate_bn(model, x, batch_size=16)
    assert int(model[1].num_batches_tracked) == 3
    recalibrate_bn(model, [(x[:8], torch.zeros(8)), (x[8:16], torch.zeros(8)), (x[16:], torch.zeros(24))],
                   max_batches=2)
    assert int(model[1].num_batches_tracked) == 2
    torch.testing.assert_close(model[1].running_mean,
                               (model[0](x[:8]).mean((0, 2, 3)) + model[0](x[8:16]).mean((0, 2, 3))).detach() / 2)


def test_refusals_leave_the_model_as_it_was():
    model = _net()
    recalibrate_bn(model, torch.randn(8, 1, 8, 8))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PruneError, match="no batch"):
        recalibrate_bn(model, [])
    with pytest.raises(PruneError, match="max_batches"):
        recalibrate_bn(model, torch.randn(8, 1, 8, 8), max_batches=0)
    with pytest.raises(PruneError, match="no BatchNorm"):
        recalibrate_bn(nn.Linear(3, 2), torch.randn(4, 3))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and model[1].momentum == 0.1


def test_a_last_batch_of_one_sample_is_skipped_and_the_rest_recalibrates():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)).eval()
    x = torch.randn(129, 4) * 3 + 1  # batches of 128 and 1: BatchNorm1d refuses a batch of one
    assert recalibrate_bn(model, x) == 1
    h = model[0](x[:128]).detach()
    torch.testing.assert_close(model[1].running_mean, h.mean(0))
    torch.testing.assert_close(model[1].running_var, h.var(0), rtol=1e-4, atol=1e-5)
    with pytest.raises(pk.PruneError, match=r"no batch of two or more samples \(1 of one sample\)"):
        recalibrate_bn(model, x[:1])
