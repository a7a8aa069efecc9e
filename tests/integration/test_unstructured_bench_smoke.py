"""Smoke test of benchmarks/unstructured_mnist.py: the quick mode runs end to end on real
MNIST and writes a well-formed JSON, with prunekit's global magnitude matching torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "unstructured_mnist.py"


@pytest.mark.slow
def test_quick_benchmark_runs_and_matches_torch(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    path = tmp_path / "unstructured_mnist.json"
    assert path.is_file()
    assert not list(tmp_path.glob("*.tmp")), "the temporary file must be renamed away"
    data = json.loads(path.read_text())
    assert {"config", "environment", "summary", "targets", "runs"} <= data.keys()

    envd = data["environment"]
    for key in ("torch", "threads", "loadavg_start", "loadavg_end", "date", "wall_time_s"):
        assert key in envd
    assert envd["omp_wait_policy"] == "PASSIVE"

    methods = data["config"]["methods"]
    assert methods[0] == "torch"
    assert {"ours-magnitude-global", "ours-magnitude-lamp", "ours-random-global"} <= set(methods)
    assert any(m.startswith("ours-") and m.endswith("-lamp") and "magnitude" not in m for m in methods)

    assert len(data["runs"]) == 1
    run = data["runs"][0]
    for split in ("val", "test"):
        assert 0.0 <= run["dense"][split] <= 1.0
    for entry in run["sparsities"]:
        sp = entry["sparsity"]
        assert entry["masks_equal_torch"] is True
        ours, anchor = entry["methods"]["ours-magnitude-global"], entry["methods"]["torch"]
        # Same masks, same fine-tune, same data order: the very same model.
        assert ours["val"] == anchor["val"] and ours["test"] == anchor["test"]
        for name, r in entry["methods"].items():
            assert 0.0 <= r["val"] <= 1.0 and 0.0 <= r["test"] <= 1.0, name
            assert all(0.0 <= v <= 1.0 for v in r["val_by_lr"].values())
            # Masked weights stay exactly zero through fine-tuning.
            assert r["sparsity_after_finetune"] == pytest.approx(sp, abs=1e-3), name
        assert entry["val_picked"]["method"] in data["config"]["val_picked_from"]

    rows = data["summary"]["rows"]
    assert {r["method"] for r in rows} == set(methods) | {"ours (val-picked)"}
    for r in rows:
        assert 0.0 <= r["test_mean"] <= 1.0 and r["test_std"] >= 0.0
        assert 0.0 <= r["val_mean"] <= 1.0
    assert "ours (val-picked)" in proc.stdout


def test_distillation_while_fine_tuning_follows_the_teacher() -> None:
    import copy
    import importlib.util

    import torch
    from torch import nn

    spec = importlib.util.spec_from_file_location("unstructured_mnist_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    run = dict(epochs=1, lr=1e-2, seed=0, schedule="constant", batch_size=16)
    # only the distillation term: the student's outputs move toward the teacher's
    from prunekit.distillation import distillation_loss

    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    student = copy.deepcopy(model)
    with torch.no_grad():
        before = float(distillation_loss(student(x), teacher(x), 2.0))
    bench.finetune(student, x, y, teacher=teacher, kd=(2.0, 1.0), **dict(run, epochs=5))
    with torch.no_grad():
        after = float(distillation_loss(student(x), teacher(x), 2.0))
    assert after < 0.5 * before
    # weight 0 on it: exactly the plain cross-entropy fine-tune
    plain, zero = copy.deepcopy(model), copy.deepcopy(model)
    bench.finetune(plain, x, y, **run)
    bench.finetune(zero, x, y, teacher=copy.deepcopy(model), kd=(2.0, 0.0), **run)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), zero.parameters()))
    assert not all(torch.allclose(a, b) for a, b in zip(plain.parameters(), model.parameters()))
