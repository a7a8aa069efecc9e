"""benchmarks/gpu_check.py runs end to end in its dry-run form (tiny shapes, on the CPU
here): our one-shot pruning and the reference algorithms agree on the masks."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")


def test_dry_run_compares_ours_with_the_reference(tmp_path, capsys):
    from llm_fixtures import load_benchmark

    bench = load_benchmark("gpu_check")
    assert bench.main(["--dry-run", "--skip-matrix", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "gpu_check_dry.json").read_text())
    rows = {r["method"]: r for r in data["llm"]}
    assert set(rows) == {"wanda 50%", "sparsegpt 50%", "sparsegpt 2:4"}
    # Wanda and 2:4 choose the same weights as the reference; SparseGPT's unstructured
    # block counts differ only where the reference's threshold keeps ties (>= 99 % equal).
    assert rows["wanda 50%"]["mask_agreement"] == 1.0
    assert rows["sparsegpt 2:4"]["mask_agreement"] == 1.0
    assert rows["sparsegpt 50%"]["mask_agreement"] > 0.99
    assert all(r["ours_s"] > 0 and r["reference_s"] > 0 for r in rows.values())
    out = capsys.readouterr().out
    assert "not measured (they need CUDA)" in out or data["semi_structured"]
