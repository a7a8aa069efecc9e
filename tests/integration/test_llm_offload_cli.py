"""``prunekit llm prune --offload disk|cpu --max-memory``: the same model as the in-memory command."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("accelerate")

from llm_fixtures import tiny_llama_folder, word_text  # noqa: E402

from prunekit.cli import app  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-offload")
    model = tiny_llama_folder(root / "tiny", num_hidden_layers=3)
    calib = word_text(root / "calib.txt", 1200, seed=1)
    return {"model": str(model), "calib": str(calib)}


def _args(files, out, *extra):
    return ["llm", "prune", files["model"], "--out", str(out), "--calib", files["calib"], "--calib-windows", "6",
            "--seqlen", "16", "--batch-size", "2", "--method", "sparsegpt", "--reconstruct", "0", *extra]


@pytest.fixture(scope="module")
def in_memory(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("mem") / "pruned"
    res = runner.invoke(app, _args(files, out, "--self-calibration", "0"))
    assert res.exit_code == 0, res.output
    return transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("offload", ["disk", "cpu"])
def test_offload_matches_in_memory_command(files, in_memory, tmp_path, offload):
    out = tmp_path / "pruned"
    extra = ["--self-calibration", "0"] if offload == "cpu" else []  # disk: 0 is its default
    res = runner.invoke(app, _args(files, out, "--offload", offload, "--max-memory", "2GB", *extra))
    assert res.exit_code == 0, res.output
    assert f"offload {offload}" in res.output and "peak RSS" in res.output
    got = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    for k, v in in_memory.items():
        assert torch.equal(got[k], v), k
    transformers.AutoTokenizer.from_pretrained(out)  # the tokenizer came along
    record = json.loads((out / "prunekit-llm.json").read_text())
    assert record["settings"]["offload"] == offload and "prunekit-llm.json" in record["files"]


@pytest.mark.parametrize("extra, message", [
    (["--offload", "gpu"], "--offload"),
    (["--offload", "disk", "--max-memory", "8XB"], "--max-memory '8XB' is not a memory size"),
    (["--max-memory", "8GB"], "need --offload"),
    (["--distributed"], "need --offload"),
    (["--offload", "disk", "--heads", "0.25"], "structured removal"),
    (["--offload", "disk", "--self-calibration", "0.5"], "--self-calibration"),
    (["--offload", "disk", "--max-memory", "1KB"], "below what one block needs"),
])
def test_offload_refusals(files, tmp_path, extra, message):
    out = tmp_path / "pruned"
    res = runner.invoke(app, _args(files, out, *extra))
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert not out.exists() and list(tmp_path.iterdir()) == []
