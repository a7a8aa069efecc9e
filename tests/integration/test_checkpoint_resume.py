"""A training process killed with SIGKILL resumes from its checkpoint to the same result.

The script below trains a small MLP on the digits while pruning gradually, checkpointing
every few steps. One process is killed mid-training and a second run resumes it; a third,
uninterrupted run is the reference. With one thread on the CPU all three are deterministic,
so the final masks, parameters and accuracy must match exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prunekit.train import CHECKPOINT_FILE, load_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)"),
]

EPOCHS, STEPS_PER_EPOCH = 4, 22  # ceil(1347 / 64) digits training batches
TOTAL = EPOCHS * STEPS_PER_EPOCH
KILL_AFTER = 45  # well past the first checkpoints, well before the end

SCRIPT = r'''
import sys
import time
from pathlib import Path

import torch

from prunekit import datasets, zoo
from prunekit.callbacks import PruningCallback
from prunekit.masking import get_masks
from prunekit.schedules import Gradual
from prunekit.train import evaluate, fit

torch.set_num_threads(1)
ckpt_dir, out, step_file, delay = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])


class ResumablePruning(PruningCallback):
    def load_state_dict(self, state):
        self.history = [tuple(h) for h in state["history"]]


class Progress:
    """Publishes the number of steps done, and slows each step so a kill lands mid-run."""

    def on_step_end(self, step, model, loss):
        step_file.write_text(str(step + 1))
        time.sleep(delay)


torch.manual_seed(0)
model = zoo.create("lenet300100", in_features=64, hidden=(64, 32))
pruning = ResumablePruning(Gradual(0.8, begin=10, end=70, frequency=10))
history = fit(
    model, datasets.load_digits("train", flatten=True), epochs=EPOCHS, batch_size=64, lr=3e-3, seed=0,
    progress=False, callbacks=[pruning, Progress()],
    checkpoint_dir=None if ckpt_dir == "-" else ckpt_dir, checkpoint_every=5,
)
torch.save(
    {
        "state": model.state_dict(),
        "masks": get_masks(model),
        "accuracy": evaluate(model, datasets.load_digits("test", flatten=True)),
        "loss": history["loss"],
        "steps": history["steps"],
        "pruned": pruning.history,
    },
    out,
)
'''.replace("EPOCHS", str(EPOCHS))


def _start(script: Path, ckpt_dir: str, out: Path, step_file: Path, delay: float) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, str(script), ckpt_dir, str(out), str(step_file), str(delay)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _finish(proc: subprocess.Popen) -> None:
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output.decode(errors="replace")


def _steps_done(step_file: Path) -> int:
    try:
        return int(step_file.read_text() or 0)
    except (FileNotFoundError, ValueError):  # not written yet, or caught mid-write
        return 0


def test_sigkill_mid_training_then_resume_matches_uninterrupted(tmp_path):
    script = tmp_path / "train_digits.py"
    script.write_text(SCRIPT)
    ckpt_dir = tmp_path / "ckpt"
    ckpt = ckpt_dir / CHECKPOINT_FILE
    steps = tmp_path / "steps.txt"

    # The reference runs meanwhile, without checkpoints (they must not change the result).
    reference = _start(script, "-", tmp_path / "ref.pt", tmp_path / "ref_steps.txt", 0.0)
    victim = _start(script, str(ckpt_dir), tmp_path / "never.pt", steps, 0.05)
    deadline = time.monotonic() + 90
    while not (ckpt.exists() and _steps_done(steps) >= KILL_AFTER):
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "never.pt").exists()

    saved = load_checkpoint(ckpt)
    assert 0 < saved["step"] < TOTAL and saved["step"] % 5 == 0
    assert saved["history"]["epochs"] < EPOCHS

    _finish(_start(script, str(ckpt_dir), tmp_path / "resumed.pt", steps, 0.0))
    _finish(reference)
    ref = torch.load(tmp_path / "ref.pt", weights_only=True)
    got = torch.load(tmp_path / "resumed.pt", weights_only=True)

    assert ref["steps"] == got["steps"] == TOTAL
    assert ref["pruned"] == got["pruned"] and len(ref["pruned"]) >= 5
    assert ref["masks"].keys() == got["masks"].keys() and ref["masks"]
    for name, mask in ref["masks"].items():
        assert torch.equal(mask, got["masks"][name]), name
    assert ref["state"].keys() == got["state"].keys()
    for name, value in ref["state"].items():
        torch.testing.assert_close(got["state"][name], value, rtol=0, atol=1e-6, msg=name)
    assert got["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-9)
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert ref["accuracy"] > 0.7  # it did learn
