"""Bad input to every `prunekit` command: one `error:` line on stderr, exit status 2, nothing
written, every input file byte-identical afterwards. Ctrl-C: exit 130, nothing written.

`python tests/integration/test_cli_failures.py` prints the table of cases (command, exit
status, message) in Markdown.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prunekit.cli import app

runner = CliRunner()
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Case:
    """``args`` and ``prepare`` get the case's folders: ``inp`` (shared inputs, read-only
    by contract) and ``out`` (the output location, also the working directory)."""

    name: str
    args: Callable[[Path, Path], list[str]]
    needle: str | Callable[[Path, Path], str]
    prepare: Callable[[Path, Path], None] = field(default=lambda inp, out: None)
    requires: tuple[str, ...] = ()  # modules the case needs (the language-model cases: transformers)


LLM = ("transformers", "tokenizers")


def has(*modules: str) -> bool:
    """Every module in ``modules`` can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


def make_inputs(inp: Path) -> None:
    """Saved models (MNIST-sized and digits-sized), a corrupt save, a folder of unrelated
    files and three broken recipes."""
    import torch

    import prunekit as pk
    from prunekit import zoo

    torch.manual_seed(0)
    pk.save(zoo.create("lenet300100", hidden=[32, 16]), inp / "mnist-model", metadata={"input_shape": [1, 1, 28, 28]})
    pk.save(zoo.create("lenet300100", in_features=64, hidden=[32, 16]), inp / "digits-model",
            metadata={"input_shape": [1, 1, 8, 8]})
    shutil.copytree(inp / "mnist-model", inp / "corrupt")
    weights = inp / "corrupt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    (inp / "junk").mkdir()
    (inp / "junk" / "notes.txt").write_text("my notes\n")
    (inp / "junk" / "data.csv").write_text("a,b\n1,2\n")
    (inp / "model.pt").write_bytes(b"not a folder")
    (inp / "broken.yaml").write_text("name: x\nstages: [unclosed\n")
    (inp / "extra-field.yaml").write_text("name: x\nmodel: {zoo: lenet300100}\ndata: {name: digits}\n"
                                          "stages: [{prune: {sparsity: 0.5}}]\ncolour: red\n")
    (inp / "text.txt").write_text("the lord said unto him\n" * 40)
    if has(*LLM):
        make_tiny_llm(inp / "tiny-llm")


def make_tiny_llm(folder: Path) -> None:
    """A 1-block Llama (hidden 16) with a word-level tokenizer of the words of text.txt, saved with save_pretrained."""
    from llm_fixtures import tiny_llama_folder  # here: tests/ is on sys.path under pytest and as a script

    tiny_llama_folder(folder, words="the lord said unto him".split(), hidden_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, intermediate_size=32, initializer_range=0.02)


def _earlier_llm_output(inp: Path, out: Path, *extra: str) -> None:
    """``out/llm``: what an earlier `prunekit llm prune` wrote (the model, its tokenizer and the
    record listing the files), plus the user's files ``extra``."""
    llm = out / "llm"
    shutil.copytree(inp / "tiny-llm", llm)
    names = sorted(p.name for p in llm.iterdir()) + ["prunekit-llm.json"]
    (llm / "prunekit-llm.json").write_text(json.dumps({"command": "prunekit llm prune", "files": names}))
    for n in extra:
        (llm / n).write_text(f"the user's {n}\n")


def _earlier_run(out: Path) -> None:
    run = out / "r"
    (run / "model").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"recipe": "digits-quick"}))
    (run / "recipe.yaml").write_text("name: digits-quick\n")


def _user_folder(out: Path, *names: str) -> None:
    (out / "mine").mkdir()
    for n in names or ("thesis.tex",):
        (out / "mine" / n).write_text(f"the user's {n}\n")


