"""Smoke run of benchmarks/deploy_mnist.py on a slice of MNIST."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("zstandard")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_deploy_benchmark_quick(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "deploy_mnist.py"), "--quick", "--limit", "600",
           "--models", "lenet300100", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {x["variant"]: x for x in json.loads((tmp_path / "deploy_mnist_quick.json").read_text())["rows"]}
    exact, int8 = rows["pruned 95% + packed exact"], rows["pruned 95% + packed int8"]
    assert exact["accuracy"] == rows["pruned 95% (safetensors)"]["accuracy"]  # lossless
    assert rows["pruned 95% (safetensors)"]["ratio"] < 1.1  # zeros alone do not shrink a plain file
    assert exact["ratio"] > 15 and int8["ratio"] > 35
    assert rows["pruned 95% + 4-bit shared + packed"]["ratio"] > int8["ratio"]
