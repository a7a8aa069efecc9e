"""`prunekit llm shrink` on a tiny random Llama with an offline word-level tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from llm_fixtures import tiny_llama_folder, word_text  # noqa: E402

from prunekit.cli import app  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("shrink")
    model = tiny_llama_folder(root / "tiny", num_hidden_layers=4)
    calib = word_text(root / "calib.txt", 2400, seed=1)
    return {"model": str(model), "calib": str(calib)}


def _args(files, out, *extra):
    return ["llm", "shrink", files["model"], "--out", str(out), "--calib", files["calib"], "--calib-windows", "8",
            "--heldout-windows", "4", "--seqlen", "16", "--batch-size", "4", *extra]


def test_shrink_writes_stock_model_within_budget(files, tmp_path):
    dense = transformers.AutoModelForCausalLM.from_pretrained(files["model"])
    budget = int(0.75 * sum(p.numel() for p in dense.parameters()))
    out = tmp_path / "small"
    res = runner.invoke(app, _args(files, out, "--params", str(budget), "--distill-tokens", "1k", "--lr", "1e-3"))
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "prunekit-llm.json").read_text())
    model = transformers.AutoModelForCausalLM.from_pretrained(out)  # stock transformers, no prunekit
    n = sum(p.numel() for p in model.parameters())
    assert n <= budget and n == rec["shrink"]["chosen"]["params"]
    assert {c["shape"]["mode"] for c in rec["shrink"]["candidates"]} == {"width", "depth", "mixed"}
    assert rec["shrink"]["distill_tokens"] >= 1000
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    assert model(input_ids=ids).logits.shape == (1, 8, model.config.vocab_size)


@pytest.mark.parametrize("extra,message", [
    ((), "exactly one budget"),
    (("--params", "lots"), "params"),
    (("--params", "1k", "--modes", "sideways"), "--modes"),
    (("--params", "1k", "--importance", "vibes"), "--importance"),
    (("--params", "1k", "--lr", "2"), "--lr"),
    (("--params", "1k", "--temperature", "0"), "--temperature"),
    (("--params", "1k", "--schedule", "linear"), "--schedule"),
    (("--latency", "-1"), "--latency"),
    (("--params", "1k", "--latency", "0.1"), "exactly one budget"),
])
def test_bad_options_fail_with_one_line_and_write_nothing(files, tmp_path, extra, message):
    out = tmp_path / "never"
    res = runner.invoke(app, _args(files, out, *extra))
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and message in res.output
    assert not out.exists()
