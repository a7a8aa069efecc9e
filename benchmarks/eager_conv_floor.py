"""Why eager PyTorch has a latency floor on small CNNs: what one convolution costs at small
widths in each of eager's convolution paths, and what a removed residual branch still costs
once compacted.

* Convolutions (batch 64, 28×28, the shapes of ``benchmarks/latency_budget.py``'s
  ResNet-style model): eager's default path (oneDNN, NCHW), the same with oneDNN switched off
  (``torch.backends.mkldnn.flags(enabled=False)``), and channels-last tensors.
* The ResNet-style model with every residual branch removed and its two other groups at
  (1, 1), (4, 8) and (8, 32) units, compacted by prunekit as the latency allocation times
  it, against the same computation written by hand (each branch a per-channel constant
  added, the model's own additions and ReLUs kept): the difference is what compaction's
  stand-ins for the removed layers cost.

Medians of interleaved runs; ``OMP_WAIT_POLICY=PASSIVE``.

    python benchmarks/eager_conv_floor.py          # ~1 minute

Writes ``benchmarks/results/eager_conv_floor.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its threads

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, print_table, write_json  # noqa: E402
from latency_budget import ResNetS  # noqa: E402

from prunekit.graph.groups import build  # noqa: E402
from prunekit.latency.verify import Verifier, removable_groups  # noqa: E402
from prunekit.metrics_timing import steady_heap  # noqa: E402

SHAPES = [(1, 1, 3, 1), (1, 4, 3, 1), (1, 16, 3, 1), (4, 4, 3, 1), (16, 16, 3, 1), (16, 32, 3, 2), (1, 1, 1, 2),
          (16, 32, 1, 2), (32, 32, 3, 1)]


def median_us(fns: list, repeats: int) -> list[float]:
    """Median microseconds of each function, run in turn (interleaved) ``repeats`` times."""
    times: list[list[float]] = [[] for _ in fns]
    with torch.no_grad():
        for f in fns:
            for _ in range(3):
                f()
        for _ in range(repeats):
            for i, f in enumerate(fns):
                t = time.perf_counter()
                f()
                times[i].append(time.perf_counter() - t)
    return [statistics.median(t) * 1e6 for t in times]


class Floor(nn.Module):
    """The ResNet-style model as it would be written without its residual branches: what
    each removed branch leaves is a per-channel constant added where the branch was (its
    output no longer depends on the input), and the model's own additions and ReLUs stay."""

    def __init__(self, a: int, c: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(a, c, 1, stride=2, bias=False), nn.BatchNorm2d(c))
        self.c1, self.c2, self.c3 = (nn.Parameter(torch.zeros(1, n, 1, 1)) for n in (a, c, c))
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.c1)
        x = F.relu(self.down(x) + self.c2)
        x = F.relu(x + self.c3)
        return self.head(x.mean((2, 3)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    steady_heap()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for cin, cout, k, s in SHAPES:
        conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False).eval()
        x = torch.randn(args.batch, cin, 28, 28)
        conv_cl = nn.Conv2d(cin, cout, k, s, k // 2, bias=False).eval().to(memory_format=torch.channels_last)
        conv_cl.load_state_dict(conv.state_dict())
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def native(conv=conv, x=x):
            with torch.backends.mkldnn.flags(enabled=False):
                conv(x)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "TF32 acceleration on top of oneDNN ..." from the flags
            onednn, off, cl = median_us([lambda: conv(x), native, lambda: conv_cl(x_cl)], args.repeats)
        rows.append({"cin": cin, "cout": cout, "kernel": k, "stride": s, "onednn_us": onednn, "native_us": off,
                     "channels_last_us": cl})
    print_table("one convolution, eager (batch %d, 28x28 input), microseconds" % args.batch,
                ["in -> out, kernel/stride", "oneDNN NCHW (default)", "oneDNN off", "channels-last"],
                [[f"{r['cin']} -> {r['cout']}, {r['kernel']}/{r['stride']}", f"{r['onednn_us']:.0f}",
                  f"{r['native_us']:.0f}", f"{r['channels_last_us']:.0f}"] for r in rows])

    model = ResNetS().eval()
    probe = torch.randn(8, 1, 28, 28)
    structure = build(model, probe)
    removable = removable_groups(model, structure, probe)  # the three residual branches' inner groups
    make = Verifier(model, structure, probe, "eager", args.batch, args.threads)
    dense = ResNetS().eval()
    x = torch.randn(args.batch, 1, 28, 28)
    floors = []
    for a, c in ((1, 1), (4, 8), (8, 32)):
        removed: set[int] = set()
        for g, r, keep in zip(structure.groups, removable, (a, None, c, None, None)):
            removed |= set(g.units if r else g.units[keep:])
        small, hand = make.small(removed), Floor(a, c).eval()
        d_us, s_us, h_us = median_us([lambda: dense(x), lambda: small(x), lambda: hand(x)], args.repeats)
        floors.append({"widths": [a, c], "dense_ms": d_us / 1e3, "compacted_ms": s_us / 1e3, "by_hand_ms": h_us / 1e3,
                       "compacted_ratio": s_us / d_us, "by_hand_ratio": h_us / d_us,
                       "leftover_modules": sorted({type(m).__name__ for m in small.modules()}
                                                  - {type(m).__name__ for m in hand.modules()})})
    print_table(f"ResNet-style model, every residual branch removed (eager, batch {args.batch}), ms",
                ["widths (stem, stage)", "dense", "compacted by prunekit", "written by hand"],
                [[f"{f['widths']}", f"{f['dense_ms']:.3f}", f"{f['compacted_ms']:.3f} ({f['compacted_ratio']:.3f})",
                  f"{f['by_hand_ms']:.3f} ({f['by_hand_ratio']:.3f})"] for f in floors])
    path = write_json("eager_conv_floor", {"benchmark": "eager_conv_floor", "environment": environment(),
                                          "settings": vars(args), "convolutions": rows, "floors": floors},
                      args.out or RESULTS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
