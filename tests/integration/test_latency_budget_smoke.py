"""Smoke run of benchmarks/latency_budget.py in quick mode: MNISTNet, one budget, eager."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_latency_budget_benchmark_quick(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "latency_budget.py"), "--quick", "--runtimes", "eager",
           "--train", "256", "--repeats", "3", "--bisect", "2", "--speed-batch", "32", "--speed-runtimes", "eager",
           "--speed-threads", "1,2", "--seeds", "2", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "latency_budget_quick.json").read_text())
    (row,) = result["rows"]
    assert row["model"] == "mnistnet" and row["runtime"] == "eager" and row["budget"] == 0.5
    assert 0 < row["measured_ms"] < row["dense_ms"] and row["iterations"] >= 1
    # the search's measured configurations, one record each, the kept one among them
    assert len(row["history"]) == row["iterations"] and all(len(h["kept"]) == 3 for h in row["history"])
    for method in ("ours", "flops", "torch_pruning"):
        assert 0.0 <= row[f"{method}_accuracy"] <= 1.0 and row[f"{method}_mac_reduction"] > 1.0
        seeds = row[f"{method}_accuracy_seeds"]  # one fine-tune per batch order, the mean reported
        assert len(seeds) == 2 and row[f"{method}_accuracy"] == pytest.approx(sum(seeds) / 2)
        widths = row[f"{method}_widths"]  # what each pruned model kept, below MNISTNet's 32, 64, 128
        assert len(widths) == 3 and all(1 <= w <= n for w, n in zip(widths, (32, 64, 128))) and widths != [32, 64, 128]
    assert {r["channels_removed"] for r in result["speedup_vs_macs"]} == {0.5, 0.75}
    # each configuration timed at each thread count asked for
    assert sorted(r["threads"] for r in result["speedup_vs_macs"]) == [1] * 6 + [2] * 6
    assert result["settings"]["speed_threads"] == [1, 2] and result["settings"]["finetune_seeds"] == 2
    assert result["environment"]["loadavg"] and result["settings"]["threads"] == 2
    for r in result["speedup_vs_macs"]:
        # MNISTNet's three prunable widths are 32, 64 and 128; rounding keeps multiples
        assert len(r["widths"]) == 3 and r["channels_removed_actual"] == pytest.approx(1 - sum(r["widths"]) / 224)
        if r["round_to"]:
            assert all(w % r["round_to"] == 0 for w in r["widths"])
        else:
            assert r["widths"] == [round(w * (1 - r["channels_removed"])) for w in (32, 64, 128)]
