"""Every script in examples/ runs to completion and prints what it promises.

Each example runs in a fresh interpreter with the working directory set to a temporary
folder, so anything it writes lands there, never in the repository. The MNIST cache goes
to a temporary folder shared by the examples of one test session.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 300  # generous: the examples take well under a minute each on 2 cores


def _percent(pattern: str, text: str) -> float:
    match = re.search(pattern, text, flags=re.MULTILINE)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    return float(match.group(1)) / 100


def check_quickstart(out: str) -> None:
    assert _percent(r"^dense accuracy:\s+([\d.]+)%", out) > 0.97
    assert _percent(r"^pruned accuracy:\s+([\d.]+)% at sparsity 80\.00%", out) > 0.95
    assert "reloaded identical: True" in out


def check_compare_criteria(out: str) -> None:
    for name in ("magnitude", "taylor", "hessian", "gradient", "random"):
        assert re.search(rf"^{name}\s+90\.00%", out, flags=re.MULTILINE), f"no row for {name}:\n{out}"
    magnitude = _percent(r"^magnitude\s+90\.00%\s+([\d.]+)%", out)
    random = _percent(r"^random\s+90\.00%\s+([\d.]+)%", out)
    assert magnitude > 0.8
    assert magnitude > random + 0.2


def check_cnn_pruning(out: str) -> None:
    assert "channels kept: features.0 32/64, features.3 64/128, classifier.0 128/256" in out
    tuned = _percent(r"^accuracy after fine-tuning:\s+([\d.]+)% \(sparsity 95\.00%, zeros kept\)", out)
    assert tuned > 0.85
    assert re.search(r"nonzero params .*\b(1[5-9]|2\d)\.\d×", out), out  # ~20× fewer nonzeros
    assert "compacted widths: [32, 64, 128, 10]" in out
    small = _percent(r"^accuracy of the compacted model:\s+([\d.]+)%", out)
    assert small == tuned  # compaction changes no output


def check_custom_criterion(out: str) -> None:
    assert "registered: True" in out
    assert _percent(r"^input_norm_magnitude\s+sparsity 90\.00%\s+accuracy ([\d.]+)%", out) > 0.6


def check_sklearn_mlp(out: str) -> None:
    assert _percent(r"^dense accuracy:\s+([\d.]+)%", out) > 0.95
    assert _percent(r"^pruned accuracy:\s+([\d.]+)% at sparsity 90\.00%", out) > 0.85
    assert _percent(r"^neuron-pruned accuracy:\s+([\d.]+)%", out) > 0.9
    assert "(64, 32)" in out


def check_keras_mnist_mlp(out: str) -> None:
    assert _percent(r"^dense accuracy:\s+([\d.]+)%", out) > 0.88
    assert _percent(r"^pruned accuracy:\s+([\d.]+)% at sparsity 90\.00%", out) > 0.85


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text, flags=re.MULTILINE)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    return float(match.group(1))


def check_keras_regression_mlp(out: str) -> None:
    variance = _number(r"^variance of y:\s+([\d.]+)", out)
    dense = _number(r"^dense mse:\s+([\d.]+)", out)
    pruned = _number(r"^pruned mse:\s+([\d.]+) at sparsity 80\.00%", out)
    assert dense < 0.5 * variance
    assert pruned < variance
    assert re.search(r"^removed neurons: [1-9]\d* of 20 .*outputs equal: True$", out, flags=re.MULTILINE), out


def check_sklearn_sgd_l1(out: str) -> None:
    zeros = re.search(r"^l1 zeros: (\d+) of 10$", out, flags=re.MULTILINE)
    assert zeros, out
    assert 1 <= int(zeros.group(1)) < 7  # L1 zeros some, pruning to 70 % zeros more
    assert _number(r"^dense r2:\s+(-?[\d.]+)", out) > 0.3
    assert _number(r"^pruned r2:\s+(-?[\d.]+) at sparsity 70\.00%", out) > 0.3


CHECKS = {
    "quickstart.py": check_quickstart,
    "compare_criteria.py": check_compare_criteria,
    "cnn_pruning.py": check_cnn_pruning,
    "custom_criterion.py": check_custom_criterion,
    "sklearn_mlp.py": check_sklearn_mlp,
    "keras_mnist_mlp.py": check_keras_mnist_mlp,
    "keras_regression_mlp.py": check_keras_regression_mlp,
    "sklearn_sgd_l1.py": check_sklearn_sgd_l1,
}


def test_every_example_has_a_check():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == sorted(CHECKS), "add a check for each example (and a script for each check)"


def _root_entries() -> list[str]:
    # Tool caches (.pytest_cache, .hypothesis) may appear while the suite runs; ignore them.
    return sorted(p.name for p in ROOT.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prunekit-data")


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(CHECKS))
def test_example_runs(script: str, tmp_path: Path, data_dir: Path) -> None:
    env = dict(os.environ)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["PRUNEKIT_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    before = _root_entries()
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    CHECKS[script](proc.stdout)
    assert _root_entries() == before, f"{script} wrote into the repository root"
