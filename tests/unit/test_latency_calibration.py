"""The whole-model fit of the latency cost model: each group timed at half its width, more
than once, and what the layer tables miss shrunk where it lies within the timing noise."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from prunekit import zoo
from prunekit.graph.groups import build  # noqa: I001
from prunekit.latency import CostModel, LatencyTable, calibrate


class MacTable(LatencyTable):
    """A layer costs its MACs / 1e6 ms: the tables explain exactly what they time."""

    def measure(self, spec, cin, cout):
        return spec.flops(cin, cout) / 1e6


@pytest.fixture
def cost(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("PRUNEKIT_LATENCY_DIR", raising=False)
    model = zoo.create("mnistnet")
    x = torch.randn(2, 1, 28, 28)
    st = build(model, x)
    cm = CostModel(model, st, x, MacTable("eager", batch_size=2, threads=1, cache=False))
    cm.prefetch()
    return cm, st


def _half(cm: CostModel, g: int) -> list[int]:
    kept = list(cm.sizes)
    kept[g] = cm.sizes[g] // 2
    return kept


def test_a_miss_within_the_noise_is_shrunk_and_one_far_outside_it_is_kept(cost):
    cm, _ = cost
    full = list(cm.sizes)
    dense = cm.tables_part(full) + 2.0  # 2 ms the tables do not explain, in no group
    miss = 0.5  # each group's half width saves 0.5 ms more than its layers' tables say
    halves = [cm.tables_part(_half(cm, g)) + 2.0 - miss for g in range(len(full))]

    def saved(g: int) -> float:
        return cm.predict(full) - cm.predict(_half(cm, g))

    def tables_saved(g: int) -> float:
        return cm.tables_part(full) - cm.tables_part(_half(cm, g))

    cm.calibrate(dense, halves)  # no noise given: each half-width model is predicted exactly
    assert cm.noise == 0.0 and cm.constant == pytest.approx(2.0)
    for g in range(len(full)):
        assert saved(g) == pytest.approx(tables_saved(g) + miss)
    cm.calibrate(dense, halves, noise=miss)  # a miss as large as the noise: half of it counts
    for g in range(len(full)):
        assert saved(g) == pytest.approx(tables_saved(g) + miss / 2)
    cm.calibrate(dense, halves, noise=10 * miss)  # deep in the noise: the tables' figure stands
    for g in range(len(full)):
        assert saved(g) == pytest.approx(tables_saved(g) + miss / 101)
    cm.calibrate(dense, halves, noise=miss / 10)  # well outside it: almost all of it counts
    for g in range(len(full)):
        assert saved(g) == pytest.approx(tables_saved(g) + miss * 100 / 101)
    assert cm.noise == pytest.approx(miss / 10)


def test_each_group_is_timed_in_every_pass_and_the_spread_of_its_readings_sets_the_noise(cost):
    cm, st = cost
    full = list(cm.sizes)
    dense_ms = cm.tables_part(full)
    truth = {g: cm.tables_part(_half(cm, g)) / dense_ms for g in range(len(full))}  # the tables are right
    wobble = [0.02, 0.01, 0.03, 0.02]  # how far each group's two readings lie from their mean

    class Verify:  # a stand-in for prunekit.latency.Verifier: one timing next to dense
        structure = st

        def __init__(self):
            self.calls = []

        def __call__(self, keeps):
            g = next(i for i, grp in enumerate(st.groups) if not bool(keeps[grp.name].all()))
            assert int(keeps[st.groups[g].name].sum()) == cm.sizes[g] // 2
            sign = 1 if sum(c == g for c in self.calls) % 2 == 0 else -1
            self.calls.append(g)
            return (truth[g] + sign * wobble[g]) * dense_ms, dense_ms

    verify = Verify()
    calibrate(cm, verify)
    groups = [g for g in range(len(full)) if full[g] >= 2]
    assert verify.calls == groups + groups  # one sweep over the groups, then the next
    variances = [2 * w * w for w in wobble[: len(groups)]]  # two readings, ±w around their mean
    expected = dense_ms * math.sqrt(statistics.median(variances) / 0.455 / 2)
    assert cm.noise == pytest.approx(expected)
    # the readings' means are the truth, so the fit keeps the tables' figures
    for g in groups:
        assert cm.predict(_half(cm, g)) == pytest.approx(truth[g] * dense_ms, rel=1e-6)
