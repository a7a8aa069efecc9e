"""Strategy search: cross-validation, baselines, resume after an interruption, Pareto front."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunekit import search as S
from prunekit.datasets import load_digits


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def digits():
    ds = load_digits("train", flatten=True)
    return torch.utils.data.TensorDataset(ds.tensors[0][:600], ds.tensors[1][:600])


def test_settings_add_baselines_and_validate():
    cfgs = S.settings({"criterion": ["taylor"], "sparsity": [0.5, 0.9]})
    assert {c["criterion"] for c in cfgs} == {"taylor", "random", "magnitude"} and len(cfgs) == 6
    with pytest.raises(ValueError, match="sparsity"):
        S.settings({"criterion": ["magnitude"]})
    with pytest.raises(ValueError, match="no values"):
        S.settings({"sparsity": []})
    with pytest.raises(ValueError, match="folds"):
        S.kfold(10, 1, 0)


def test_kfold_partitions():
    splits = S.kfold(10, 3, 0)
    vals = torch.cat([v for _, v in splits])
    assert sorted(vals.tolist()) == list(range(10))
    for tr, va in splits:
        assert not set(tr.tolist()) & set(va.tolist()) and len(tr) + len(va) == 10


def test_search_cross_validates_and_resumes(digits, tmp_path):
    results = tmp_path / "runs.jsonl"
    grid = {"sparsity": [0.5, 0.95]}
    calls = {"n": 0}
    real = S._one

    def flaky(task):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the search is stopped mid-way
        return real(task)

    S._one = flaky
    try:
        with pytest.raises(KeyboardInterrupt):
            S.search(mlp, digits, grid, folds=2, train_epochs=2, finetune_epochs=1, lr=3e-3, results=results)
    finally:
        S._one = real
    assert len(results.read_text().splitlines()) == 3  # finished runs were kept
    seen = []
    S._one = lambda task: seen.append(task["key"]) or real(task)
    try:
        res = S.search(mlp, digits, grid, folds=2, train_epochs=2, finetune_epochs=1, lr=3e-3, results=results)
    finally:
        S._one = real
    assert len(seen) == 2 * 2 * 2 - 3  # only the missing runs ran
    assert len(results.read_text().splitlines()) == 8
    assert all(r["runs"] == 2 for r in res.rows)
    by = {(r["setting"]["criterion"], r["setting"]["sparsity"]): r for r in res.rows}
    assert by[("magnitude", 0.5)]["accuracy_mean"] > by[("random", 0.95)]["accuracy_mean"]
    assert by[("magnitude", 0.95)]["nonzero_params"] < by[("magnitude", 0.5)]["nonzero_params"]
    assert res.pareto and all(r in res.rows for r in res.pareto)
    assert json.loads(results.read_text().splitlines()[0])["fold"] in (0, 1)


def test_pareto_front():
    rows = [{"accuracy_mean": a, "nonzero_params": n, "key": k}
            for a, n, k in ((0.9, 100, "a"), (0.8, 50, "b"), (0.85, 120, "c"), (0.8, 60, "d"))]
    assert [r["key"] for r in S.pareto(rows)] == ["b", "a"]


def test_parallel_workers_match_serial(digits):
    kw = dict(folds=2, train_epochs=1, finetune_epochs=0, lr=3e-3)
    serial = S.search(mlp, digits, {"sparsity": [0.8]}, **kw)
    parallel = S.search(mlp, digits, {"sparsity": [0.8]}, workers=2, **kw)
    a = {r["key"]: r["accuracy_mean"] for r in serial.rows}
    b = {r["key"]: r["accuracy_mean"] for r in parallel.rows}
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-9 for k in a)


def test_schedule_is_a_grid_dimension(digits):
    res = S.search(mlp, digits, {"sparsity": [0.9], "criterion": ["magnitude"], "schedule": ["oneshot", "gradual"]},
                   folds=2, train_epochs=1, finetune_epochs=2, lr=3e-3)
    scheds = {r["setting"]["schedule"] for r in res.rows}
    assert scheds == {"oneshot", "gradual"}
    assert all(r["nonzero_params"] < 0.15 * (64 * 32 + 32 * 10) + 100 for r in res.rows)
