"""benchmarks/distill_mnist.py runs end to end on a slice and its rows say what happened."""

from __future__ import annotations

import json


def test_quick_run_writes_every_row(tmp_path):
    from llm_fixtures import load_benchmark

    bench = load_benchmark("distill_mnist")
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "distill_mnist_quick.json").read_text())["rows"]
    by = {(r["recovery"], r["epochs"]): r for r in rows}
    assert set(by) == {("dense", 0), ("none", 0), ("finetune", 1), ("distill", 1)}
    assert by[("dense", 0)]["agreement"] == 100.0
    assert by[("none", 0)]["params"] < 0.3 * by[("dense", 0)]["params"]
    # Both recoveries help the pruned model; distillation never read a label.
    for name in ("finetune", "distill"):
        assert by[(name, 1)]["accuracy"] > by[("none", 0)]["accuracy"] + 10
    assert by[("distill", 1)]["labels"] is False
