"""Reconnection: dead kept weights (on no input-to-output path) are found as a brute-force
path count finds them, and moved onto live connections of the same layer, so every layer
keeps its count and the reported sparsity stays true."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import graph
from prunekit.errors import PruneError, PruneTypeError
from prunekit.reconnect import dead_weights, reconnect


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


NAMES = ("0.weight", "2.weight", "4.weight")


def _paths_dead(masks: list[torch.Tensor]) -> list[int]:
    """Reference: kept entries of each layer that lie on no input-to-output path, from
    boolean reachability (inputs forward, outputs backward)."""
    m = [k.to(torch.float64) for k in masks]
    reach = [torch.ones(m[0].shape[1], dtype=torch.float64)]
    for k in m:
        reach.append((k @ reach[-1] > 0).to(torch.float64))
    back = [torch.ones(m[-1].shape[0], dtype=torch.float64)]
    for k in reversed(m):
        back.insert(0, (k.t() @ back[0] > 0).to(torch.float64))
    out = []
    for i, k in enumerate(masks):
        live = k & (back[i + 1][:, None] > 0) & (reach[i][None, :] > 0)
        out.append(int(k.sum() - live.sum()))
    return out


def _random_masks(model: nn.Module, keep: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < keep for n, p in model.named_parameters() if n in NAMES}


@pytest.mark.parametrize("seed", range(6))
def test_dead_weights_match_a_path_count(seed):
    model = _mlp()
    st = graph.build(model, torch.randn(3, 20))
    masks = _random_masks(model, 0.12, seed)
    ref = _paths_dead([masks[n] for n in NAMES])
    got = dead_weights(st, masks)
    assert [got.get(n, 0) for n in NAMES] == ref
    assert sum(ref) > 0  # the draws are sparse enough to leave dead weights


@pytest.mark.parametrize("seed", range(6))
def test_reconnect_keeps_counts_and_live_weights_and_leaves_no_dead(seed):
    model = _mlp()
    st = graph.build(model, torch.randn(3, 20))
    masks = _random_masks(model, 0.2, seed)
    scores = {n: p.detach().abs() for n, p in model.named_parameters() if n in NAMES}
    assert sum(_paths_dead([masks[n] for n in NAMES])) > 0
    new, moved = reconnect(st, masks, scores)
    assert _paths_dead([new[n] for n in NAMES]) == [0, 0, 0]
    for n in NAMES:
        assert int(new[n].sum()) == int(masks[n].sum()), n
        assert moved.get(n, 0) == dead_weights(st, masks).get(n, 0)  # every dead weight found a live place
    # Weights that were live stay kept; the added ones are the best-scoring live candidates.
    settled = {n: masks[n].clone() for n in NAMES}
    dead = dead_weights(st, settled)
    for n in NAMES:
        removed = masks[n] & ~new[n]
        assert int(removed.sum()) <= dead.get(n, 0)
        added = new[n] & ~masks[n]
        if added.any():
            candidates = ~masks[n] & ~added
            live_candidates = candidates & _live_grid(new, n)
            if live_candidates.any():
                assert float(scores[n][added].min()) >= float(scores[n][live_candidates].max())


def test_too_few_live_connections_keep_the_count_with_the_best_dead_weights():
    model = _mlp()
    st = graph.build(model, torch.randn(3, 20))
    masks = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in model.named_parameters() if n in NAMES}
    masks["0.weight"][0, :6] = True  # unit 0 fed; nothing uses it: 6 dead weights
    masks["2.weight"][1, 2] = True  # unit 2 of layer 1 is not fed, so this one is dead too
    masks["4.weight"][3, 1] = True  # fed by nothing alive
    scores = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) for n, p in model.named_parameters()
              if n in NAMES}
    new, moved = reconnect(st, masks, scores)
    assert [int(new[n].sum()) for n in NAMES] == [int(masks[n].sum()) for n in NAMES]
    assert moved == {} and all(torch.equal(new[n], masks[n]) for n in NAMES)  # no live place to move to


def _live_grid(masks: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Entries of ``name`` whose output unit has a kept outgoing weight and whose input unit
    a kept incoming one (inputs and outputs of the model always count)."""
    i = NAMES.index(name)
    k = masks[name]
    rows = masks[NAMES[i + 1]].any(0) if i + 1 < len(NAMES) else torch.ones(k.shape[0], dtype=torch.bool)
    cols = masks[NAMES[i - 1]].any(1) if i > 0 else torch.ones(k.shape[1], dtype=torch.bool)
    return rows[:, None] & cols[None, :]


