"""Render the HTML report in headless Chromium: every plot shows, nothing fails to load."""

from __future__ import annotations

import copy
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from conftest import MLP  # noqa: E402
from matplotlib.image import imread  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit import train  # noqa: E402
from prunekit.report import write_report  # noqa: E402
from prunekit.sensitivity import sensitivity  # noqa: E402

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")

#: Colours only the plots draw (with the fewest pixels of each a working image shows):
#: layer-sparsity bars, the accuracy-per-stage line, the star marking this model.
PLOT_COLOURS = {"layer bars": ((0x4C, 0x72, 0xB0), 500), "stage line": ((0x81, 0x72, 0xB3), 500),
                "this-model star": ((0xC4, 0x4E, 0x52), 150)}
STAGES = [{"stage": "start (untrained)", "accuracy": 0.1}, {"stage": "finetune", "accuracy": 0.95},
          {"stage": "prune", "accuracy": 0.8, "sparsity": 0.8}, {"stage": "finetune", "accuracy": 0.94}]


def _has_colour(pixels: np.ndarray, rgb: tuple[int, int, int], min_pixels: int = 500) -> bool:
    diff = np.abs(pixels[..., :3] * 255 - np.array(rgb)).max(axis=-1)
    return int((diff <= 3).sum()) >= min_pixels


def test_report_renders_in_headless_chromium(digits_batches, tmp_path):
    torch.manual_seed(0)
    dense = MLP()
    ev = lambda m: train.evaluate(m, digits_batches)  # noqa: E731
    model = copy.deepcopy(dense)
    result = pk.prune(model, 0.8)
    x = digits_batches[0][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before, after = pk.measure(dense, x, latency=False), pk.measure(model, x, latency=False)
    report = write_report(tmp_path / "report.html", before=before, after=after, result=result,
                          sensitivity=sensitivity(dense, ev, sparsities=(0.5, 0.9)), stages=STAGES,
                          before_acc=ev(dense), after_acc=ev(model))
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
         report.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    log = proc.stdout + proc.stderr
    assert shot.exists(), log[-2000:]
    for failure in ("Failed to load resource", "net::ERR_", "Not allowed to load local resource"):
        assert failure not in log, log[-2000:]
    pixels = imread(shot)
    assert pixels.shape[:2] == (3000, 1200)
    assert float(pixels[..., :3].var()) > 0.001  # not a blank page
    for what, (rgb, least) in PLOT_COLOURS.items():  # broken images would show an icon, not these
        assert _has_colour(pixels, rgb, least), what
