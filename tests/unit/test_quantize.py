"""Quantization of pruned models: the accuracy copy equals the saved file; weight sharing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("zstandard")

import prunekit as pk  # noqa: E402
from prunekit.deploy.quantize import quantized, share_weights  # noqa: E402
from prunekit.train import evaluate  # noqa: E402


def _trained_mlp(digits_batches):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(8):
        for x, y in digits_batches:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model


def _acc(model, batches):
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return hits / sum(len(y) for _, y in batches)


@pytest.mark.parametrize("scheme", ["fp16", "int8", "codebook", "codebook:3"])
def test_quantized_copy_is_what_the_packed_file_holds(scheme, digits_batches, tmp_path):
    model = _trained_mlp(digits_batches)
    pk.prune(model, 0.8)
    x = digits_batches[0][0]
    q = quantized(model, scheme)
    assert pk.masks(model)  # the user's model is untouched (still masked)
    pk.save(model, tmp_path / "m", format="packed", quantize=scheme)
    back = pk.load(tmp_path / "m", model=nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)))
    assert torch.equal(back(x), q(x))
    assert torch.all(q[1].weight[model[1].weight == 0] == 0)  # zeros stay zero
    assert abs(_acc(q, digits_batches) - _acc(model, digits_batches)) < 0.03  # int8/fp16/4-bit barely move accuracy


def test_share_weights_limits_values_and_fine_tunes_centroids(digits_batches):
    model = _trained_mlp(digits_batches)
    pk.prune(model, 0.7)
    zeros = model[1].weight == 0
    plain = copy.deepcopy(model)
    books = share_weights(plain, 2)
    tuned = copy.deepcopy(model)
    share_weights(tuned, 2, data=digits_batches, loss_fn=F.cross_entropy, epochs=3, lr=1e-2)
    for m in (plain, tuned):
        w = m[1].weight
        assert torch.all(w[zeros] == 0)  # pruned weights stay pruned
        assert torch.unique(w[w != 0]).numel() <= 4
    assert set(books) == {"1.weight", "3.weight"} and books["1.weight"].numel() == 4
    loss = lambda m: sum(float(F.cross_entropy(m(x), y)) for x, y in digits_batches)  # noqa: E731
    assert loss(tuned) < loss(plain)  # centroid fine-tuning lowers the training loss
    with pytest.raises(ValueError, match="bits"):
        share_weights(model, 9)
    with pytest.raises(ValueError, match="loss_fn"):
        share_weights(model, 4, data=digits_batches)
