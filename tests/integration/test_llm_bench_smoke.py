"""Smoke run of benchmarks/llm_oneshot.py on a tiny random Llama (no download): its core, and --quick end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import clone_state, same_state  # noqa: E402
from llm_fixtures import direct_perplexity, load_benchmark, tiny_llama, tiny_llama_folder, token_ids  # noqa: E402


def _bench():
    return load_benchmark("llm_oneshot")


def _tiny_llama() -> torch.nn.Module:
    """2 blocks, hidden 32, 4 heads in 2 KV groups, MLP 64, vocabulary 96."""
    return tiny_llama(initializer_range=0.02)


@pytest.mark.slow
def test_llm_bench_core_on_tiny_llama():
    bench = _bench()
    model = _tiny_llama()
    before = clone_state(model)
    g = torch.Generator().manual_seed(1)
    calib_stream = torch.randint(0, 96, (2000,), generator=g)
    eval_streams = {"near": torch.randint(0, 96, (2000,), generator=g), "far": torch.randint(0, 48, (1000,), generator=g)}

    result = bench.run_core(
        model, calib_stream, eval_streams, methods=["magnitude", "wanda", "sparsegpt"], patterns=["50%", "2:4"],
        n_calib=4, n_eval=4, seqlen=32, seed=0, calib_text="random ids", log=None,
    )

    # The dense model is left untouched: every method prunes its own copy.
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert same_state(model, before)

    assert result["domains"] == ["near", "far"]
    dense = result["dense"]["perplexity_by_domain"]
    assert dense == {d: pytest.approx(direct_perplexity(model, s, windows=4, seqlen=32, seed=0))
                     for d, s in eval_streams.items()}  # the dense model's, on each domain's seeded windows
    assert result["dense"]["perplexity"] == dense["near"]  # the first domain, as before
    assert dense["near"] != dense["far"]
    rows = result["rows"]
    assert [(r["method"], r["pattern"]) for r in rows] == [
        (m, p) for p in ["50%", "2:4"] for m in ["magnitude", "wanda", "sparsegpt"]
    ]
    for r in rows:
        assert r["sparsity"] == pytest.approx(0.5, abs=1e-6)
        for d in ("near", "far"):
            ppl = r["perplexity_by_domain"][d]
            assert math.isfinite(ppl) and r["ratio_by_domain"][d] == pytest.approx(ppl / dense[d])
        assert r["perplexity"] == r["perplexity_by_domain"]["near"] and r["ratio"] == r["ratio_by_domain"]["near"]
        assert r["prune_s"] >= 0 and r["eval_s"] >= 0
        assert r["calibration_tokens"] == (0 if r["method"] == "magnitude" else 4 * 32)
    assert result["calibration"] == {"text": "random ids", "windows": 4, "seqlen": 32, "tokens": 128}
    assert result["evaluation"] == {"domains": ["near", "far"], "windows": 4, "seqlen": 32, "tokens": 128}
    # fp32 parameters and buffers of the dense model (no tied weights here, so nothing is counted once for two)
    assert result["model_bytes"] == sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])

    columns = bench.table_columns(result)
    assert columns[3:5] == ["near ppl (x dense)", "far ppl (x dense)"]  # one column per domain
    table = bench.table_rows(result)
    assert len(table) == 1 + len(rows) and all(len(t) == len(columns) for t in table)
    assert table[0][3] == f"{dense['near']:.2f} (1.00)"
    assert table[1][4] == f"{rows[0]['perplexity_by_domain']['far']:.2f} ({rows[0]['ratio_by_domain']['far']:.2f})"
    # a single stream is the domain "eval"
    single = bench.run_core(model, calib_stream, eval_streams["near"], methods=["magnitude"], patterns=["50%"],
                            n_calib=4, n_eval=4, seqlen=32, log=None)
    assert single["domains"] == ["eval"] and single["dense"]["perplexity"] == pytest.approx(dense["near"])


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
    # A named method calibrates on the calibration text alone (as published) unless +mix or +self says otherwise.
    assert bench.parse_variant("sparsegpt+owl+seq") == ("sparsegpt", {"allocation": "owl", "sequential": True,
                                                                      "self_calibration": 0.0, "reconstruct": 0})
    assert bench.parse_variant("wanda+rec") == ("wanda", {"reconstruct": bench.REC_EPOCHS, "self_calibration": 0.0})
    assert bench.parse_variant("sparsegpt+mix+hold+shrink") == ("sparsegpt", {
        "self_calibration": 0.5, "reconstruct": bench.HOLD_EPOCHS, "reconstruct_holdout": bench.HOLDOUT,
        "shrink": bench.SHRINK})
    assert bench.parse_variant("ria+self") == ("ria", {"self_calibration": 1.0, "reconstruct": 0})
    assert bench.parse_variant("default") == ("default", {})
    assert bench.parse_variant("wanda+dsnot") == ("wanda", {"refine": "dsnot", "self_calibration": 0.0, "reconstruct": 0})
    assert bench.parse_variant("ria+dsnotref")[1]["refine"] == "dsnot"
    for bad in ("obs", "wanda+lamp", "wanda+owl+owl", "wanda+owl+depth", "wanda+rec+hold", "wanda+mix+self", "default+mix",
                "sparsegpt+dsnot", "wanda+dsnot+dsnotref"):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(bad))):
            bench.parse_variant(bad)
    model = _tiny_llama()
    g = torch.Generator().manual_seed(2)
    stream = torch.randint(0, 96, (2000,), generator=g)
    result = bench.run_core(
        model, stream, stream.flip(0), methods=["wanda+owl", "sparsegpt+rec", "magnitude+depth", "wanda+dsnot",
                                                "wanda+dsnotref"],
        patterns=["50%", "2:4"], n_calib=4, n_eval=4, seqlen=32, seed=0, log=None,
    )
    # Allocation variants are unstructured only: at 2:4 just the other rows run.
    assert [(r["method"], r["pattern"]) for r in result["rows"]] == [
        ("wanda+owl", "50%"), ("sparsegpt+rec", "50%"), ("magnitude+depth", "50%"), ("wanda+dsnot", "50%"),
        ("wanda+dsnotref", "50%"), ("sparsegpt+rec", "2:4"), ("wanda+dsnot", "2:4"), ("wanda+dsnotref", "2:4"),
    ]
    owl, _, depth = result["rows"][:3]
    # the guarded and the reference swap rules are two different refinements of the same Wanda masks
    guarded, reference = result["rows"][3:5]
    assert guarded["ratio"] != reference["ratio"]
    assert owl["outlier_ratio"] is not None and len(owl["block_sparsity"]) == 2
    assert depth["block_sparsity"] == pytest.approx([0.45, 0.55])
    assert depth["calibration_tokens"] == 0  # magnitude with a fixed ramp needs no text


# Words of every evaluation domain, so the tokenizer (unknown words map to <unk>) sees some of each.
DOMAIN_WORDS = ("the of and to in that a is for it with as his he be by on not this but from they all shall unto lord "
                "god said was were which said new government year people company game film data python function").split()


@pytest.mark.slow
def test_llm_bench_quick_end_to_end(tmp_path, capsys):
    """--quick on a tiny model: the KJV's calibration half, every evaluation domain, one column per domain."""
    pytest.importorskip("tokenizers")
    bench = _bench()
    folder = tiny_llama_folder(tmp_path / "tiny", words=DOMAIN_WORDS)
    assert bench.main(["--quick", "--model", str(folder), "--seqlen", "32", "--methods", "magnitude", "wanda",
                       "--out", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "results" / "llm_oneshot_quick.json").read_text())
    domains = [d for d in bench.EVAL_DOMAINS if d != bench.VALIDATION_DOMAIN]
    assert result["domains"] == domains == ["kjv", "pydoc", "news"]  # not the validation domain, fortunes
    assert result["calibration"] == {"text": "kjv (calibration half)", "windows": 8, "seqlen": 32, "tokens": 256}
    assert result["data"]["calibration"]["text"] == "kjv" and "even" in result["data"]["calibration"]["split"]
    assert result["evaluation"] == {"domains": domains, "windows": 8, "seqlen": 32, "tokens": 256}
    assert [r["method"] for r in result["rows"]] == ["magnitude", "wanda"]
    for r in result["rows"]:
        assert set(r["ratio_by_domain"]) == set(domains) and all(math.isfinite(v) for v in r["ratio_by_domain"].values())
    docs = {d: result["data"]["domains"][d]["documents"] for d in domains}
    assert docs["kjv"] == 33 and docs["news"] == 2127 and docs["pydoc"] > 50  # pydoc's topics follow the Python version
    assert result["settings"]["quick"] is True and result["settings"]["domains"] == domains
    for d in domains:
        assert f"{d} ppl (x dense)" in out
    assert "calibration kjv (calibration half)" in " ".join(out.split())


