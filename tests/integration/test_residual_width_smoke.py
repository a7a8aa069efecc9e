"""benchmarks/residual_width.py runs in quick mode and its rows say what happened."""

from __future__ import annotations

import json


def test_quick_run_narrows_and_stays_exact(tmp_path):
    from llm_fixtures import load_benchmark

    bench = load_benchmark("residual_width")
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "residual_width_quick.json").read_text())["rows"]
    assert {(r["model"], r["allocation"]) for r in rows} == {
        (m, a) for m in ("ViTish", "EncoderLayer LM pre-norm") for a in ("uniform", "global")}
    for r in rows:
        wide, kept = r["stream_width"]
        assert kept < wide and r["ratio"] < r["ratio_stream_kept"]  # the stream narrowed: more removed
        assert r["max_abs_masked_minus_compacted"] < 1e-4 < r["max_abs_masked_minus_dense"]
        if r["allocation"] == "uniform":
            assert kept == wide - round(0.3 * wide) and r["ratio"] <= 0.75
    vit = [r for r in rows if r["model"] == "ViTish"]
    assert all(r["load"] == "pk.load(path)" and r["max_abs_loaded_minus_compacted"] == 0.0 for r in vit)
    for r in rows:  # a fresh instance loads exactly, or loading says which module it cannot rebuild
        assert r["max_abs_loaded_minus_compacted"] == 0.0 or "PrunedLayerNorm" in r["load"]
