"""shrink_encoder: a sentence encoder cut to a parameter budget keeps its hidden size, meets
the budget exactly as counted, picks the candidate with the best held-out cosine, and comes
back closer to the dense embeddings after distillation; the input model is never changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from conftest import clone_state, same_state  # noqa: E402
from llm_fixtures import bert_tokenizer, random_sentences, tiny_bert, tiny_llama  # noqa: E402

from prunekit.errors import PruneError, PruneTypeError  # noqa: E402
from prunekit.llm import sentence_embeddings, shrink_encoder  # noqa: E402


@pytest.fixture
def tok(tmp_path: Path):
    return bert_tokenizer(tmp_path)


_sentences = random_sentences


def _count(m) -> int:
    return sum(p.numel() for p in m.parameters())


def test_a_parameter_budget_is_met_with_the_hidden_size_kept(tok):
    model = tiny_bert(vocab_size=len(tok), num_hidden_layers=4, intermediate_size=64)
    before = clone_state(model)
    texts, held = _sentences(200, seed=1), _sentences(40, seed=2)
    budget = int(0.8 * _count(model))
    small, report = shrink_encoder(model, tok, texts, params=budget, heldout=held, epochs=3, lr=3e-3,
                                   batch_size=16, calibration_windows=4, seqlen=32, max_length=64)
    assert same_state(model, before)  # the teacher is never changed
    assert small.config.hidden_size == model.config.hidden_size == 32
    assert _count(small) <= budget and report.chosen["params"] == _count(small)
    modes = [c["shape"]["mode"] for c in report.candidates]
    assert modes == ["width", "depth", "mixed"]
    for c in report.candidates:
        assert c["params"] <= budget and c["shape"]["hidden"] == 32
    depth = report.candidates[1]["shape"]
    assert depth["intermediate"] == 64 and depth["layers"] < 4
    # The chosen candidate is the one with the best held-out cosine after the search.
    best = max(report.candidates, key=lambda c: c["heldout_cosine"])
    assert report.chosen["shape"] == best["shape"]
    dense = sentence_embeddings(model, tok, held)
    cos = float(F.cosine_similarity(sentence_embeddings(small, tok, held), dense, dim=-1).mean())
    assert cos == pytest.approx(report.chosen["heldout_cosine"], abs=1e-5)
    assert cos > best["heldout_cosine_pruned"]
    assert report.distill_samples == 3 * len(texts) + sum(c["search_samples"] for c in report.candidates)
    assert report.distill_tokens is None


def test_the_shrunk_encoder_reloads_as_a_stock_model(tok, tmp_path: Path):
    model = tiny_bert(vocab_size=len(tok), num_hidden_layers=3)
    small, _ = shrink_encoder(model, tok, _sentences(60, seed=3), params=int(0.85 * _count(model)), modes=("mixed",),
                              calibration_windows=2, seqlen=32, max_length=64, batch_size=16)
    small.save_pretrained(tmp_path / "small")
    again = transformers.BertModel.from_pretrained(tmp_path / "small").eval()
    held = _sentences(10, seed=4)
    assert torch.allclose(sentence_embeddings(again, tok, held), sentence_embeddings(small, tok, held), atol=1e-6)


def test_bad_calls_are_refused(tok):
    model = tiny_bert(vocab_size=len(tok))
    texts = _sentences(20, seed=5)
    with pytest.raises(PruneError, match="exactly one budget"):
        shrink_encoder(model, tok, texts)
    with pytest.raises(PruneError, match="exactly one budget"):
        shrink_encoder(model, tok, texts, params="1k", macs_budget="1M")
    with pytest.raises(PruneError, match=r"3 candidates \(width, depth, mixed\) need heldout="):
        shrink_encoder(model, tok, texts, params=int(0.8 * _count(model)))
    with pytest.raises(PruneError, match="already meets the budget"):
        shrink_encoder(model, tok, texts, params=10**9, modes=("depth",))
    with pytest.raises(PruneError, match="modes must be one of"):
        shrink_encoder(model, tok, texts, params="1k", modes=("tall",))
    with pytest.raises(PruneError, match="lr must be a number > 0"):
        shrink_encoder(model, tok, texts, params="1k", modes=("depth",), lr=0)
    with pytest.raises(PruneError, match="batch_size must be"):
        shrink_encoder(model, tok, texts, params="1k", modes=("depth",), batch_size=0)
    with pytest.raises(PruneTypeError, match="BERT-style encoders"):
        shrink_encoder(tiny_llama(), tok, texts, params="1k")
