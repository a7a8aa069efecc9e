"""Smoke run of the core of benchmarks/llm_structured.py on a tiny random Llama (no download)."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import clone_state, same_state  # noqa: E402
from llm_fixtures import direct_perplexity, load_benchmark, tiny_llama  # noqa: E402


def _bench():
    return load_benchmark("llm_structured")


@pytest.mark.slow
def test_llm_structured_bench_core_on_tiny_llama():
    bench = _bench()
    model = tiny_llama(initializer_range=0.02)  # 2 blocks, hidden 32, 4 heads in 2 KV groups, MLP 64, vocabulary 96
    before = clone_state(model)
    dense_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(1)
    calib_stream = torch.randint(0, 96, (2000,), generator=g)
    eval_stream = torch.randint(0, 96, (2000,), generator=g)
    S = bench.Setting
    settings = [
        S("heads 1/2 groups", heads=0.5, gqa="groups", criterion="magnitude"),
        S("heads 1/2 queries", heads=0.5, gqa="queries", criterion="wanda"),
        S("neurons 25%", neurons=0.25, criterion="wanda"),
        S("both", heads=0.5, neurons=0.5, criterion="wanda"),
    ]

    result = bench.run_core(
        model, calib_stream, eval_stream, settings=settings, n_calib=4, n_eval=4, seqlen=32,
        latency_tokens=16, repeats=2, log=None,
    )

    # The dense model is left untouched: every setting prunes its own copy.
    assert model.config.num_attention_heads == 4 and model.config.intermediate_size == 64
    assert same_state(model, before)

    dense = result["dense"]
    # the dense model's perplexity on the seeded evaluation windows
    assert dense["perplexity"] == pytest.approx(direct_perplexity(model, eval_stream, windows=4, seqlen=32, seed=0))
    assert dense["parameters"] == dense_params
    rows = result["rows"]
    assert [r["label"] for r in rows] == [s.label for s in settings]
    shapes = [(r["heads_after"], r["kv_heads_after"], r["neurons_after"]) for r in rows]
    assert shapes == [(2, 1, 64), (2, 2, 64), (4, 2, 48), (2, 1, 32)]
    for r in rows:
        assert 0 < r["removed"] < 1 and r["parameters"] < dense_params
        assert math.isfinite(r["perplexity"]) and r["ratio"] == pytest.approx(r["perplexity"] / dense["perplexity"])
        assert len(r["latency_runs_s"]) == len(r["dense_latency_runs_s"]) == 2
        assert r["speedup"] == pytest.approx(r["dense_latency_s"] / r["latency_s"])
        assert r["calibration_tokens"] == (0 if r["criterion"] == "magnitude" else 4 * 32)
    assert result["calibration"] == {"windows": 4, "seqlen": 32, "tokens": 128}
    assert result["latency"]["tokens"] == 16

    table = bench.table_rows(result)
    assert len(table) == 1 + len(rows) and all(len(t) == len(bench.COLUMNS) for t in table)


def test_default_settings_cover_both_gqa_modes_and_criteria():
    bench = _bench()
    settings = bench.default_settings()
    assert {s.gqa for s in settings if s.heads} == {"groups", "queries"}
    assert {s.criterion for s in settings} == {"magnitude", "wanda"}
    assert any(s.heads and s.neurons for s in settings)
    assert all(s.criterion == "wanda" for s in bench.default_settings(["wanda"]))
