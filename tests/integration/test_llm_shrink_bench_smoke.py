"""Smoke run of benchmarks/llm_shrink.py --quick on a tiny random Llama (no download)."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")

from llm_fixtures import load_benchmark  # noqa: E402


@pytest.mark.slow
def test_llm_shrink_bench_quick_rows_meet_budgets(tmp_path, monkeypatch):
    bench = load_benchmark("llm_shrink")
    model, calib, evals = bench._quick_inputs()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    res = bench.run_core(model, calib, evals, budget_tokens=256, seqlen=16, windows=8, lr=1e-3, batch_size=4,
                         prefill=16, decode=4, repeats=1, log=lambda s: None)
    assert [(r["ratio"], r["mode"]) for r in res["rows"]] == [(a, m) for a in bench.RATIOS for m in bench.MODES]
    for r in res["rows"]:
        assert r["params"] <= r["target"] and r["params_ratio"] <= 1 - r["ratio"]
        assert r["distill_tokens"] >= 256 and r["finetune_tokens"] >= 256
        assert r["prefill_speedup"] > 0 and set(r["distilled"]) == set(evals)
    assert all(v.equal(model.state_dict()[k]) for k, v in dense.items())  # the teacher is untouched
    assert bench.table(res)
