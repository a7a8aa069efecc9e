"""The real models: SmolLM2-135M on King James Bible text, and all-MiniLM-L6-v2.

These load the packaged weights (installed by the Makefile with the other data packages),
so they check what the tiny random models cannot: that the one-shot methods rank as the
literature says on a trained model, that structured pruning of a real checkpoint saves
and reloads, and that a pruned sentence encoder stays close to the dense one.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from prunekit.llm import (  # noqa: E402
    calibration_windows,
    embedding_fidelity,
    encoder_calibration,
    eval_windows,
    kjv_streams,
    kjv_verses,
    load_causal_lm,
    load_encoder,
    perplexity,
    prune_llm,
    prune_structured,
    sentence_embeddings,
)

pytestmark = pytest.mark.slow
SEQLEN = 128


@pytest.fixture(scope="module")
def smollm2():
    torch.manual_seed(0)
    model, tok = load_causal_lm("smollm2")
    calib_stream, eval_stream, info = kjv_streams(tok)
    calib = calibration_windows(calib_stream, 8, SEQLEN, seed=0)
    evals = eval_windows(eval_stream, 6, SEQLEN, seed=0)
    return model, tok, calib, evals, info


@pytest.fixture(scope="module")
def plain(smollm2):
    """The published methods as published (the calibration windows alone, no
    reconstruction) at 50 %: the pruned copies, by method, pruned once for the tests below."""
    model, _, calib, _, _ = smollm2
    out = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        work = copy.deepcopy(model)
        report = prune_llm(work, calib, method=method, sparsity=0.5, self_calibration=0, reconstruct=0)
        assert report.overall_sparsity == pytest.approx(0.5, abs=1e-3)
        out[method] = work
    return out


def test_kjv_halves_are_disjoint_and_cover_the_bible(smollm2):
    *_, info = smollm2
    calib, evals = kjv_verses()
    assert len(calib) + len(evals) == 31103 == info["calibration_verses"] + info["evaluation_verses"]
    assert not set(info["calibration_books"]) & set(info["evaluation_books"])
    assert len(info["calibration_books"]) + len(info["evaluation_books"]) == 66
    assert calib[0].startswith("In the beginning God created")


def test_smollm2_one_shot_methods_rank_as_expected(smollm2, plain):
    model, _, _, evals, info = smollm2
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert info["calibration_books"][0] == "Genesis" and info["evaluation_books"][0] == "Exodus"
    dense = perplexity(model, evals, seqlen=SEQLEN)
    assert 8.0 < dense < 60.0  # a trained model on English prose, not a random one
    ratios = {method: perplexity(work, evals, seqlen=SEQLEN) / dense for method, work in plain.items()}
    print(ratios)
    # Magnitude far behind both. With this small calibration (8 x 128 tokens) Wanda and
    # SparseGPT are within a few percent of each other and their order depends on the
    # text; the 64 x 512 benchmark (docs/llm.md) separates them.
    assert ratios["magnitude"] > 2.5 * max(ratios["wanda"], ratios["sparsegpt"])
    assert 1.0 < ratios["wanda"] < 3.0 and 1.0 < ratios["sparsegpt"] < 3.0
    assert abs(ratios["sparsegpt"] / ratios["wanda"] - 1) < 0.15
    assert perplexity(model, evals, seqlen=SEQLEN) == pytest.approx(dense)  # copies only


def test_smollm2_default_holds_up_off_the_calibration_domain(smollm2, plain):
    """prune_llm's defaults (SparseGPT, half the windows written by the model, 2 epochs of
    reconstruction) against plain SparseGPT on the same KJV windows: far better on Python's
    documentation, which neither calibrates on, at a bounded cost on the KJV's held-out half.

    With these 8 windows the default keeps only 4 of the KJV, and which text the model
    writes for the other 4 depends on the machine's arithmetic (sampling amplifies the last
    bit): the KJV ratio was within 1.05x of plain SparseGPT's on one machine and 1.14x on
    another (2.11 vs 1.86; pydoc 3.20 vs 6.48). The 64 x 512 benchmark (docs/llm.md) is
    where the default is measured against the others in-domain."""
    from prunekit.llm.data import domain_stream

    model, tok, calib, evals, _ = smollm2
    pydoc = eval_windows(domain_stream("pydoc", tok)[0], 6, SEQLEN, seed=0)
    dense = {"kjv": perplexity(model, evals, seqlen=SEQLEN), "pydoc": perplexity(model, pydoc, seqlen=SEQLEN)}
    default = copy.deepcopy(model)
    report = prune_llm(default, calib, sparsity=0.5)
    assert report.overall_sparsity == pytest.approx(0.5, abs=1e-3)
    ratios = {name: {"kjv": perplexity(work, evals, seqlen=SEQLEN) / dense["kjv"],
                     "pydoc": perplexity(work, pydoc, seqlen=SEQLEN) / dense["pydoc"]}
              for name, work in (("plain", plain["sparsegpt"]), ("default", default))}
    print(ratios)
    assert ratios["default"]["pydoc"] < 0.8 * ratios["plain"]["pydoc"]
    assert ratios["default"]["kjv"] < 1.2 * ratios["plain"]["kjv"]


def test_smollm2_structured_neurons_save_and_reload(smollm2, tmp_path):
    model, tok, calib, evals, _ = smollm2
    work = copy.deepcopy(model)
    report = prune_structured(work, calib[:4], neurons=0.25, criterion="wanda")
    assert work.config.intermediate_size == 1152 and report.parameters_after < report.parameters_before
    ratio = perplexity(work, evals, seqlen=SEQLEN) / perplexity(model, evals, seqlen=SEQLEN)
    assert 1.0 < ratio < 2.5
    work.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = evals[:1, :32]
    with torch.no_grad():
        a = work(input_ids=ids, use_cache=False).logits
        b = again(input_ids=ids, use_cache=False).logits
    assert torch.equal(a, b)


def test_minilm_sparsegpt_keeps_sentence_embeddings():
    model, tok = load_encoder("minilm")
    calib_verses, eval_verses = kjv_verses()
    texts = eval_verses[::100][:200]
    dense_emb = sentence_embeddings(model, tok, texts)
    calib = encoder_calibration(tok, calib_verses, n=16, seqlen=128, seed=0)
    cos = {}
    for method in ("magnitude", "sparsegpt"):
        work = copy.deepcopy(model)
        prune_llm(work, calib, method=method, sparsity=0.5)
        cos[method] = embedding_fidelity(dense_emb, work, tok, texts).mean_cosine
    assert math.isfinite(cos["sparsegpt"]) and cos["sparsegpt"] > 0.85
    assert cos["sparsegpt"] > cos["magnitude"] + 0.05
