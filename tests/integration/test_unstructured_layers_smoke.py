"""Smoke test of benchmarks/unstructured_mnist_layers.py: the quick mode runs on real MNIST,
keeps the same per-layer counts in every variant and reports the sparsity it trained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "unstructured_mnist_layers.py"


@pytest.mark.slow
def test_quick_run_keeps_the_counts_and_reports_every_variant(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "unstructured_mnist_layers_quick.json").read_text())
    run = data["runs"][0]
    counts = run["kept_per_layer"]
    # magnitude + LAMP at 99 % of LeNet-300-100's 266,200 weights
    assert sum(counts.values()) == round(0.01 * 266_200)
    assert set(run["variants"]) == {"mmm", "wmm", "mwm", "mmw", "www"}
    for name, r in run["variants"].items():
        # fine-tuning kept the masks: the counts are what was trained
        assert r["sparsity_after_finetune"] == pytest.approx(0.99, abs=1e-4), name
        assert 0.0 <= r["val"] <= 1.0 and 0.0 <= r["test"] <= 1.0
        assert r["val"] == max(r["val_by_lr"].values())
    assert set(data["summary"]) == set(run["variants"])
    assert "vs mmm" in proc.stdout
