"""Latency tables: the on-disk cache (key, atomic file), exact lookups and interpolation, the
one-node ONNX graphs against PyTorch, and the cost model's MACs against FlopCounterMode."""

from __future__ import annotations

import json

import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import prunekit as pk
from prunekit.latency import CostModel, LatencyTable, LayerSpec, cache_dir, spec_of
from prunekit.graph.groups import build  # noqa: I001  (imported first, prunekit.graph meets an import circle through prunekit.reconnect)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("PRUNEKIT_LATENCY_DIR", raising=False)
    return tmp_path / "prunekit" / "latency"


def test_cache_round_trip_and_key(cache):
    spec = LayerSpec("linear", (), 32, 16)
    a = LatencyTable("eager", batch_size=4, threads=1, repeats=2, warmup=0)
    ms = a.time(spec, 32, 16)
    assert ms > 0 and a.measured == 1
    a.save()
    assert cache_dir() == cache
    files = list(cache.glob("*.json"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))  # written atomically, nothing left over
    data = json.loads(files[0].read_text())
    assert data["key"]["runtime"] == "eager" and data["key"]["threads"] == 1
    assert data["key"]["torch"] == torch.__version__ and data["key"]["batch_size"] == 4
    b = LatencyTable("eager", batch_size=4, threads=1, repeats=2, warmup=0)
    assert b.time(spec, 32, 16) == ms and b.measured == 0  # read back, not measured again
    other = LatencyTable("eager", batch_size=8, threads=1, repeats=2, warmup=0)
    assert spec.config(32, 16) not in other.entries  # another batch size is another table


def test_corrupt_cache_is_ignored(cache):
    t = LatencyTable("eager", batch_size=2, threads=1, repeats=1, warmup=0)
    t.time(LayerSpec("linear", (), 8, 8), 8, 8)
    t.save()
    path = next(cache.glob("*.json"))
    path.write_text("{not json")
    assert LatencyTable("eager", batch_size=2, threads=1).entries == {}


def test_interpolation_is_exact_on_the_grid_and_between_neighbours(cache):
    spec = LayerSpec("linear", (), 64, 64)
    t = LatencyTable("eager", batch_size=2, threads=1, repeats=1, warmup=0, cache=False)
    grid = t.grid(64)
    assert grid == [8, 16, 32, 48, 64]
    for a in grid[::2]:
        for b in grid[::2]:
            assert t.interpolate(spec, a, b) == pytest.approx(t.time(spec, a, b))
    corners = [t.time(spec, a, b) for a in (32, 48) for b in (32, 48)]
    assert min(corners) - 1e-12 <= t.interpolate(spec, 40, 40) <= max(corners) + 1e-12
    one_dim = [t.time(spec, 64, b) for b in (16, 32)]
    assert min(one_dim) <= t.interpolate(spec, 64, 24, in_varies=False) <= max(one_dim)


def test_bad_table_arguments_name_the_value():
    with pytest.raises(ValueError, match="runtime.*'tvm'"):
        LatencyTable("tvm")
    with pytest.raises(ValueError, match="batch_size"):
        LatencyTable("eager", batch_size=0)


@pytest.mark.parametrize("layer,x", [
    (nn.Conv2d(3, 5, 3, stride=2, padding=1), torch.randn(2, 3, 9, 9)),
    (nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), torch.randn(2, 4, 6, 6)),
    (nn.Conv1d(3, 6, 5, padding="same"), torch.randn(2, 3, 11)),
    (nn.Linear(7, 3), torch.randn(2, 5, 7)),
])
def test_one_node_onnx_graphs_compute_what_torch_computes(layer, x):
    ort = pytest.importorskip("onnxruntime")
    from prunekit.latency.tables import _onnx_layer

    spec = spec_of(layer, tuple(x.shape))
    assert spec is not None and spec.depthwise == (getattr(layer, "groups", 1) > 1)
    sess = ort.InferenceSession(_onnx_layer(spec, layer.eval(), x), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"X": x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), layer(x), atol=1e-5)


def test_spec_of_refuses_what_a_table_cannot_stand_for():
    assert spec_of(nn.Conv2d(4, 8, 3, groups=2), (1, 4, 8, 8)) is None  # grouped, not depthwise
    assert spec_of(nn.Conv2d(4, 8, 3, padding_mode="reflect", padding=1), (1, 4, 8, 8)) is None
    assert spec_of(nn.ReLU(), (1, 4)) is None


def _macs(model, x):
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(x[:1])
    return fc.get_total_flops() // 2


