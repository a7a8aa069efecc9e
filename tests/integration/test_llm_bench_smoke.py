"""Smoke run of the core of benchmarks/llm_oneshot.py on a tiny random Llama (no download)."""

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
    path = ROOT / "benchmarks" / "llm_oneshot.py"
    spec = importlib.util.spec_from_file_location("_llm_oneshot_bench", path)
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
def test_llm_bench_core_on_tiny_llama():
    bench = _bench()
    model = _tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    calib_stream = torch.randint(0, 96, (2000,), generator=g)
    eval_stream = torch.randint(0, 96, (2000,), generator=g)

    result = bench.run_core(
        model, calib_stream, eval_stream, methods=["magnitude", "wanda", "sparsegpt"], patterns=["50%", "2:4"],
        n_calib=4, n_eval=4, seqlen=32, seed=0, log=None,
    )

    # The dense model is left untouched: every method prunes its own copy.
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    dense = result["dense"]["perplexity"]
    assert math.isfinite(dense) and dense > 1
    rows = result["rows"]
    assert [(r["method"], r["pattern"]) for r in rows] == [
        (m, p) for p in ["50%", "2:4"] for m in ["magnitude", "wanda", "sparsegpt"]
    ]
    for r in rows:
        assert r["sparsity"] == pytest.approx(0.5, abs=1e-6)
        assert math.isfinite(r["perplexity"]) and r["ratio"] == pytest.approx(r["perplexity"] / dense)
        assert r["prune_s"] >= 0 and r["eval_s"] >= 0
        assert r["calibration_tokens"] == (0 if r["method"] == "magnitude" else 4 * 32)
    assert result["calibration"] == {"windows": 4, "seqlen": 32, "tokens": 128}
    assert result["evaluation"] == {"windows": 4, "seqlen": 32, "tokens": 128}
    assert result["model_bytes"] > 0

    table = bench.table_rows(result)
    assert len(table) == 1 + len(rows) and all(len(t) == len(bench.COLUMNS) for t in table)


def test_llm_bench_windows_are_seeded_and_disjoint():
    bench = _bench()
    stream = torch.arange(1000)
    a = bench.calibration_windows(stream, 5, 50, seed=3)
    assert torch.equal(a, bench.calibration_windows(stream, 5, 50, seed=3)) and a.shape == (5, 50)
    assert all(torch.equal(w, torch.arange(int(w[0]), int(w[0]) + 50)) for w in a)  # contiguous slices
    e = bench.eval_windows(stream, 6, 50, seed=3)
    assert e.shape == (6, 50) and torch.equal(e, bench.eval_windows(stream, 6, 50, seed=3))
    starts = e[:, 0].tolist()
    assert starts == sorted(set(starts)) and all(s % 50 == 0 for s in starts)  # distinct, aligned, no overlap
    with pytest.raises(ValueError):
        bench.eval_windows(stream, 21, 50, seed=0)


@pytest.mark.slow
def test_llm_bench_variants():
    import argparse
    import re

    bench = _bench()
    assert bench.parse_variant("sparsegpt+owl+seq") == ("sparsegpt", {"allocation": "owl", "sequential": True})
    assert bench.parse_variant("wanda+rec") == ("wanda", {"reconstruct": bench.REC_EPOCHS})
    for bad in ("obs", "wanda+lamp", "wanda+owl+owl", "wanda+owl+depth"):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(bad))):
            bench.parse_variant(bad)
    model = _tiny_llama()
    g = torch.Generator().manual_seed(2)
    stream = torch.randint(0, 96, (2000,), generator=g)
    result = bench.run_core(
        model, stream, stream.flip(0), methods=["wanda+owl", "sparsegpt+rec", "magnitude+depth"], patterns=["50%", "2:4"],
        n_calib=4, n_eval=4, seqlen=32, seed=0, log=None,
    )
    # Allocation variants are unstructured only: at 2:4 just the reconstruction row runs.
    assert [(r["method"], r["pattern"]) for r in result["rows"]] == [
        ("wanda+owl", "50%"), ("sparsegpt+rec", "50%"), ("magnitude+depth", "50%"), ("sparsegpt+rec", "2:4")
    ]
    owl, _, depth, _ = result["rows"]
    assert owl["outlier_ratio"] is not None and len(owl["block_sparsity"]) == 2
    assert depth["block_sparsity"] == pytest.approx([0.45, 0.55])
    assert depth["calibration_tokens"] == 0  # magnitude with a fixed ramp needs no text
