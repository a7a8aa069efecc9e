"""Smoke run of benchmarks/structured_mnist.py on a slice: both tools, one ratio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_structured_benchmark_quick(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "structured_mnist.py"), "--quick", "--limit", "600",
           "--ratios", "0.5", "--scopes", "local", "--runs", "2", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "structured_mnist_quick.json").read_text())
    rows = {(x["method"], x["ratio"]): x for x in result["rows"]}
    ours, dense = rows[("prunekit", 0.5)], rows[("dense", 0.0)]
    assert ours["widths"] == [16, 32, 64, 10] and ours["mac_reduction"] > 3.5
    assert ours["params"] < dense["params"] / 3
    if ("torch-pruning", 0.5) in rows:  # same importance, same budget: the same channels
        assert rows[("torch-pruning", 0.5)]["widths"] == ours["widths"]
        assert abs(rows[("torch-pruning", 0.5)]["accuracy_before_finetune"] - ours["accuracy_before_finetune"]) < 1e-9
    assert set(ours["eager_profile_b64"]) == {"conv", "pool", "activation", "linear", "other"}
