"""Smoke run of the core of benchmarks/minilm_shrink.py on a tiny random BertModel (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from conftest import clone_state, same_state  # noqa: E402
from llm_fixtures import bert_tokenizer, load_benchmark, random_sentences, tiny_bert  # noqa: E402

from prunekit.errors import PruneError  # noqa: E402

_sentences = random_sentences


@pytest.mark.slow
def test_minilm_shrink_core_on_tiny_bert(tmp_path: Path) -> None:
    bench = load_benchmark("minilm_shrink")
    tok = bert_tokenizer(tmp_path)
    model = tiny_bert(vocab_size=len(tok), num_hidden_layers=3)
    before = clone_state(model)
    eval_sets = {"a": _sentences(30, 2), "b": _sentences(30, 3)}
    result = bench.run_core(model, tok, _sentences(80, 1), _sentences(120, 4), eval_sets, shapes=["2x32", "3x16"],
                            n_calib=4, seqlen=32, epochs=2, lr=3e-3, batch_size=16, max_length=64, log=None)
    assert same_state(model, before)  # every shape prunes its own copy
    rows = result["rows"]
    assert [r["shape"] for r in rows] == ["2x32", "3x16"]
    for r in rows:
        assert r["params"] < result["dense_params"]
        assert r["params_ratio"] == pytest.approx(r["params"] / result["dense_params"])
        assert len(r["kept_blocks"]) == int(r["shape"][0])
        for name in eval_sets:
            for stage in ("pruned", "distilled"):
                assert -1.0 <= r[stage][name]["mean_cosine"] <= 1.0
        # Distillation on unlabelled text brings the embeddings closer on both held-out sets.
        assert r["distilled"]["a"]["mean_cosine"] > r["pruned"]["a"]["mean_cosine"]
        assert r["final_loss"] >= 0.0 and r["distill_steps"] == 2 * 8
    table = bench.table_rows(result)
    assert len(table) == 2 and table[0][0] == "2x32"
    with pytest.raises(PruneError, match="must be BLOCKSxNEURONS"):
        bench.parse_shape("4-512")
    doc = "The first words here are many. The second one is here too!\n\n    code = 1 and more code here\n\nShort one."
    assert bench.sentences([("d", doc)]) == ["The first words here are many.", "The second one is here too!"]
