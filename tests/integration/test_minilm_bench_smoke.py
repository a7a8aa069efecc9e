"""Smoke run of the core of benchmarks/minilm_fidelity.py on a tiny random BertModel (no download)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import clone_state, same_state  # noqa: E402
from llm_fixtures import bert_tokenizer, load_benchmark, random_sentences, tiny_bert  # noqa: E402


def _bench():
    return load_benchmark("minilm_fidelity")


def _tokenizer(tmp_path: Path):
    return bert_tokenizer(tmp_path)


_sentences = random_sentences


@pytest.mark.slow
def test_minilm_bench_core_on_tiny_bert(tmp_path: Path) -> None:
    bench = _bench()
    tok = _tokenizer(tmp_path)
    model = tiny_bert(vocab_size=len(tok))  # 2 blocks, hidden 32, 4 heads, MLP 64
    before = clone_state(model)
    calib_texts, eval_texts = _sentences(60, seed=1), _sentences(60, seed=2)

    result = bench.run_core(
        model, tok, calib_texts, eval_texts, methods=["magnitude", "wanda", "sparsegpt"], patterns=["50%", "2:4"],
        n_calib=4, seqlen=32, n_eval=30, max_length=64, seed=0, log=None,
    )

    # The reference model is left untouched: every row prunes its own copy.
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert same_state(model, before)

    rows = result["rows"]
    assert [(r["method"], r["pattern"]) for r in rows] == [("dense", "-"), ("random", "50%")] + [
        (m, p) for p in ["50%", "2:4"] for m in ["magnitude", "wanda", "sparsegpt"]
    ]
    dense = rows[0]
    for key in ("mean_cosine", "median_cosine", "p05_cosine", "min_cosine", "neighbour_agreement", "similarity_spearman"):
        assert dense[key] == pytest.approx(1.0, abs=1e-5), key
    assert dense["sparsity"] == 0.0 and dense["prune_s"] == 0.0
    for r in rows:
        assert r["n_texts"] == 30 and r["n_pairs"] == 30 * 29 // 2
        assert -1.0 <= r["min_cosine"] <= r["p05_cosine"] <= r["median_cosine"] <= 1.0
        assert r["min_cosine"] <= r["mean_cosine"] <= 1.0
        assert 0.0 <= r["neighbour_agreement"] <= 1.0
        assert math.isfinite(r["similarity_spearman"]) and -1.0 <= r["similarity_spearman"] <= 1.0
        assert r["prune_s"] >= 0 and r["embed_s"] >= 0
    for r in rows[1:]:
        assert r["sparsity"] == pytest.approx(0.5, abs=1e-3)
        assert r["mean_cosine"] < 1.0
    random_row = rows[1]
    best = max(rows[2:], key=lambda r: r["mean_cosine"])
    assert best["mean_cosine"] > random_row["mean_cosine"]

    linears = bench.block_linears(model)
    assert len(linears) == 2 * 6 and result["pruned_weights"] == sum(m.weight.numel() for m in linears.values())
    assert result["parameters"] == sum(p.numel() for p in model.parameters())
    assert result["calibration"] == {"windows": 4, "seqlen": 32, "tokens": 128}
    assert result["evaluation"]["texts"] == 30

    table = bench.table_rows(result)
    assert len(table) == len(rows) and all(len(t) == len(bench.COLUMNS) for t in table)


def test_minilm_bench_helpers(tmp_path: Path) -> None:
    bench = _bench()
    texts = ["a", "b", "a", "c", "d", "b"]
    drawn = bench.draw_texts(texts, 4, seed=5)
    assert sorted(drawn) == ["a", "b", "c", "d"] and drawn == bench.draw_texts(texts, 4, seed=5)
    with pytest.raises(ValueError, match="only 4 distinct evaluation texts; 5 requested"):
        bench.draw_texts(texts, 5, seed=0)
    model = tiny_bert(vocab_size=40)
    assert bench.random_prune(model, 0.5, seed=0) == pytest.approx(0.5, abs=1e-3)
    for m in bench.block_linears(model).values():
        assert int((m.weight == 0).sum()) == m.weight.numel() // 2
    assert model.pooler.dense.weight.count_nonzero() == model.pooler.dense.weight.numel()  # outside the blocks
    with pytest.raises(ValueError, match="Linear has no encoder.layer"):
        bench.block_linears(torch.nn.Linear(2, 2))