def test_prune_reconnect_reports_what_the_masks_hold(digits_batches):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))
    plain, moved_model = copy.deepcopy(model), copy.deepcopy(model)
    data = digits_batches[:2]
    base = pk.prune(plain, 0.97, criterion="wanda", allocation="lamp", data=data)
    res = pk.prune(moved_model, 0.97, criterion="wanda", allocation="lamp", data=data, reconnect=True)
    names = [n for n in base.masks if n.endswith("weight")]
    assert [int(base.masks[n].sum()) for n in names] == [int(res.masks[n].sum()) for n in names]
    assert res.sparsity == pytest.approx(base.sparsity)
    measured = [int((moved_model.get_submodule(n.rsplit(".", 1)[0]).weight != 0).sum()) for n in names]
    assert measured == [int(res.masks[n].sum()) for n in names]
    before, after = _paths_dead([base.masks[n].bool() for n in names]), _paths_dead([res.masks[n].bool() for n in names])
    assert sum(before) > 0  # something to move at 97 %
    assert sum(after) < sum(before)
    assert res.config["reconnect"] is True


def test_sparsegpt_reconnect_gives_added_weights_their_dense_values(digits_batches):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10))
    dense = copy.deepcopy(model)
    data = digits_batches[:2]
    updated = copy.deepcopy(model)
    pk.prune(updated, 0.97, criterion="sparsegpt", allocation="lamp", data=data)
    res = pk.prune(model, 0.97, criterion="sparsegpt", allocation="lamp", data=data, reconnect=True)
    checked = 0
    for i in (1, 3, 5):
        new_keep = res.masks[f"{i}.weight"].bool()
        old_keep = pk.masks(updated)[f"{i}.weight"].bool()
        w, w_sgpt, w_dense = model[i].weight.detach(), updated[i].weight.detach(), dense[i].weight.detach()
        added = new_keep & ~old_keep
        stayed = new_keep & old_keep
        assert torch.equal(w[added], w_dense[added])
        assert torch.equal(w[stayed], w_sgpt[stayed])
        assert torch.all(w[~new_keep] == 0)
        checked += int(added.sum())
    assert checked > 0


def test_reconnect_on_a_residual_convnet_keeps_counts():
    torch.manual_seed(0)

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8, 5)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            x = x + self.b(torch.relu(self.a(x)))
            return self.head(x.mean((2, 3)))

    model = Res()
    x = torch.randn(2, 3, 8, 8)
    plain = copy.deepcopy(model)
    base = pk.prune(plain, 0.95, allocation="uniform", example_inputs=x)
    res = pk.prune(model, 0.95, allocation="uniform", example_inputs=x, reconnect=True)
    names = sorted(n for n in base.masks if n.endswith("weight"))
    assert [int(base.masks[n].sum()) for n in names] == [int(res.masks[n].sum()) for n in names]
    st = graph.build(plain, x)
    assert dead_weights(st, {n: res.masks[n] for n in names}) == {}


@pytest.mark.parametrize("kwargs,error", [
    ({"granularity": "channel", "example_inputs": torch.randn(2, 20)}, PruneError),
    ({}, PruneError),  # nothing to trace with
    ({"example_inputs": torch.randn(2, 20), "reconnect": "yes"}, PruneTypeError),
])
def test_bad_reconnect_calls_leave_the_model_alone(kwargs, error):
    model = _mlp()
    before = copy.deepcopy(model.state_dict())
    opts = {"reconnect": True, **kwargs}
    with pytest.raises(error, match="reconnect"):
        pk.prune(model, 0.9, **opts)
    assert pk.masks(model) == {}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_reconnect_on_an_already_masked_model_keeps_every_layer_at_its_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(64, 16)
    pk.prune(model, 0.7, criterion="random", seed=0)
    plain = copy.deepcopy(model)
    want = pk.prune(plain, 0.85, example_inputs=x)
    got = pk.prune(model, 0.85, reconnect=True, example_inputs=x)
    assert got.sparsity == pytest.approx(want.sparsity)
    for a, b in zip(got.layers, want.layers):
        assert a.sparsity == pytest.approx(b.sparsity), a.name  # the count each layer was given