def _unwritable(out: Path) -> str:
    """An --out that cannot be created: under a read-only folder, or (as root, whom
    permissions do not stop) under a regular file."""
    if AS_ROOT:
        (out / "afile").write_text("x")
        return str(out / "afile" / "sub")
    (out / "ro").mkdir(mode=0o500)
    return str(out / "ro" / "sub")


P = ["prune", "lenet300100", "--out", "p"]  # a valid start; each case breaks one thing
S = ["search", "--samples", "60"]  # the same for search ...


def L(inp: Path, *extra: str, out: str = "llm") -> list[str]:
    """... and for llm prune."""
    return ["llm", "prune", str(inp / "tiny-llm"), "--out", out, "--calib", str(inp / "text.txt"), "--seqlen", "8",
            *extra]


CASES = [
    Case("missing model folder", lambda i, o: ["prune", str(i / "nope"), "--out", "p", "--sparsity", "0.5"],
         lambda i, o: f"SOURCE '{i / 'nope'}' is neither a saved folder nor a zoo model"),
    Case("measure: missing folder", lambda i, o: ["measure", str(i / "nope")], "no saved model"),
    Case("model is a folder of unrelated files", lambda i, o: ["evaluate", str(i / "junk")], "is not a prunekit save"),
    Case("model is a file", lambda i, o: ["prune", str(i / "model.pt"), "--out", "p", "--sparsity", "0.5"],
         "is a file"),
    Case("truncated saved model (measure)", lambda i, o: ["measure", str(i / "corrupt")], "checksum mismatch"),
    Case("truncated saved model (prune)", lambda i, o: ["prune", str(i / "corrupt"), "--out", "p", "--sparsity", "0.5"],
         "checksum mismatch"),
    Case("unknown zoo name", lambda i, o: ["prune", "resnet9000", "--out", "p", "--sparsity", "0.5"],
         "'resnet9000' is neither a saved folder nor a zoo model (lenet300100"),
    Case("sparsity above 1", lambda i, o: P + ["--sparsity", "1.5"], "--sparsity: 1.5 is outside [0, 1)"),
    Case("sparsity 1.0", lambda i, o: P + ["--sparsity", "1.0"], "--sparsity: 1.0 is outside [0, 1)"),
    Case("negative sparsity", lambda i, o: P + ["--sparsity", "-0.1"], "--sparsity: -0.1 is outside [0, 1)"),
    Case("non-numeric sparsity", lambda i, o: P + ["--sparsity", "abc"], "--sparsity 'abc'"),
    Case("no sparsity for unstructured", lambda i, o: P, "--sparsity is needed"),
    Case("unknown criterion", lambda i, o: P + ["--sparsity", "0.5", "--criterion", "nope"],
         "unknown criterion 'nope'; available: activation_entropy"),
    Case("unknown granularity", lambda i, o: P + ["--sparsity", "0.5", "--granularity", "rows"],
         "unknown granularity 'rows'; available: 'block', 'channel'"),
    Case("N:M with N > M", lambda i, o: P + ["--granularity", "5:4"], "--granularity: N:M needs"),
    Case("unknown allocation", lambda i, o: P + ["--sparsity", "0.5", "--allocation", "best"],
         "unknown allocation 'best'; available: depth, erk, global, lamp, latency, owl, row, uniform"),
    Case("latency allocation without a target", lambda i, o: P + ["--sparsity", "0.5", "--allocation", "latency"],
         "--allocation latency spends a latency target"),
    Case("--latency not a target", lambda i, o: P + ["--latency", "1.5", "--granularity", "channel"],
         "--latency: '1.5' is not a latency target"),
    Case("--latency in seconds", lambda i, o: P + ["--latency", "2s", "--granularity", "channel"],
         "--latency: '2s' is not a latency target"),
    Case("--latency on weights", lambda i, o: P + ["--latency", "0.5"], "--latency removes coupled channels or heads"),
    Case("--latency and --sparsity", lambda i, o: P + ["--latency", "0.5", "--granularity", "channel", "--sparsity", "0.5"],
         "give --latency or --sparsity/--threshold, not both"),
    Case("--latency with lamp", lambda i, o: P + ["--latency", "0.5", "--granularity", "channel", "--allocation", "lamp"],
         "--latency spends its target with --allocation latency"),
    Case("--runtime without --latency", lambda i, o: P + ["--sparsity", "0.5", "--runtime", "onnxruntime"],
         "--runtime sets how --latency is measured"),
    Case("unknown --runtime", lambda i, o: P + ["--latency", "0.5", "--granularity", "channel", "--runtime", "tpu"],
         "--runtime"),
    Case("--latency-batch 0", lambda i, o: P + ["--latency", "3ms", "--granularity", "channel", "--latency-batch", "0"],
         "--latency-batch"),
    Case("--compact without channels", lambda i, o: P + ["--sparsity", "0.5", "--compact"], "--compact needs"),
    Case("unknown option", lambda i, o: P + ["--sparsity", "0.5", "--sparsty", "0.5"], "no such option: --sparsty"),
    Case("--threads 0", lambda i, o: P + ["--sparsity", "0.5", "--threads", "0"], "--threads: 0"),
    Case("--threshold above 1", lambda i, o: P + ["--threshold", "1.5"], "--threshold: 1.5 is outside [0, 1]"),
    Case("--threshold and --sparsity", lambda i, o: P + ["--threshold", "0.1", "--sparsity", "0.5"],
         "give --sparsity or --threshold, not both (got --sparsity 0.5 and --threshold 0.1)"),
    Case("--threshold with erk", lambda i, o: P + ["--threshold", "0.1", "--allocation", "erk"],
         "--threshold 0.1 does not work with --allocation erk"),
    Case("--block-shape not two numbers", lambda i, o: P + ["--sparsity", "0.5", "--granularity", "block",
                                                           "--block-shape", "4x"], "--block-shape: '4x' is not a block shape"),
    Case("--block-shape of zero", lambda i, o: P + ["--sparsity", "0.5", "--granularity", "block",
                                                   "--block-shape", "0,4"], "--block-shape: '0,4' is not a block shape"),
    Case("--block-shape without block granularity", lambda i, o: P + ["--sparsity", "0.5", "--block-shape", "4,4"],
         "--block-shape '4,4' applies only to --granularity block"),
    Case("--ignore matching no weight", lambda i, o: P + ["--sparsity", "0.5", "--ignore", "nosuch.*"],
         "--ignore: ignore patterns ['nosuch.*'] match no prunable weight"),
    Case("--ignore empty", lambda i, o: P + ["--sparsity", "0.5", "--ignore", ","], "--ignore: ',' names no weight"),
    Case("--sparsities 0.5,abc", lambda i, o: ["analyze", "lenet300100", "--sparsities", "0.5,abc"],
         "--sparsities: 'abc' is not a number (expected comma-separated numbers in [0, 1), e.g. 0.5,0.9)"),
    Case("--sparsities 0.5,1.2", lambda i, o: ["analyze", "lenet300100", "--sparsities", "0.5,1.2"],
         "--sparsities: 1.2 is outside [0, 1)"),
    Case("--sparsities 0", lambda i, o: ["analyze", "lenet300100", "--sparsities", "0.5,0"],
         "--sparsities '0.5,0': 0 prunes nothing (the dense accuracy is measured anyway); give sparsities in (0, 1)"),
    Case("unknown --data", lambda i, o: ["analyze", "lenet300100", "--data", "cifar"],
         "--data: unknown data 'cifar'; available: mnist, digits"),
    Case("unwritable --out (prune)", lambda i, o: ["prune", "lenet300100", "--out", _unwritable(o), "--sparsity", "0.5"],
         "cannot be"),
    Case("unwritable --out (run)", lambda i, o: ["run", "digits-quick", "--out", _unwritable(o)], "cannot be"),
    Case("--out over an earlier save", lambda i, o: P + ["--sparsity", "0.5"],
         "already holds a saved model; pass --overwrite",
         prepare=lambda i, o: shutil.copytree(i / "mnist-model", o / "p")),
    Case("prune --out into the user's folder", lambda i, o: ["prune", "lenet300100", "--out", "mine", "--sparsity", "0.5"],
         "not a prunekit save (thesis.tex)", prepare=lambda i, o: _user_folder(o)),
    Case("prune --overwrite into the user's folder",
         lambda i, o: ["prune", "lenet300100", "--out", "mine", "--sparsity", "0.5", "--overwrite"],
         "not a prunekit save (thesis.tex)", prepare=lambda i, o: _user_folder(o)),
    Case("run --out into the user's folder", lambda i, o: ["run", "digits-quick", "--out", "mine"],
         "not a prunekit run (thesis.tex)", prepare=lambda i, o: _user_folder(o)),
    Case("run --overwrite over the user's report.md", lambda i, o: ["run", "digits-quick", "--out", "mine", "--overwrite"],
         "holds report.md, which prunekit did not write", prepare=lambda i, o: _user_folder(o, "report.md")),
    Case("run --out over an earlier run", lambda i, o: ["run", "digits-quick", "--out", "r"],
         "holds an earlier prunekit run; pass --overwrite", prepare=lambda i, o: _earlier_run(o)),
    Case("run --overwrite over an earlier run whose model/ holds the user's file",
         lambda i, o: ["run", "digits-quick", "--out", "r", "--overwrite"],
         "model/ holds files prunekit did not write (notes.txt)",
         prepare=lambda i, o: (_earlier_run(o), (o / "r" / "model" / "notes.txt").write_text("mine\n"))),
    Case("wrong --input-shape text", lambda i, o: ["measure", str(i / "digits-model"), "--input-shape", "abc"],
         "--input-shape 'abc' must be positive integers"),
    Case("input shape the model rejects", lambda i, o: ["measure", str(i / "digits-model"), "--input-shape", "1,1,28,28"],
         "--input-shape '1,1,28,28': inputs of shape (1, 1, 28, 28) do not run through LeNet300100"),
    Case("evaluate a model of the wrong input size", lambda i, o: ["evaluate", str(i / "digits-model")],
         "is not an MNIST model (it was saved for inputs [1, 1, 8, 8])"),
    Case("measure with zero batch size", lambda i, o: ["measure", str(i / "digits-model"), "--batch-size", "0"],
         "--batch-size: 0"),
    Case("measure with a zero batch dimension", lambda i, o: ["measure", str(i / "digits-model"), "--input-shape", "0,1,8,8"],
         "--input-shape '0,1,8,8' must be positive integers"),
    Case("measure --json on a missing folder", lambda i, o: ["measure", str(i / "nope"), "--json"], "no saved model"),
    Case("recipe file missing", lambda i, o: ["run", str(i / "none.yaml")], "is neither a file nor a built-in recipe (digits-quick, "),
    Case("recipe is not valid YAML", lambda i, o: ["run", str(i / "broken.yaml")], "broken.yaml:3: not valid YAML: expected ',' or ']'"),
    Case("recipe with an unknown field", lambda i, o: ["run", str(i / "extra-field.yaml")],
         "extra-field.yaml:5: colour: unknown field 'colour'"),
    Case("export over an existing file", lambda i, o: ["export", "lenet300100", "--out", "m.onnx"],
         "--out 'm.onnx' already exists; pass --overwrite", prepare=lambda i, o: (o / "m.onnx").write_text("mine")),
    Case("analyze --out over an existing file", lambda i, o: ["analyze", "lenet300100", "--out", "s.json"],
         "--out 's.json' already exists", prepare=lambda i, o: (o / "s.json").write_text("{}")),
    Case("train with negative epochs", lambda i, o: ["train", "lenet300100", "--out", "t", "--epochs", "-1"], "--epochs: -1"),
    Case("demo with an unknown model", lambda i, o: ["demo", "--model", "vgg"], "--model 'vgg' is not available"),
    Case("inspect: input shape the model rejects", lambda i, o: ["inspect", "lenet300100", "--input-shape", "1,2,3"],
         "--input-shape '1,2,3'"),
    Case("search --sparsities 0.5,abc", lambda i, o: S + ["--sparsities", "0.5,abc"],
         "--sparsities: 'abc' is not a number (expected comma-separated numbers in [0, 1), e.g. 0.5,0.9)"),
    Case("search --folds 1", lambda i, o: S + ["--folds", "1"], "--folds: 1 is too small (expected an integer >= 2"),
    Case("search --workers 0", lambda i, o: S + ["--workers", "0"], "--workers: 0 is too small"),
    Case("search --seeds 0,x", lambda i, o: S + ["--seeds", "0,x"], "--seeds: 'x' is not an integer"),
    Case("search with an unknown criterion", lambda i, o: S + ["--criteria", "magnitude,snip"],
         "--criteria: unknown criterion 'snip'; available: activation_entropy"),
    Case("search with a model that does not fit the data", lambda i, o: S + ["--model", "lenet5"],
         "--model lenet5 does not fit --data digits: inputs of shape (1, 1, 8, 8) do not run through LeNet5"),
    Case("search --results is a folder", lambda i, o: S + ["--results", "runs"], "--results 'runs' is a folder",
         prepare=lambda i, o: (o / "runs").mkdir()),
    Case("search --results is the user's file", lambda i, o: S + ["--results", "notes.txt"],
         "--results 'notes.txt' is not a prunekit search results file (line 1 is not a run)",
         prepare=lambda i, o: (o / "notes.txt").write_text("my notes\nmore notes\n")),
    Case("unwritable --results", lambda i, o: S + ["--results", _unwritable(o) + "/runs.jsonl"], "cannot be"),
    Case("compare --json over an existing file", lambda i, o: ["compare", "--limit", "50", "--json", "c.json"],
         "--json 'c.json' already exists; pass --overwrite", prepare=lambda i, o: (o / "c.json").write_text("{}")),
    Case("compare --json is a folder", lambda i, o: ["compare", "--limit", "50", "--json", "c"],
         "--json 'c' is a folder", prepare=lambda i, o: (o / "c").mkdir()),
    Case("compare with an unknown method", lambda i, o: ["compare", "--methods", "dense,snip"],
         "--methods: unknown method 'snip'; available: dense, oneshot"),
    Case("compare --epochs 1", lambda i, o: ["compare", "--epochs", "1"], "--epochs: 1 is too small (expected an integer >= 2"),
    Case("llm prune --sparsity 1.5", lambda i, o: L(i, "--sparsity", "1.5"), "--sparsity: 1.5 is outside [0, 1)",
         requires=LLM),
    Case("llm prune with an unknown method", lambda i, o: L(i, "--method", "obs"),
         "--method: unknown method 'obs'; available: magnitude, rgs, ria, sparsegpt, wanda", requires=LLM),
    Case("llm prune with a missing model", lambda i, o: ["llm", "prune", str(i / "nope"), "--out", "llm"],
         "SOURCE: model source", requires=LLM),
    Case("llm prune --out over an earlier output", lambda i, o: L(i), "holds an earlier prunekit output; pass --overwrite",
         prepare=lambda i, o: _earlier_llm_output(i, o), requires=LLM),
    Case("llm prune --overwrite over an earlier output holding the user's file", lambda i, o: L(i, "--overwrite"),
         "holds an earlier prunekit output and files prunekit did not write (notes.txt)",
         prepare=lambda i, o: _earlier_llm_output(i, o, "notes.txt"), requires=LLM),
    Case("llm prune --force into the user's folder", lambda i, o: L(i, "--force", out="mine"),
         "--out 'mine' is a non-empty folder that prunekit did not write (thesis.tex)",
         prepare=lambda i, o: _user_folder(o), requires=LLM),
    Case("llm eval with a missing text file", lambda i, o: ["llm", "eval", str(i / "tiny-llm"), "--text", "nope.txt"],
         "--text 'nope.txt' is neither 'kjv'", requires=LLM),
    Case("llm eval --seqlen 1", lambda i, o: ["llm", "eval", str(i / "tiny-llm"), "--seqlen", "1", "--json"],
         "--seqlen: 1 is too small (expected an integer >= 2", requires=LLM),
]


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots``: sha256 of files, "dir" for folders."""
    out = {}
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            for d in dirs:
                out[os.path.join(dirpath, d)] = "dir"
            for f in files:
                out[os.path.join(dirpath, f)] = hashlib.sha256(Path(dirpath, f).read_bytes()).hexdigest()
    return out


def run_case(case: Case, inp: Path, out: Path) -> tuple[int, str, str]:
    """Invoke the case in-process with ``out`` as the working directory; check the rules."""
    case.prepare(inp, out)
    args = case.args(inp, out)
    before = snapshot(inp, out)
    cwd = os.getcwd()
    os.chdir(out)
    try:
        res = runner.invoke(app, args, prog_name="prunekit")
    finally:
        os.chdir(cwd)
    needle = case.needle(inp, out) if callable(case.needle) else case.needle
    lines = res.stderr.splitlines()
    assert res.exit_code == 2, (args, res.stdout, res.stderr, res.exception)
    assert [ln for ln in lines if not ln.startswith("warning: ")] == lines[-1:], lines
    assert lines[-1].startswith("error: ") and needle in lines[-1], (needle, lines)
    assert res.stdout == "" and "Traceback" not in res.stderr, res.stdout
    assert snapshot(inp, out) == before, "something was written, or an input changed"
    return res.exit_code, " ".join(args), lines[-1]


@pytest.fixture(scope="module")
def inp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    make_inputs(folder)
    return folder


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_error_line_and_writes_nothing(case: Case, inp: Path, tmp_path: Path) -> None:
    if not has(*case.requires):
        pytest.skip(f"needs {', '.join(case.requires)}")
    try:
        run_case(case, inp, tmp_path)
    finally:
        if (tmp_path / "ro").exists():
            (tmp_path / "ro").chmod(0o700)


def test_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


def test_json_outputs_are_json_only(inp: Path) -> None:
    res = runner.invoke(app, ["measure", str(inp / "digits-model"), "--json", "--batch-size", "2"])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    from prunekit.metrics import usable_cores

    assert data["zero_fraction_all"] == 0.0 and data["cores"] == usable_cores()
    res = runner.invoke(app, ["inspect", str(inp / "digits-model"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["groups"]
    pytest.importorskip("zstandard")
    res = runner.invoke(app, ["measure", str(inp / "digits-model"), "--json", "--advise", "--batch-size", "2"])
    assert res.exit_code == 0, res.stderr
    assert {"params", "advise"} <= set(json.loads(res.stdout))


def test_unexpected_error_is_one_line_unless_debugging(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(source: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("prunekit.cli.checks.load_source", boom)
    monkeypatch.delenv("PRUNEKIT_DEBUG", raising=False)
    res = runner.invoke(app, ["evaluate", "lenet300100"])
    assert res.exit_code == 2
    assert res.stderr == "error: RuntimeError: boom (set PRUNEKIT_DEBUG=1 to see the traceback)\n"
    monkeypatch.setenv("PRUNEKIT_DEBUG", "1")
    res = runner.invoke(app, ["evaluate", "lenet300100"])
    assert isinstance(res.exception, RuntimeError)  # the traceback comes through


@pytest.mark.parametrize("as_error", ["prune", "other"])
def test_ctrl_c_that_surfaces_as_another_error_is_reported_as_the_interrupt(monkeypatch, as_error):
    """Ctrl-C during a lazy import can come out as an ImportError, which prunekit turns into a
    missing-extra error (or any other error): with a KeyboardInterrupt in its chain it is
    still an interrupt, exit status 130, not a failure with exit 2."""
    from prunekit.errors import PruneError

    def interrupted_import(source: str) -> None:
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as e:
                raise ImportError("cannot import name 'onnx' (partially initialized module)") from e
        except ImportError as e:
            if as_error == "prune":
                raise PruneError("this needs the 'onnx' extra: pip install 'prunekit[onnx]'") from e
            raise RuntimeError("import failed") from e

    monkeypatch.setattr("prunekit.cli.checks.load_source", interrupted_import)
    monkeypatch.delenv("PRUNEKIT_DEBUG", raising=False)
    res = runner.invoke(app, ["evaluate", "lenet300100"])
    assert res.exit_code == 130, res.output
    assert res.stderr == "error: interrupted; nothing written\n"


def _cli(*args: str, **kw) -> subprocess.Popen:
    code = "import sys; from prunekit.cli import main; sys.exit(main())"
    # A child inherits an ignored SIGINT (e.g. from a parent run under nohup): restore the
    # default so the command sees Ctrl-C as a user's terminal would deliver it.
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


def test_ctrl_c_during_run_leaves_nothing(tmp_path: Path) -> None:
    """SIGINT once the run has started: exit 130, one error line, no output and no temporary folder."""
    for attempt in range(3):
        proc = _cli("run", "digits-quick", "--out", str(tmp_path / "r"), cwd=tmp_path)
        deadline = time.monotonic() + 60
        while not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        if proc.returncode == 0 and attempt < 2:
            # On a busy machine the run can finish between seeing its folder and the signal
            # (or the signal lands in interpreter shutdown): a finished run is no test; again.
            shutil.rmtree(tmp_path / "r")
            continue
        break
    assert proc.returncode == 130, (stdout, stderr)
    assert [ln for ln in stderr.splitlines() if not ln.startswith("warning: ")] == ["error: interrupted; nothing written"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("user_value", [None, "ACTIVE"])
def test_thread_policy_is_set_before_torch_loads(user_value: str | None) -> None:
    """The console entry sets OMP_WAIT_POLICY=PASSIVE before torch is imported (torch reads
    it once, at import), and leaves a user's own value alone."""
    spy = r"""
import importlib.abc, importlib.metadata, os, sys
seen = {}
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in seen:
            seen["torch"] = os.environ.get("OMP_WAIT_POLICY")
sys.meta_path.insert(0, Spy())
main = importlib.metadata.entry_points(group="console_scripts")["prunekit"].load()
assert "torch" not in sys.modules, "importing the console entry imported torch"
code = main(["list"])
print("policy at torch import:", seen.get("torch"))
sys.exit(code)
"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user_value:
        env["OMP_WAIT_POLICY"] = user_value
    res = subprocess.run([sys.executable, "-c", spy], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"policy at torch import: {user_value or 'PASSIVE'}" in res.stdout


def print_table() -> None:
    """Run every case and print ``case | command | exit | message`` as Markdown."""
    rows = []
    with tempfile.TemporaryDirectory() as root:
        inp = Path(root) / "inputs"
        inp.mkdir()
        make_inputs(inp)
        for i, case in enumerate(CASES):
            if not has(*case.requires):
                continue
            out = Path(root) / f"case{i}"
            out.mkdir()
            code, args, line = run_case(case, inp, out)
            if (out / "ro").exists():
                (out / "ro").chmod(0o700)
            rows.append((case.name, args.replace(root, "…"), code, line.replace(root, "…")))
    print("| case | command (prunekit …) | exit | stderr |\n|---|---|---|---|")
    for name, args, code, line in rows:
        print(f"| {name} | `{args}` | {code} | `{line}` |")


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for llm_fixtures
    print_table()