def test_llm_bench_refuses_unknown_domain_and_calibration_domain(capsys):
    bench = _bench()
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--domains", "kjv,wiki"])
    assert "domain 'wiki'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--calib-text", "news"])
    assert "'news' is an evaluation domain" in capsys.readouterr().err


@pytest.mark.slow
def test_llm_bench_default_row_is_prune_llm_defaults():
    bench = _bench()
    model = _tiny_llama()
    stream = token_ids(2000, vocab=96, seed=4)
    result = bench.run_core(model, stream, stream.flip(0), methods=["default", "sparsegpt", "sparsegpt+mix+rec"],
                            patterns=["50%"], n_calib=4, n_eval=4, seqlen=32, seed=0, batch_size=2, log=None)
    default, plain, mixed = result["rows"]
    assert default["settings"]["method"] == "sparsegpt" and default["settings"]["self_calibration"] == 0.5
    assert default["settings"]["reconstruct"] == 2 and plain["settings"]["reconstruct"] == 0
    assert default["generated_windows"] == 2 and plain["generated_windows"] == 0
    # The default is SparseGPT with half the windows written by the model and 2 epochs of
    # reconstruction: the +mix+rec row, exactly.
    assert default["perplexity_by_domain"] == mixed["perplexity_by_domain"]
    assert plain["perplexity_by_domain"] != mixed["perplexity_by_domain"]


def test_llm_in_domain_calibrates_and_evaluates_on_alternate_documents():
    from llm_fixtures import word_tokenizer

    from prunekit.llm.data import SEPARATOR, domain_documents, domain_stream

    bench = load_benchmark("llm_in_domain")
    tok = word_tokenizer()
    calib, evals, n = bench.halves("pydoc", tok)
    whole, info = domain_stream("pydoc", tok)
    docs = domain_documents("pydoc")
    assert n == info["documents"] == len(docs) and calib.numel() + evals.numel() == whole.numel()
    first, second = (tok(t + SEPARATOR, add_special_tokens=False)["input_ids"] for _, t in docs[:2])
    assert calib[: len(first)].tolist() == first and evals[: len(second)].tolist() == second
    assert whole[len(first): len(first) + len(second)].tolist() == second  # the second document is not calibration
    with pytest.raises(SystemExit):
        bench.main(["--methods", "default"])  # the model's own text is not the served domain's
