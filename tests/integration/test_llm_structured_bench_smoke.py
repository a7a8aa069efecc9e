"""Smoke run of the core of benchmarks/llm_structured.py on a tiny random Llama (no download)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    path = ROOT / "benchmarks" / "llm_structured.py"
    spec = importlib.util.spec_from_file_location("_llm_structured_bench", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _tiny_llama() -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.slow
def test_llm_structured_bench_core_on_tiny_llama():
    bench = _bench()
    model = _tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
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
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    dense = result["dense"]
    assert math.isfinite(dense["perplexity"]) and dense["perplexity"] > 1 and dense["parameters"] == dense_params
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
