"""Smoke run of benchmarks/llm_scale.py --quick, and its projection's arithmetic."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from llm_fixtures import load_benchmark  # noqa: E402


def test_block_figures_match_llama_7b() -> None:
    bench = load_benchmark("llm_scale")
    f = bench.block_figures(bench.SHAPES["7B"])
    # LLaMA-7B has 6,738,415,616 parameters: 32 blocks, two 32000 x 4096 embeddings, 65 norms of 4096.
    assert 32 * f["params"] + 2 * 32000 * 4096 + 65 * 4096 == 6_738_415_616
    assert f["columns"] == 6 * 4096 + 11008


def test_projection_arithmetic() -> None:
    bench = load_benchmark("llm_scale")
    rows = {(r["model"], r["gpus"]): r for r in bench.projection()}
    one = rows[("7B", 1)]
    # The anchors: 32 blocks x 0.9 s (Wanda) and x 8.5 s (SparseGPT) on one H200.
    assert one["wanda_min"] == round(32 * 0.9 / 60, 1)
    assert one["sparsegpt_min_low"] == one["sparsegpt_min_high"] == round(32 * 8.5 / 60, 1)
    for name in bench.SHAPES:
        r1, r8 = rows[(name, 1)], rows[(name, 8)]
        assert r8["wanda_min"] == pytest.approx(r1["wanda_min"] / 8, abs=0.1)  # calibration splits over the ranks
        assert r8["sparsegpt_min_low"] < r1["sparsegpt_min_low"]  # ... the sweeps do not
        assert r1["peak_gb_sparsegpt"] > r1["peak_gb_wanda"] and r8["activations_gb_per_gpu"] < r1["activations_gb_per_gpu"]
    assert rows[("7B", 1)]["weights_gb"] < rows[("70B", 1)]["weights_gb"] < rows[("405B", 1)]["weights_gb"]


@pytest.mark.slow
def test_quick_run(tmp_path) -> None:
    bench = load_benchmark("llm_scale")
    result = bench.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "llm_scale_quick.json").read_text())
    assert saved["quick"] and [r["depth"] for r in saved["depth"]] == bench.QUICK["depths"]
    assert all(r["same_weights"] for r in result["depth"])  # offload wrote what the in-memory path computes
    assert [r["processes"] for r in result["processes"]] == [1, 2]
    assert all(r["same_weights_as_1"] for r in result["processes"])  # 2 processes: the single process's weights
    assert len(result["projection"]) == 6
