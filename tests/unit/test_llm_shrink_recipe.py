"""The ``shrink`` and ``distill`` stages of llm recipes, on a tiny Llama."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from llm_fixtures import WORDS, direct_perplexity, eval_stream, tiny_llama_folder, word_text  # noqa: E402

from prunekit.errors import PruneError  # noqa: E402
from prunekit.recipes import load_recipe, run_recipe  # noqa: E402

WORDS45 = WORDS[:45]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("shrinkrecipe")
    tiny_llama_folder(root / "tiny", words=WORDS45, num_hidden_layers=4)
    word_text(root / "calib.txt", 1200, 1, WORDS45)
    word_text(root / "eval.txt", 1200, 2, WORDS45)
    return root


RECIPE = """\
task: llm
model: tiny
calibration: {{text: calib.txt, windows: 12, seqlen: 16, seed: 0}}
evaluation: {{text: eval.txt, windows: 6}}
stages:
  - shrink: {{params: {params}, modes: [width, depth, mixed], heldout: 4}}
  - distill: {{tokens: 2k, lr: 1.0e-3, batch_size: 4}}
"""


@pytest.mark.slow
def test_shrink_then_distill_recipe(folder, tmp_path, capsys):
    from prunekit.llm.models import load_causal_lm

    dense, tok = load_causal_lm(folder / "tiny")
    budget = int(0.75 * sum(p.numel() for p in dense.parameters()))
    path = folder / "shrink.yaml"
    path.write_text(RECIPE.format(params=budget))
    r = load_recipe(path)
    assert [s.kind for s in r.stages] == ["shrink", "distill"] and r.stages[1].options.tokens == 2000
    m = run_recipe(r, tmp_path / "out")
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text()) == m
    model = transformers.AutoModelForCausalLM.from_pretrained(out / "model")
    n = sum(p.numel() for p in model.parameters())
    assert n <= budget and m["params"]["after"] == n
    shrink_rec, distill_rec = m["stages"]
    assert len(shrink_rec["candidates"]) == 3 and shrink_rec["chosen"]["params"] == n
    assert distill_rec["tokens"] >= 2000
    net, tok = load_causal_lm(out / "model")
    want = direct_perplexity(net, eval_stream(str(folder / "eval.txt"), tok), windows=6, seqlen=16, seed=0)
    assert m["perplexity"]["pruned"] == pytest.approx(want, rel=1e-5)
    from prunekit.cli.llm import llm_summary

    capsys.readouterr()
    llm_summary(m, "run")  # what `prunekit run` prints after these stages (it raised KeyError)
    printed = capsys.readouterr().out
    assert f"shrink: {shrink_rec['summary']}" in printed and "distill: " in printed


@pytest.mark.parametrize("stage,message", [
    ("shrink: {modes: [width]}", "exactly one budget"),
    ("shrink: {params: lots}", "params"),
    ("shrink: {params: 10k, modes: [sideways]}", "modes"),
    ("distill: {lr: 0.1}", "tokens"),
    ("distill: {tokens: -3}", "tokens"),
])
def test_bad_stages_are_named(folder, stage, message):
    path = folder / "bad.yaml"
    path.write_text(f"task: llm\nmodel: tiny\ncalibration: {{text: calib.txt}}\nstages:\n  - {stage}\n")
    with pytest.raises(PruneError, match=message):
        load_recipe(path)
