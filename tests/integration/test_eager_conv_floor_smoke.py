"""Smoke run of benchmarks/eager_conv_floor.py: every convolution path timed, and the
ResNet-style floor compacted by prunekit against the same network written by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_eager_conv_floor_benchmark_runs_and_records_what_it_timed(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "eager_conv_floor.py"), "--repeats", "3", "--batch", "8",
           "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "eager_conv_floor.json").read_text())
    assert not list(tmp_path.glob("*.tmp"))
    shapes = {(c["cin"], c["cout"], c["kernel"], c["stride"]) for c in result["convolutions"]}
    assert (1, 1, 3, 1) in shapes and (16, 16, 3, 1) in shapes
    for c in result["convolutions"]:
        assert all(c[k] > 0 for k in ("onednn_us", "native_us", "channels_last_us"))
    floors = result["floors"]
    assert [f["widths"] for f in floors] == [[1, 1], [4, 8], [8, 32]]
    for f in floors:
        # what the removed branches leave behind once compacted is named
        assert "ConstantOutput" in f["leftover_modules"] and "EmptyOutput" in f["leftover_modules"]
        assert f["compacted_ratio"] == pytest.approx(f["compacted_ms"] / f["dense_ms"])
        assert 0 < f["by_hand_ms"] and 0 < f["compacted_ms"] < f["dense_ms"]
