"""``Pruner(reconnect=True)`` off the float32 MLP path: a convnet with BatchNorm and a
residual, in train mode and in bfloat16, with ``ignore=``; a tied embedding and head.

Invariants, against the same call without ``reconnect``: every layer keeps its count; the
reported sparsity is the measured fraction of zeros; no dead weight is left where live
connections exist; the model's mode, dtype and BatchNorm statistics are what they were;
tied weights keep one mask.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import graph
from prunekit.errors import PruneError
from prunekit.reconnect import dead_weights


class ResBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.a, self.bna = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.b, self.bnb = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = x + self.bnb(self.b(torch.relu(self.bna(self.a(x)))))
        return self.head(self.drop(x.mean((2, 3))))


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc, self.fc2 = nn.Embedding(40, 16), nn.Linear(16, 12), nn.Linear(12, 16)
        self.head = nn.Linear(16, 40, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(self.fc2(torch.relu(self.fc(self.emb(idx)))))


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    mod, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(mod), attr)


def _measured(model: nn.Module, names, tied: tuple[str, ...] = ()) -> float:
    """Zeros over entries of the masked weights, each stored tensor once (``tied``: the
    names that share another name's tensor)."""
    ws = [_weight(model, n) for n in names if n not in tied]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ignore", [(), ("stem",)])
def test_bn_residual_convnet(train, dtype, ignore):
    torch.manual_seed(0)
    model = ResBN().to(dtype).train(train)
    x = torch.randn(4, 3, 8, 8).to(dtype)
    data = [(x, torch.randint(0, 5, (4,)))]

    def loss_fn(out, y):
        return nn.functional.cross_entropy(out.float(), y)

    plain = copy.deepcopy(model)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    opts = dict(criterion="taylor", allocation="uniform", data=data, loss_fn=loss_fn, ignore=list(ignore))
    base = pk.prune(plain, 0.95, **opts)
    res = pk.prune(model, 0.95, reconnect=True, **opts)
    names = sorted(base.masks)
    assert names == sorted(res.masks) and not any(n.startswith(ignore) for n in names if ignore)
    assert [int(base.masks[n].sum()) for n in names] == [int(res.masks[n].sum()) for n in names]
    assert res.sparsity == pytest.approx(_measured(model, names), abs=1e-9)
    assert res.sparsity == pytest.approx(base.sparsity, abs=1e-9)
    st = graph.build(copy.deepcopy(plain).float().eval(), x.float())
    assert sum(dead_weights(st, base.masks).values()) > 0  # something to move
    assert dead_weights(st, res.masks) == {}
    assert model.training == train and all(p.dtype == dtype for p in model.parameters())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())


def test_tied_embedding_and_head_keep_one_mask():
    x = torch.randint(0, 40, (4, 6))
    total_moved = 0
    for seed in range(3):
        torch.manual_seed(seed)
        model = TiedLM()
        plain = copy.deepcopy(model)
        base = pk.prune(plain, 0.95, allocation="uniform", example_inputs=x)
        res = pk.prune(model, 0.95, allocation="uniform", example_inputs=x, reconnect=True)
        names = sorted(base.masks)
        assert [int(base.masks[n].sum()) for n in names] == [int(res.masks[n].sum()) for n in names]
        assert torch.equal(res.masks["emb.weight"], res.masks["head.weight"])
        assert model.head.weight is model.emb.weight or torch.equal(model.head.weight, model.emb.weight)
        assert res.sparsity == pytest.approx(_measured(model, names, tied=("head.weight",)), abs=1e-9)
        moved = sum(int((res.masks[n].bool() & ~base.masks[n].bool()).sum()) for n in names)
        st = graph.build(TiedLM(), x)
        total_moved += moved
        if moved:
            assert sum(dead_weights(st, res.masks).values()) < sum(dead_weights(st, base.masks).values())
    assert total_moved > 0  # reconnection had work to do


def test_n_of_m_is_refused_and_the_model_left_alone():
    torch.manual_seed(0)
    model = ResBN().eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PruneError, match="reconnect=True .* granularity='unstructured'"):
        pk.prune(model, 0.5, granularity="2:4", example_inputs=torch.randn(2, 3, 8, 8), reconnect=True)
    assert pk.masks(model) == {}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
