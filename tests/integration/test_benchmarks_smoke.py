"""Smoke tests: the benchmark scripts run end to end in quick mode and write sane JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _run(script: str, out: Path) -> dict:
    env = dict(os.environ)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = list(out.glob("*.json"))
    assert len(files) == 1, files
    assert not list(out.glob("*.tmp")), "temporary file left behind"
    return json.loads(files[0].read_text())


def _check_env(env: dict) -> None:
    assert env["threads"] >= 1
    assert env["omp_wait_policy"] == "PASSIVE"
    assert len(env["loadavg"]) == 3
    assert env["torch"]


@pytest.mark.slow
def test_mask_overhead_quick(tmp_path: Path) -> None:
    data = _run("mask_overhead.py", tmp_path)
    _check_env(data["env"])
    assert data["quick"] is True
    assert set(data["models"]) == {"lenet300100", "mnistnet"}
    for name, r in data["models"].items():
        for v in ("dense", "ours", "torch"):
            assert r["step_s"][v]["median"] > 0, (name, v)
            assert r["step_s"][v]["n"] == r["steps_per_variant"] > 0
        for v in ("ours", "torch"):
            assert r[f"ratio_{v}"] > 0 and r[f"paired_ratio_{v}"] > 0
            assert r[f"sparsity_{v}"] == pytest.approx(0.9, abs=1e-3)


@pytest.mark.slow
def test_prune_scaling_quick(tmp_path: Path) -> None:
    data = _run("prune_scaling.py", tmp_path)
    _check_env(data["env"])
    assert data["quick"] is True
    assert list(data["sizes"]) == ["1M"]
    r = data["sizes"]["1M"]
    assert r["params"] > 0 and r["model_bytes"] > 0 and r["speedup"] > 0
    for m in ("ours", "torch"):
        assert r[m]["seconds"] > 0
        assert r[m]["extra_bytes"] > 0
        assert r[m]["extra_x_model"] > 0
        # Global magnitude pruning to 0.9 is exact: round(0.9 × params) weights are zero.
        assert r[m]["sparsity"] == pytest.approx(0.9, abs=1e-6)
