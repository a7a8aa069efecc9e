"""Strategy search: cross-validation, baselines, resume after an interruption, Pareto front."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import search as S
from prunekit.datasets import load_digits
from prunekit.errors import PruneError
from prunekit.schedules import ScheduleWarning


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
    assert len(seen) == (2 * 2 + 1) * 2 - 3  # only the missing runs ran (the dense ones included)
    assert len(results.read_text().splitlines()) == 10
    assert all(r["runs"] == 2 for r in res.rows)
    assert res.dense is not None and res.dense["runs"] == 2 and res.dense["key"] == S.DENSE
    by = {(r["setting"]["criterion"], r["setting"]["sparsity"]): r for r in res.rows}
    assert by[("magnitude", 0.5)]["accuracy_mean"] > by[("random", 0.95)]["accuracy_mean"]
    assert by[("magnitude", 0.95)]["nonzero_params"] < by[("magnitude", 0.5)]["nonzero_params"]
    assert res.pareto and all(r in res.rows for r in res.pareto)
    assert json.loads(results.read_text().splitlines()[0])["fold"] in (0, 1)


def test_pareto_front():
    rows = [{"accuracy_mean": a, "nonzero_params": n, "key": k}
            for a, n, k in ((0.9, 100, "a"), (0.8, 50, "b"), (0.85, 120, "c"), (0.8, 60, "d"))]
    assert [r["key"] for r in S.pareto(rows)] == ["b", "a"]
    # A row at or below the floor is never on the front, and hides nothing from it.
    guess = {"accuracy_mean": 0.12, "nonzero_params": 5, "key": "g"}
    assert [r["key"] for r in S.pareto([*rows, guess])] == ["g", "b", "a"]
    assert [r["key"] for r in S.pareto([*rows, guess], floor=0.15)] == ["b", "a"]
    assert [r["key"] for r in S.pareto(rows, floor=0.8)] == ["a"]


def test_chance_level_is_the_most_frequent_class_share():
    assert S.chance_level(torch.arange(10).repeat(3)) == pytest.approx(0.1)
    assert S.chance_level(torch.tensor([0, 0, 0, 1])) == pytest.approx(0.75)
    with pytest.raises(PruneError, match="no labels"):
        S.chance_level(torch.tensor([], dtype=torch.long))


@pytest.fixture(scope="module")
def extreme(digits):
    """A search whose most pruned settings leave the model guessing."""
    return S.search(mlp, digits, {"sparsity": [0.5, 0.995], "criterion": ["magnitude"]}, folds=2, train_epochs=2,
                    finetune_epochs=0, lr=3e-3)


def test_chance_level_results_are_never_on_the_front(extreme, digits):
    res = extreme
    assert res.chance == pytest.approx(S.chance_level(digits.tensors[1]))
    assert res.floor == pytest.approx(res.chance + S.CHANCE_MARGIN)
    smallest = min(res.rows, key=lambda r: r["nonzero_params"])
    assert smallest["setting"]["sparsity"] == 0.995 and smallest["accuracy_mean"] <= res.floor
    assert not smallest["above_chance"]
    assert res.pareto, "a setting above chance is on the front"
    for r in res.pareto:
        assert r["accuracy_mean"] > res.floor and r["above_chance"]
    assert all(r["key"] not in {p["key"] for p in res.pareto} for r in res.rows if not r["above_chance"])
    # The table marks them and says why.
    table = res.summary()
    line = next(l for l in table.splitlines() if l.startswith("magnitude") and " 0.995 " in l)
    assert line.split()[-1] == "chance"
    assert f"mean accuracy > {res.floor:.4f} (chance {res.chance:.4f}" in table


def test_chance_margin_is_validated(digits):
    with pytest.raises(PruneError, match=r"chance_margin must be a number in \[0, 1\) \(e\.g\. 0\.05\); got 1\.5$"):
        S.search(mlp, digits, {"sparsity": [0.5]}, chance_margin=1.5)


def test_the_dense_baseline_is_measured_the_same_way(extreme, digits):
    res = extreme
    dense = res.dense
    assert dense is not None and dense["runs"] == 2 and dense["setting"] == {}
    assert dense["nonzero_params"] == 64 * 32 + 32 + 32 * 10 + 10  # nothing pruned
    assert {r["key"] for r in res.runs} >= {S.DENSE}
    # Same seed, fold and training as every setting, only without pruning: sparsity 0.5
    # by magnitude costs little against it.
    half = next(r for r in res.rows if r["setting"] == {"criterion": "magnitude", "sparsity": 0.5})
    assert half["delta_dense"] == pytest.approx(half["accuracy_mean"] - dense["accuracy_mean"])
    assert abs(half["delta_dense"]) < 0.1
    lines = res.summary().splitlines()
    assert lines[1].split()[:2] == ["dense", "-"] and lines[1].split()[-1] == "2,410"


def test_summary_columns_are_aligned_whatever_the_setting_lengths():
    rows = []
    for crit, alloc, acc, nz in (("magnitude", "global", 0.91, 1205), ("random", "lamp", 0.5, 120),
                                 ("normalized_magnitude", "uniform", 0.11, 24)):
        cfg = {"allocation": alloc, "criterion": crit, "schedule": "oneshot", "sparsity": 0.5}
        rows.append({"key": S._key(cfg), "setting": cfg, "runs": 3, "accuracy_mean": acc, "accuracy_std": 0.01,
                     "nonzero_params": nz, "flops_effective": 2 * nz, "baseline": False, "above_chance": acc > 0.15})
    dense = {"key": S.DENSE, "setting": {}, "runs": 3, "accuracy_mean": 0.95, "accuracy_std": 0.005,
             "nonzero_params": 2410, "flops_effective": 4820}
    res = S.SearchResult(rows, S.pareto(rows, floor=0.15), dense=dense, chance=0.1, floor=0.15)
    lines = res.summary().splitlines()
    table = lines[: 2 + len(rows)]
    assert table[0].split()[:4] == ["criterion", "allocation", "schedule", "sparsity"]
    assert len({l.index("±") for l in table[1:]}) == 1  # accuracy column aligned
    assert len({len(l.rstrip(" *chance")) for l in table[1:]}) == 1  # right-aligned nonzero column
    assert {l.index("nonzero") + len("nonzero") for l in table[:1]} == {len(table[1].rstrip(" *chance"))}
    marks = {l.split()[0]: l.split()[-1] for l in table[2:]}
    assert marks == {"magnitude": "*", "random": "*", "normalized_magnitude": "chance"}
    assert re.search(r"^  Only settings clearly above chance can be on it: mean accuracy > 0\.1500 \(chance 0\.1000",
                     res.summary(), flags=re.MULTILINE)


def test_parallel_workers_match_serial(digits):
    kw = dict(folds=2, train_epochs=1, finetune_epochs=0, lr=3e-3)
    serial = S.search(mlp, digits, {"sparsity": [0.8]}, **kw)
    parallel = S.search(mlp, digits, {"sparsity": [0.8]}, workers=2, **kw)
    a = {r["key"]: r["accuracy_mean"] for r in serial.rows}
    b = {r["key"]: r["accuracy_mean"] for r in parallel.rows}
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-9 for k in a)


def test_schedule_is_a_grid_dimension(digits):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleWarning)  # 2 epochs of 3 steps: a real ramp
        res = S.search(mlp, digits, {"sparsity": [0.9], "criterion": ["magnitude"],
                                     "schedule": ["oneshot", "gradual"]},
                       folds=2, train_epochs=1, finetune_epochs=2, lr=3e-3)
    scheds = {r["setting"]["schedule"] for r in res.rows}
    assert scheds == {"oneshot", "gradual"}
    assert all(r["nonzero_params"] < 0.15 * (64 * 32 + 32 * 10) + 100 for r in res.rows)


def test_a_schedule_too_short_to_ramp_warns_once(digits):
    small = torch.utils.data.TensorDataset(digits.tensors[0][:200], digits.tensors[1][:200])
    with pytest.warns(ScheduleWarning) as caught:
        S.search(mlp, small, {"sparsity": [0.5, 0.9], "schedule": ["gradual", "iterative", "oneshot"]},
                 folds=2, train_epochs=0, finetune_epochs=1, lr=3e-3)
    messages = [str(w.message) for w in caught if issubclass(w.category, ScheduleWarning)]
    assert len(messages) == 1  # gradual only (iterative prunes at steps 0 and 1), and once for all runs
    assert messages[0].startswith("gradual schedule Gradual(")
    assert "in a run of 1 step:" in messages[0] and "(finetune_epochs=1, 1 optimizer step each)" in messages[0]
    assert "Use finetune_epochs >= 3, or the oneshot schedule" in messages[0]
    with pytest.raises(PruneError, match=r"finetune_epochs must be an integer >= 1 \(schedule 'gradual' prunes "
                                         r"while fine-tuning; use the oneshot schedule to prune without "
                                         r"fine-tuning\); got 0$"):
        S.search(mlp, small, {"sparsity": [0.5], "schedule": ["gradual"]}, folds=2, finetune_epochs=0)


@pytest.mark.parametrize("grid, error, match", [
    ({"sparsity": [0.5], "seed": [1, 2]}, pk.PruneError,
     r"grid options \['seed'\] are set by search itself, not per setting: seed by search\(seeds=\.\.\.\)"),
    ({"sparsity": [0.5], "lr": [0.1]}, pk.PruneError, r"\['lr'\] are set by search itself.*lr by search\(lr=\.\.\.\)"),
    ({"sparsity": [0.5], "criterion": ["magnitud"]}, pk.PruneError, "unknown criterion 'magnitud'"),
    ({"sparsity": [0.5], "bogus": [1]}, pk.PruneTypeError, r"grid options \['bogus'\] are not pk.prune options"),
    ({"sparsity": [0.5, 1.5]}, pk.PruneError, "sparsity must be a number in"),
    ({"sparsity": [0.5], "schedule": ["slow"]}, pk.PruneError, "schedule 'slow' is not one of"),
])
def test_a_bad_grid_is_refused_before_any_run(digits, tmp_path, grid, error, match):
    results = tmp_path / "runs.jsonl"
    ran = []
    real = S._one
    S._one = lambda task: ran.append(task) or real(task)
    try:
        with pytest.raises(error, match=match):
            S.search(mlp, digits, grid, folds=2, train_epochs=1, finetune_epochs=0, results=results)
    finally:
        S._one = real
    assert ran == [] and not results.exists()


def test_resume_reuses_only_runs_made_with_the_same_folds_seeds_and_settings(digits, tmp_path):
    results = tmp_path / "runs.jsonl"
    grid = {"sparsity": [0.5]}
    kw = dict(train_epochs=1, finetune_epochs=0, lr=1e-3)
    S.search(mlp, digits, grid, folds=3, seeds=(0, 1), results=results, **kw)
    assert len(results.read_text().splitlines()) == 3 * 3 * 2  # dense + 2 criteria, 3 folds, 2 seeds
    ran = []
    real = S._one
    S._one = lambda task: ran.append((task["key"], task["fold"], task["seed"])) or real(task)
    try:
        with pytest.warns(UserWarning, match=r"18 recorded runs are not reused or counted: they belong to other "
                          r"seeds, folds or settings, or were made with folds=3 \(this search: 2\)"):
            resumed = S.search(mlp, digits, grid, folds=2, seeds=(0,), results=results, **kw)
        assert len(ran) == 3 * 2  # nothing of the 3-fold search was taken for a 2-fold one
        ran.clear()
        with pytest.warns(UserWarning, match="18 recorded runs are not reused"):
            again = S.search(mlp, digits, grid, folds=2, seeds=(0,), results=results, **kw)
        assert ran == []  # its own runs are reused
        with pytest.warns(UserWarning, match=r"24 recorded runs .* were made with folds=3 \(this search: 2\); lr=0\.001 \(this search: 0\.01\)"):
            S.search(mlp, digits, grid, folds=2, seeds=(0,), results=results, train_epochs=1, finetune_epochs=0,
                     lr=1e-2)
        assert len(ran) == 6
    finally:
        S._one = real
    fresh = S.search(mlp, digits, grid, folds=2, seeds=(0,), **kw)
    for res in (resumed, again):
        assert [(r["key"], r["runs"], r["accuracy_mean"]) for r in res.rows] == \
            [(r["key"], r["runs"], r["accuracy_mean"]) for r in fresh.rows]
        assert res.dense["runs"] == 2 and res.dense["accuracy_mean"] == fresh.dense["accuracy_mean"]
        assert sorted((r["seed"], r["fold"]) for r in res.runs if r["key"] == S.DENSE) == [(0, 0), (0, 1)]
        assert all(r["folds"] == 2 and r["lr"] == 1e-3 for r in res.runs)


def wide_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


def test_resume_reuses_no_run_of_another_model_or_other_data_and_ends_a_cut_line(digits, tmp_path):
    results = tmp_path / "runs.jsonl"
    kw = dict(folds=2, seeds=(0,), train_epochs=1, finetune_epochs=0, lr=1e-3, results=results)
    first = S.search(mlp, digits, {"sparsity": [0.5]}, **kw)
    with pytest.warns(UserWarning, match=r"6 recorded runs are not reused .* model=.*\.mlp \(this search: .*wide_mlp\)"):
        other = S.search(wide_mlp, digits, {"sparsity": [0.5]}, **kw)
    assert other.dense["nonzero_params"] != first.dense["nonzero_params"]
    half = torch.utils.data.TensorDataset(digits.tensors[0][:300], digits.tensors[1][:300])
    swapped = torch.utils.data.TensorDataset(digits.tensors[0][300:600], digits.tensors[1][300:600])
    S.search(mlp, half, {"sparsity": [0.5]}, **kw)
    with pytest.warns(UserWarning, match=r"data=.* \(this search: "):
        S.search(mlp, swapped, {"sparsity": [0.5]}, **kw)  # as many samples, other data
    text = results.read_text()
    results.write_text(text[:-20])  # an interrupted write: the last line cut short
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        S.search(mlp, swapped, {"sparsity": [0.5]}, **kw)  # redoes that run on a line of its own
    lines = results.read_text().splitlines()
    assert sum(1 for line in lines if _is_json(line)) == len(lines) - 1  # only the cut line is not a run


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