def test_cost_model_counts_the_macs_flop_counter_counts():
    from prunekit import zoo

    model = zoo.create("mnistnet")
    x = torch.randn(2, 1, 28, 28)
    st = build(model, x)
    cost = CostModel(model, st, x, None)
    full = list(cost.sizes)
    assert cost.predict(full) == _macs(model, x)
    kept = [10, 20, 50]  # conv1, conv2, fc1 units
    small_model = zoo.create("mnistnet")
    removed = set()
    for g, k in zip(st.groups, kept):
        removed |= set(g.units[k:])
    shapes = {n: tuple(p.shape) for n, p in small_model.named_parameters()}
    pk.masking.apply_masks(small_model, st.masks_for(removed, shapes))
    small = pk.compact(small_model, x)
    assert cost.predict(kept) == _macs(small, x)
    for g in range(3):  # the partial sums are the parts that move with one group
        trial = full.copy()
        trial[g] = kept[g]
        assert cost.predict(full) - cost.predict(trial) == pytest.approx(cost.partial(full, g) - cost.partial(trial, g))


def test_distortion_curves_match_a_hand_pruned_copy():
    from prunekit import zoo
    from prunekit.latency.distortion import distortion_curves, interpolate

    model = zoo.create("mnistnet", pretrained=True)
    x = torch.randn(4, 1, 28, 28)
    st = build(model, x)
    scores = [torch.arange(len(g.units), dtype=torch.float32) for g in st.groups]  # unit i scores i
    before = {k: v.clone() for k, v in model.state_dict().items()}
    curves = distortion_curves(model, st, x, scores)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    assert [c[0] for c in curves] == [(32, 0.0), (64, 0.0), (128, 0.0)]
    assert all(all(a[1] <= b[1] for a, b in zip(c, c[1:])) for c in curves)  # more removed, more moved
    k, d = curves[1][2]  # conv2 at half: its 32 lowest-scoring units (0..31) removed, by hand
    copy_ = zoo.create("mnistnet", pretrained=True)
    shapes = {n: tuple(p.shape) for n, p in copy_.named_parameters()}
    pk.masking.apply_masks(copy_, st.masks_for(set(st.groups[1].units[: 64 - k]), shapes))
    with torch.no_grad():
        ref, got = model.eval()(x), copy_.eval()(x)
    assert d == pytest.approx(float((got - ref).pow(2).sum() / ref.pow(2).sum()), rel=1e-5)
    assert interpolate(curves[1], 64) == 0.0 and interpolate(curves[1], k) == pytest.approx(d)


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def _stale_stats(net):
    """Running statistics that do not fit the data (as after weights moved in training)."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 2)
            m.running_var.uniform_(0.1, 5)
    return net.eval()


def test_distortion_recalibrates_batchnorm_on_the_example_inputs():
    from prunekit.distillation import recalibrate_bn
    from prunekit.latency.distortion import adapts_norms, distortion_curves

    net = _stale_stats(_bn_net())
    x = torch.randn(6, 1, 10, 10)
    st = build(net, x)
    scores = [torch.arange(len(g.units), dtype=torch.float32) for g in st.groups]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert adapts_norms(net, x) and not adapts_norms(net, x[:1]) and not adapts_norms(nn.Linear(2, 2), x)
    curves = distortion_curves(net, st, x, scores)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # statistics untouched
    assert not net.training and not any(m.training for m in net.modules())
    g = next(i for i, grp in enumerate(st.groups) if len(grp.units) == 16)
    k, d = curves[g][2]  # the second conv's group at half its width
    shapes = {n: tuple(p.shape) for n, p in net.named_parameters()}
    ref, cut = copy.deepcopy(net), copy.deepcopy(net)
    pk.masking.apply_masks(cut, st.masks_for(set(st.groups[g].units[: 16 - k]), shapes))  # its 16 - k lowest
    for m in (ref, cut):
        recalibrate_bn(m, x, batch_size=6)
    with torch.no_grad():
        r, c = ref.eval()(x), cut.eval()(x)
    assert d == pytest.approx(float((c - r).pow(2).sum() / r.pow(2).sum()), rel=1e-5)
    assert d != pytest.approx(_stored_stats_distortion(net, st, g, k, x), rel=1e-3)
    # one sample cannot re-estimate a variance: the stored statistics are used, as before
    one = distortion_curves(net, st, x[:1], scores)[g]
    assert one[2][1] == pytest.approx(_stored_stats_distortion(net, st, g, k, x[:1]), rel=1e-5)


def _stored_stats_distortion(net, st, g, k, x):
    """The distortion of group ``g`` cut to its ``k`` highest-scoring units, judged with the
    stored BatchNorm statistics."""
    cut = copy.deepcopy(net)
    n = len(st.groups[g].units)
    shapes = {a: tuple(p.shape) for a, p in net.named_parameters()}
    pk.masking.apply_masks(cut, st.masks_for(set(st.groups[g].units[: n - k]), shapes))
    with torch.no_grad():
        ref, got = net.eval()(x), cut.eval()(x)
    return float((got - ref).pow(2).sum() / ref.pow(2).sum())


class _ScriptedTable(LatencyTable):
    """A table whose layers cost what ``ms(cout)`` says; the first ``slow_sweeps`` timings of
    each width are multiplied by ``burst(cout)`` (other work on a shared machine)."""

    def __init__(self, ms, burst=lambda w: 1.0, slow_sweeps=0):
        super().__init__("eager", batch_size=4, threads=1, cache=False)
        self.ms, self.burst, self.slow_sweeps, self.seen = ms, burst, slow_sweeps, {}

    def measure(self, spec, cin, cout):
        k = self.seen[(cin, cout)] = self.seen.get((cin, cout), 0) + 1
        return self.ms(cout) * (self.burst(cout) if k <= self.slow_sweeps else 1.0)


def _auto(table, passes=3):
    from prunekit.latency import auto_round_to

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 64, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(64 * 4 * 4, 10))
    x = torch.randn(2, 1, 8, 8)
    return auto_round_to(table, CostModel(net, build(net, x), x, table), passes=passes)


def test_auto_round_to_reads_the_padding_of_the_slowest_layer():
    # Blocks of 32 output channels (ONNX Runtime's convolutions measured that way): 8 is free.
    assert _auto(_ScriptedTable(lambda w: 1.0 + 0.5 * ((w - 1) // 32))) == 8
    # Time proportional to the width: every multiple costs, so none is kept.
    assert _auto(_ScriptedTable(lambda w: 0.1 * w)) == 1


def test_auto_round_to_is_not_decided_by_one_slow_sweep():
    blocks = lambda w: 1.0 + 0.5 * ((w - 1) // 32)  # noqa: E731
    burst = lambda w: 2.0 if w % 8 == 0 else 1.0  # noqa: E731 - the sweep was slowed at each multiple of 8
    assert _auto(_ScriptedTable(blocks, burst, slow_sweeps=1), passes=1) == 2  # one sweep is fooled
    table = _ScriptedTable(blocks, burst, slow_sweeps=1)
    assert _auto(table, passes=3) == 8
    # The faster figure replaced the slowed entry, so the table (and its cache) holds it.
    spec = spec_of(nn.Conv2d(4, 64, 3), (2, 4, 6, 6))  # the second convolution, as the cost model saw it
    assert table.seen[(4, 32)] == 3 and table.time(spec, 4, 32) == 1.0


def test_remeasure_keeps_the_faster_figure():
    spec = LayerSpec("linear", (), 16, 8)
    figures = iter([3.0, 2.0, 5.0])

    class Table(LatencyTable):
        def measure(self, spec, cin, cout):
            return next(figures)

    table = Table("eager", batch_size=4, threads=1, cache=False)
    assert table.time(spec, 16, 8) == 3.0
    assert table.remeasure(spec, 16, 8) == 2.0
    assert table.remeasure(spec, 16, 8) == 2.0  # 5.0 measured, 2.0 kept
    assert table.time(spec, 16, 8) == 2.0 and table.measured == 3


def test_tables_read_from_disk_are_scaled_to_the_machine_speed_now(cache):
    from prunekit import zoo

    model = zoo.create("mnistnet")
    x = torch.randn(2, 1, 28, 28)
    st = build(model, x)
    slow = {"conv": 1.0, "linear": 1.0}

    class Table(LatencyTable):  # a layer costs its MACs / 1e6 ms, times how slow its kind runs now
        def measure(self, spec, cin, cout):
            return slow[spec.kind[:4] if spec.kind.startswith("conv") else spec.kind] * spec.flops(cin, cout) / 1e6

    first = Table("eager", batch_size=2, threads=1)
    fresh = CostModel(model, st, x, first)
    fresh.prefetch()
    first.save()
    assert fresh.rescale() == 1.0  # every figure was timed in this process: nothing to compare
    full = list(fresh.sizes)
    small = [4, 8, 25]
    # later, the machine runs convolutions 8x and linears 1.5x slower; the disk holds the old figures
    slow.update(conv=8.0, linear=1.5)
    now = CostModel(model, st, x, Table("eager", batch_size=2, threads=1, cache=False))
    now.prefetch()  # the truth today, timed afresh
    later = Table("eager", batch_size=2, threads=1)
    cost = CostModel(model, st, x, later)
    assert cost.prefetch() == 0  # all read from disk
    assert 1.5 < cost.rescale() < 8.0
    assert sorted({round(lc.scale, 6) for lc in cost.layers}) == [1.5, 8.0]
    # the whole-model fit keeps the scales: a dense model that runs slower leaves no constant
    # that pruning could not remove, and every configuration is priced as it runs today
    cost.calibrate(now.predict(full), [None] * len(full))
    assert cost.constant == pytest.approx(0.0, abs=1e-9)
    assert cost.predict(small) == pytest.approx(now.predict(small))
    # without the rescale, the same fit explains the slowdown with a constant
    stale = CostModel(model, st, x, Table("eager", batch_size=2, threads=1))
    stale.calibrate(now.predict(full), [None] * len(full))
    assert stale.constant > 0.5 * now.predict(full) and stale.predict(small) > 2 * now.predict(small)


def test_an_unwritable_cache_folder_is_warned_about_and_bad_figures_are_not_read(tmp_path, monkeypatch):
    import json

    from prunekit.latency.cache import read_entries, table_key, write_entries

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PRUNEKIT_LATENCY_DIR", str(blocker / "latency"))
    key = table_key("eager", 1, 4)
    with pytest.warns(UserWarning, match=r"latency tables not cached: .*a-file.* PRUNEKIT_LATENCY_DIR"):
        assert write_entries(key, {"a": 1.0}) is None
    monkeypatch.setenv("PRUNEKIT_LATENCY_DIR", str(tmp_path / "ok"))
    path = write_entries(key, {"a": 1.0})
    data = json.loads(path.read_text())
    data["entries"].update(zero=0.0, negative=-1.0, nan=float("nan"), inf=float("inf"), flag=True)
    path.write_text(json.dumps(data))
    assert read_entries(key) == {"a": 1.0}


def _write_many(folder: str, worker: int, n: int, ready, go) -> None:
    import os

    os.environ["PRUNEKIT_LATENCY_DIR"] = folder
    from prunekit.latency.cache import table_key, write_entries

    key = table_key("eager", 1, 64)
    ready.release()
    go.wait(60)  # both processes imported: they write at the same time
    for j in range(n):
        write_entries(key, {f"w{worker}-{j}": 1.0 + j})


def test_processes_writing_one_table_at_once_keep_every_entry(tmp_path, monkeypatch):
    """Each write merges into the file under a lock held from the read to the replace: two
    processes merging 150 entries each into the same table leave all 300 (without the lock,
    about half were lost), and no temporary file is left behind."""
    import multiprocessing as mp

    from prunekit.latency.cache import read_entries, table_key

    ctx = mp.get_context("spawn")
    ready, go = ctx.Semaphore(0), ctx.Event()
    workers = [ctx.Process(target=_write_many, args=(str(tmp_path), i, 150, ready, go)) for i in range(2)]
    for p in workers:
        p.start()
    for _ in workers:
        assert ready.acquire(timeout=120)
    go.set()
    for p in workers:
        p.join(120)
    assert [p.exitcode for p in workers] == [0, 0]
    monkeypatch.setenv("PRUNEKIT_LATENCY_DIR", str(tmp_path))
    entries = read_entries(table_key("eager", 1, 64))
    assert entries == {f"w{i}-{j}": 1.0 + j for i in range(2) for j in range(150)}
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_torchscript_runs_the_graph_optimized_for_inference_and_keys_its_own_tables():
    """The TorchScript runner is what a deployment runs: traced, frozen and passed through
    ``torch.jit.optimize_for_inference`` (on CPU, a prepacked oneDNN convolution), with the
    model's outputs; its tables are not shared with one timed before those passes."""
    from prunekit.latency.cache import table_key
    from prunekit.metrics_timing import prepare

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 4)).eval()
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 1.5)
    x = torch.randn(4, 3, 6, 6)
    before = copy.deepcopy(model.state_dict())
    run = prepare(model, (x,), "torchscript")
    graph = str(run.fn.graph)
    assert "batch_norm" not in graph  # folded (torch.jit.freeze does that much)
    if torch.backends.mkldnn.is_available():  # the inference passes: prepacked oneDNN convolution
        assert "mkldnn_convolution" in graph
    with torch.no_grad():
        assert torch.allclose(run(x), model(x), atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is not touched
    assert table_key("torchscript", 1, 4)["passes"] == "trace,freeze,optimize_for_inference"
    assert table_key("eager", 1, 4)["passes"] is None
