"""Smoke test of benchmarks/schedules_mnist.py: the quick mode runs end to end on a slice of
real MNIST and writes a well-formed JSON in which every method keeps the same budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "schedules_mnist.py"


@pytest.mark.slow
def test_quick_schedules_benchmark_runs(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--limit", "1000", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    path = tmp_path / "schedules_mnist.json"
    assert path.is_file() and not list(tmp_path.glob("*.tmp"))
    data = json.loads(path.read_text())
    assert {"config", "environment", "summary", "targets", "runs"} <= data.keys()
    assert data["config"]["train_examples"] == data["config"]["test_examples"] == 1000
    assert data["environment"]["omp_wait_policy"] == "PASSIVE"

    budget = data["targets"]["epochs"]
    main = [r for r in data["runs"] if r["budget"] == budget]
    labels = {r["label"] for r in main}
    assert {"dense", "oneshot", "iterative", "gradual", "l1", "l2", "combined", "torch prune"} <= labels
    for r in main:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["val_accuracy"] <= 1.0, r["label"]
        if r["label"].startswith("dense"):
            assert r["sparsity"] < 0.01
        else:
            # Every method, the anchor included, reaches the target on the same budget.
            assert r["epochs"] == budget, r["label"]
            assert r["sparsity"] == pytest.approx(0.99, abs=1e-3), r["label"]
    longer = [r for r in data["runs"] if r["budget"] != budget]
    assert longer and {r["label"] for r in longer} == {"gradual", "combined"}
    assert all(r["epochs"] == r["budget"] for r in longer)

    t = data["targets"]
    assert t["met"] == (t["drop_pt"] <= t["max_drop_pt"])
    rows = {(r["label"], r["budget"]) for r in data["summary"]}
    assert ("combined", budget) in rows and ("torch prune", budget) in rows
    assert "target ≤ 1 pt" in proc.stdout and "torch prune" in proc.stdout
