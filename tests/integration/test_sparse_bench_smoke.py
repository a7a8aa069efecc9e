"""Smoke run of benchmarks/sparse_linear.py: quick mode writes sane JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_sparse_linear_benchmark_quick(tmp_path):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sparse_linear.py"), "--quick", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "dense/csr" in r.stdout and "published" in r.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["sparse_linear_quick.json"]
    data = json.loads((tmp_path / "sparse_linear_quick.json").read_text())
    assert data["quick"] is True and data["batches"] == [1, 256]
    assert data["env"]["omp_wait_policy"] == "PASSIVE"
    (run,) = data["runs"]
    assert run["sparsity"] == 0.9 and run["allocation"] == "global"
    assert run["model_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert list(run["layers"]) == ["classifier.0", "classifier.2", "classifier.4"]
    for layer in run["layers"].values():
        for b in ("b1", "b256"):
            e = layer[b]
            assert e["dense_s"]["n"] == data["repeats"] and e["dense_s"]["median"] > 0 and e["csr_s"]["median"] > 0
            assert e["dense_over_csr"] == pytest.approx(e["dense_s"]["median"] / e["csr_s"]["median"])
            assert e["max_abs_diff"] < 1e-4
    for b in ("b1", "b256"):
        decision = run["sparsify"][b]
        assert decision["batch_size"] == int(b[1:])
        # every replaced layer was measured at least min_speedup faster at that batch size
        for l in decision["layers"]:
            if l["decision"] == "csr":
                assert l["dense_ms"][b[1:]] / l["csr_ms"][b[1:]] >= decision["min_speedup"]
