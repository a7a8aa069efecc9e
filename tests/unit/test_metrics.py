import copy
import json
import os
import time
import warnings
from dataclasses import replace

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import PruneError, PruneTypeError
from prunekit.masking import apply_masks, get_masks
from prunekit.metrics import ENERGY_PJ_45NM, Metrics, compare_table, format_table_text, measure


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)  # no accidental zeros: counts below are exact
    return model


def _half_mask(shape: tuple[int, ...]) -> torch.Tensor:
    mask = torch.zeros(shape).flatten()
    mask[::2] = 1
    return mask.reshape(shape)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_counts_with_known_mask():
    model = _mlp()
    mask = torch.ones(4, 10)
    mask[:2] = 0  # 20 of 40 weights masked
    apply_masks(model, {"0.weight": mask})
    m = measure(model, torch.randn(3, 10), latency=False)
    assert m.params == 40 + 4 + 8 + 2
    assert m.nonzero_params == 54 - 20
    assert m.prunable_params == 48
    assert m.prunable_nonzero == 28
    assert m.sparsity == pytest.approx(20 / 48)
    json.dumps(m.as_dict())  # serializable
    assert m.as_dict()["params"] == 54


def test_linear_flops_dense_and_effective():
    layer = nn.Linear(784, 300)
    m = measure(layer, torch.randn(8, 784), latency=False)
    assert m.flops_dense == 2 * 784 * 300  # batch 1, whatever the example batch
    assert m.flops_effective == m.flops_dense
    apply_masks(layer, {"weight": _half_mask((300, 784))})
    half = measure(layer, torch.randn(8, 784), latency=False)
    assert half.flops_dense == 2 * 784 * 300
    assert half.flops_effective == 784 * 300


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0)])
def test_conv_flops_formula(stride, padding):
    conv = nn.Conv2d(3, 8, 3, stride=stride, padding=padding)
    x = torch.randn(2, 3, 16, 16)
    h, w = conv(x).shape[-2:]
    m = measure(conv, x, latency=False)
    assert m.flops_dense == 2 * 8 * 3 * 3 * 3 * h * w


def test_flops_of_zoo_model():
    from prunekit import zoo

    model = zoo.create("lenet300100")
    m = measure(model, torch.randn(2, 1, 28, 28), latency=False)
    assert m.flops_dense == 2 * (784 * 300 + 300 * 100 + 100 * 10)
    assert m.prunable_params == 784 * 300 + 300 * 100 + 100 * 10


def test_latency_positive_modes_and_threads_restored():
    model = nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.5), nn.BatchNorm1d(6), nn.Linear(6, 2))
    model.train()
    model[2].eval()  # mixed modes must come back exactly
    modes = [mod.training for mod in model.modules()]
    threads = torch.get_num_threads()
    before = _state(model)
    seen = []
    model[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    m = measure(model, torch.randn(3, 6), batch_size=8, warmup=1, repeats=3, threads=1)
    assert m.latency_ms_b1 > 0 and m.latency_ms_batch > 0
    assert m.batch_size == 8 and m.threads == 1
    assert {1, 8} <= set(seen)  # batch 8 built by repeating 3 samples
    assert [mod.training for mod in model.modules()] == modes
    assert torch.get_num_threads() == threads
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats untouched


def test_latency_disabled():
    m = measure(nn.Linear(4, 2), torch.randn(1, 4), latency=False)
    assert m.latency_ms_b1 is None and m.latency_ms_batch is None


def test_tuple_inputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)
            self.b = nn.Linear(5, 3)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    m = measure(Two(), (torch.randn(2, 4), torch.randn(2, 5)), batch_size=4, warmup=0, repeats=1)
    assert m.flops_dense == 2 * (4 * 3 + 5 * 3)


def test_compressed_size_shrinks_raw_size_does_not():
    torch.manual_seed(0)
    dense = nn.Linear(256, 256)
    sparse = copy.deepcopy(dense)
    apply_masks(sparse, {"weight": (torch.rand(256, 256) > 0.9).float()})
    x = torch.randn(1, 256)
    a = measure(dense, x, latency=False)
    b = measure(sparse, x, latency=False)
    assert a.size_bytes == b.size_bytes
    assert b.size_bytes_compressed < 0.3 * a.size_bytes_compressed


def test_energy_model():
    torch.manual_seed(0)
    dense = nn.Linear(128, 64)
    sparse = copy.deepcopy(dense)
    apply_masks(sparse, {"weight": _half_mask((64, 128))})
    x = torch.randn(1, 128)
    a = measure(dense, x, latency=False)
    b = measure(sparse, x, latency=False)
    mac_pj = ENERGY_PJ_45NM["fp32_mult"] + ENERGY_PJ_45NM["fp32_add"]
    assert mac_pj == pytest.approx(4.6)
    assert a.compute_uj == pytest.approx(a.flops_effective / 2 * 4.6e-6)
    assert b.compute_uj == pytest.approx(b.flops_effective / 2 * 4.6e-6)
    assert b.energy_uj < a.energy_uj
    assert b.energy_uj == pytest.approx(b.compute_uj + b.memory_uj)
    # Dense storage reads every weight; sparse storage only nonzeros.
    assert a.memory_uj_sparse_storage == pytest.approx(a.memory_uj)
    assert b.memory_uj == pytest.approx(a.memory_uj)
    assert b.memory_uj_sparse_storage < b.memory_uj
    dram_saved = 64 * 128 / 2 * ENERGY_PJ_45NM["dram_read_32bit"] * 1e-6
    assert b.memory_uj - b.memory_uj_sparse_storage == pytest.approx(dram_saved)


def test_bad_arguments_raise_and_leave_model_unchanged():
    model = _mlp()
    apply_masks(model, {"0.weight": _half_mask((4, 10))})
    model.train()
    state = _state(model)
    masks = {k: v.clone() for k, v in get_masks(model).items()}
    with pytest.raises(PruneTypeError):
        measure("not a model", torch.randn(1, 10))
    with pytest.raises(PruneTypeError):
        measure(model, [1, 2, 3])
    with pytest.raises(PruneTypeError):
        measure(model, "x")
    with pytest.raises(PruneError, match="batch_size"):
        measure(model, torch.randn(1, 10), batch_size=0)
    with pytest.raises(PruneError, match=r"shape \(4, 7\) could not run.*mat1 and mat2"):
        measure(model, torch.randn(4, 7))
    assert model.training and all(mod.training for mod in model.modules())
    assert set(get_masks(model)) == set(masks)
    assert all(torch.equal(get_masks(model)[k], masks[k]) for k in masks)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_compare_table_rows_and_ratios():
    base = measure(_mlp(), torch.randn(1, 10), latency=False)
    before = replace(base, params=1000, nonzero_params=1000, latency_ms_b1=2.0, latency_ms_batch=8.0)
    after = replace(base, params=1000, nonzero_params=81, latency_ms_b1=1.0, latency_ms_batch=None)
    text = format_table_text(compare_table(before, after, before_acc=0.98, after_acc=0.975, title="T"))
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") >= 4}
    for label in ["accuracy", "params", "nonzero params", "FLOPs dense", "FLOPs effective",
                  "latency b1", f"latency batch {base.batch_size}", "size as safetensors",
                  "size compressed (xz)", "energy (est.)"]:
        assert label in lines, label
    assert "12.3×" in lines["nonzero params"]
    assert "2.0×" in lines["latency b1"]
    assert "-0.50 pt" in lines["accuracy"]
    assert lines[f"latency batch {base.batch_size}"].rstrip("│ ").endswith("–")
    no_acc = format_table_text(compare_table(before, after))
    assert "accuracy" not in no_acc
    with pytest.raises(PruneTypeError):
        compare_table(before, {"params": 1})
    assert isinstance(before, Metrics)


def test_measure_says_when_zeros_will_not_speed_up():
    import warnings as _w

    torch.manual_seed(0)
    x = torch.randn(4, 8)
    dense = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with _w.catch_warnings():
        _w.simplefilter("error")
        assert pk.measure(dense, x, latency=False).speed_note is None
    pk.prune(dense, 0.5)
    with pytest.warns(UserWarning, match="scattered zeros"):
        note = pk.measure(dense, x, latency=False).speed_note
    assert "dense kernels" in note
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    pk.prune(net, 0.5, granularity="channel", example_inputs=x)
    with pytest.warns(UserWarning, match="pk.compact"):
        pk.measure(net, x, latency=False)
    small = pk.compact(net, x)
    with _w.catch_warnings():
        _w.simplefilter("error")
        m = pk.measure(small, x, latency=False)
    assert m.speed_note is None and m.params < pk.measure(dense, x, latency=False).params


def test_speed_note_does_not_promise_compact_removes_rows_with_a_bias():
    """A row of zeros with a nonzero bias outputs a constant: compact keeps it, and the note
    says so instead of sending the user to compact."""
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        net[0].weight[:5] = 0  # five all-zero rows, their biases left as they are
    with pytest.warns(UserWarning, match="5 output channels have all-zero weights but a nonzero bias"):
        note = pk.measure(net, x, latency=False).speed_note
    assert "removes them" not in note
    assert sum(p.numel() for p in pk.compact(net, x).parameters()) == sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        net[0].bias[:5] = 0  # now the rows are gone for good: compact removes them, as the note says
    with pytest.warns(UserWarning, match="5 output channels are all zero but still computed: pk.compact"):
        pk.measure(net, x, latency=False)
    assert pk.compact(net, x)[0].out_features == 11


def test_zero_fraction_of_all_parameters_counts_unpruned_layers():
    class Tagger(nn.Module):  # an LSTM that is not pruned, and a linear head that is
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(8, 16, batch_first=True)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            return self.head(self.lstm(x)[0][:, -1])

    torch.manual_seed(0)
    model = Tagger()
    x = torch.randn(2, 5, 8)
    result = pk.prune(model, 0.9, ignore=["lstm"])
    m = measure(model, x, latency=False)
    assert result.sparsity == pytest.approx(0.9, abs=0.02)  # of the head, the only weights pruned
    zeros = 64 - int(torch.count_nonzero(model.head.weight))
    assert m.zero_fraction_all == pytest.approx(zeros / m.params) == pytest.approx(1 - m.nonzero_params / m.params)
    assert m.zero_fraction_all < 0.06  # the dense LSTM holds almost every parameter
    rows = dict(m.rows())
    assert rows["zeros, all parameters"] == f"{m.zero_fraction_all * 100:.2f} %"
    assert rows["sparsity (zeros, prunable weights)"].endswith(" %") and rows["size as safetensors"].endswith(" B")
    assert "zeros, all params" in format_table_text(compare_table(m, m))


def test_busy_machine_warning_and_recorded_load(monkeypatch):
    import prunekit.metrics as metrics

    monkeypatch.setattr(metrics, "_load_average", lambda: 7.5)
    monkeypatch.setattr(metrics, "usable_cores", lambda: 2)
    with pytest.warns(metrics.BusyMachineWarning, match="load average is 7.50 on 2 usable CPU cores.*unreliable"):
        m = measure(nn.Linear(4, 2), torch.randn(1, 4), warmup=0, repeats=1)
    assert m.loadavg == 7.5 and m.cores == 2
    monkeypatch.setattr(metrics, "_load_average", lambda: 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert measure(nn.Linear(4, 2), torch.randn(1, 4), warmup=0, repeats=1).loadavg == 1.0
    monkeypatch.setattr(metrics, "_load_average", lambda: 7.5)
    with warnings.catch_warnings():  # no timing, nothing unreliable: no warning
        warnings.simplefilter("error")
        measure(nn.Linear(4, 2), torch.randn(1, 4), latency=False)


def test_usable_cores_is_within_the_machine():
    from prunekit.metrics import usable_cores

    assert 1 <= usable_cores() <= (os.cpu_count() or 1)


def test_interleaved_timing_measures_each_model_warm_not_right_after_the_other():
    """A model that runs slowly right after another one (cold caches, sleeping threads) but
    fast back to back is timed at its back-to-back speed; the reference too."""
    from prunekit.metrics_timing import time_interleaved, time_ratio

    last: list[str] = [""]

    def runner(name: str, warm_s: float, cold_s: float):
        def run(*_):
            time.sleep(warm_s if last[0] == name else cold_s)
            last[0] = name
        return run

    small, big = runner("small", 0.001, 0.012), runner("big", 0.004, 0.005)
    pruned_ms, dense_ms = time_ratio(small, big, (), warmup=1, repeats=5)
    # sleep() only ever overshoots: the warm figure is >= 1 ms, the cold one would be >= 12 ms
    assert 1.0 <= pruned_ms < 6.0
    assert 4.0 <= dense_ms < 5.0 + 4.0
    ms = time_interleaved([small, big], [(), ()], warmup=1, repeats=5)
    assert 1.0 <= ms[0] < 6.0 and 4.0 <= ms[1] < 9.0


def test_inputs_without_the_batch_dimension_go_as_they_are():
    """An (L, L) attention mask next to a (B, L, D) batch is not cut to the batch size: the
    tracer (channel and head pruning, compact) and measure run the model as the user does."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(8, 32)
            self.att = nn.MultiheadAttention(32, 4, batch_first=True)
            self.ff, self.out = nn.Linear(32, 64), nn.Linear(64, 3)

        def forward(self, x, mask):
            h = self.inp(x)
            h = h + self.att(h, h, h, need_weights=False, attn_mask=mask)[0]
            return self.out(torch.relu(self.ff(h)).mean(1))

    torch.manual_seed(0)
    x, causal = torch.randn(4, 5, 8), torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    model = Block().eval()
    dense = pk.measure(model, (x, causal), latency=True, repeats=2, warmup=1)
    one = count_flops_of(model, (x[:1], causal))
    assert dense.flops_dense == one
    pk.prune(model, 0.5, granularity="channel", example_inputs=(x, causal))
    with torch.no_grad():
        masked = model(x, causal)
        small = pk.compact(model, (x, causal))
        assert torch.allclose(small(x, causal), masked, atol=1e-5)


def count_flops_of(model, inputs):
    from prunekit.metrics_count import count_flops

    return count_flops(model, inputs, [])[0]


def test_a_model_that_cannot_run_at_batch_one_is_named_with_the_batch_one_shape():
    class NeedsBatchEight(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            if x.shape[0] != 8:
                raise ValueError("needs batch 8")
            return self.fc(x)

    with pytest.raises(pk.PruneError, match=r"of shape \(8, 4\) could not run through NeedsBatchEight at batch 1 "
                                            r"\(shape \(1, 4\), cut from \(8, 4\).*needs batch 8"):
        pk.measure(NeedsBatchEight(), torch.randn(8, 4), latency=False)


def test_a_weight_tied_to_a_second_module_is_priced_at_its_density_there_too():
    class TiedHead(torch.nn.Module):  # an embedding tied to a Linear output head
        def __init__(self):
            super().__init__()
            self.emb, self.fc = torch.nn.Embedding(50, 16), torch.nn.Linear(16, 16)
            self.head = torch.nn.Linear(16, 50, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, x):
            return self.head(torch.relu(self.fc(self.emb(x))))

    torch.manual_seed(0)
    model, x = TiedHead(), torch.randint(0, 50, (1, 7))
    pk.prune(model, 0.5)
    calls = []  # every Linear call: 2 · rows · weights · density
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append(
        2 * (i[0].numel() // m.in_features) * m.weight.numel() * float(m.weight.ne(0).float().mean())))
        for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert len(calls) == 2
    got = pk.measure(model, x, latency=False)
    assert got.flops_effective == round(sum(calls)) < got.flops_dense


class _TimeFirst(torch.nn.Module):
    def __init__(self, transpose: bool):
        super().__init__()
        self.rnn, self.fc, self.transpose = torch.nn.LSTM(8, 16), torch.nn.Linear(16, 4), transpose

    def forward(self, x):
        return self.fc(self.rnn(x.transpose(0, 1) if self.transpose else x)[0][-1])


def test_a_time_first_input_cut_to_one_step_is_warned_and_a_batch_first_one_is_counted_in_full():
    lstm_flops = 2 * 12 * (64 * 8 + 64 * 16)  # 2 · steps · LSTM weights
    with pytest.warns(UserWarning, match=r"sequence-first module\(s\) rnn .*sequences of length 1.*\(12, 1, 8\)"):
        short = pk.measure(_TimeFirst(False), torch.randn(12, 1, 8), latency=False)
    assert short.flops_dense < lstm_flops  # what was counted: one step
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = pk.measure(_TimeFirst(True), torch.randn(4, 12, 8), latency=False)
        pk.measure(_TimeFirst(False), torch.randn(1, 1, 8), latency=False)  # one step given: nothing was cut
    assert full.flops_dense == lstm_flops + 2 * 16 * 4


def test_csr_layers_count_what_they_store_and_quantized_storage_is_refused():
    from prunekit.deploy.sparse_linear import SparseLinear

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    pk.prune(model, 0.9)
    pk.commit(model)
    csr = nn.Sequential(SparseLinear.from_linear(model[0]), nn.ReLU(), SparseLinear.from_linear(model[2]))
    m = pk.measure(csr, torch.randn(1, 32), latency=False)
    nnz = sum(int(torch.count_nonzero(model[i].weight)) for i in (0, 2))
    assert m.params == nnz + 16 + 4 and m.nonzero_params == nnz + int(torch.count_nonzero(model[0].bias)) + \
        int(torch.count_nonzero(model[2].bias))
    dense = pk.measure(model, torch.randn(1, 32), latency=False)
    assert m.memory_uj_sparse_storage == pytest.approx(dense.memory_uj_sparse_storage, rel=0.05) and m.memory_uj > 0
    q = torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8)
    with pytest.raises(PruneTypeError, match=r"_packed_params"):
        pk.measure(q, torch.randn(1, 32), latency=False)


def test_latencies_timed_at_different_batch_sizes_are_not_divided():
    from prunekit.metrics import speedup

    model, x = nn.Linear(64, 64), torch.randn(2, 64)
    a = measure(model, x, batch_size=8, warmup=1, repeats=3)
    b = measure(model, x, batch_size=256, warmup=1, repeats=3)
    s = speedup(a, b)
    assert s.batch_size == 1 and s.speedup == pytest.approx(a.latency_ms_b1 / b.latency_ms_b1)
    row = next(line for line in format_table_text(compare_table(a, b)).splitlines() if "batch 8/256" in line)
    assert row.rstrip().rstrip("│").rstrip().endswith("–")
    same = speedup(a, replace(a, latency_ms_batch=a.latency_ms_batch / 2))
    assert same.batch_size == 8 and same.speedup == pytest.approx(2.0)


def test_zero_input_columns_of_an_unstructured_model_stay_scattered_zeros_in_the_speed_note():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    pk.prune(model, 0.8)
    with torch.no_grad():  # 16 model inputs no kept weight reads: compact cannot remove a model input
        model[0].parametrizations.weight.original[:, :16] = 0
    zeros = sum(int((m.weight == 0).sum()) for m in (model[0], model[2]))
    share = zeros / (64 * 32 + 32 * 10)
    assert all(model[0].weight.ne(0).any(1))  # no output channel is gone
    with pytest.warns(UserWarning, match=rf"{share:.0%} of the prunable weights are scattered zeros"):
        note = measure(model, torch.randn(1, 64), latency=False).speed_note
    assert f"{share:.0%}" in note


@pytest.mark.slow
def test_every_shape_of_a_compile_sweep_is_compiled_not_run_eager_past_the_recompile_limit():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval(), torch.randn(4, 8)
    start = counters["stats"]["unique_graphs"]
    sizes = list(range(2, 12))  # with batch 1 and batch 64: 12 shapes, past dynamo's limit of 8
    m = measure(model, x, batch_size=64, repeats=1, warmup=0, runtime="compile", batch_sizes=sizes)
    assert sorted(m.latency_sweep) == sizes
    assert counters["stats"]["unique_graphs"] - start >= len(sizes) + 2


def test_a_speedup_across_runtimes_or_thread_counts_is_refused():
    from prunekit.metrics import speedup

    model, x = nn.Linear(64, 64), torch.randn(2, 64)
    a = measure(model, x, batch_size=8, warmup=1, repeats=3)
    with pytest.raises(PruneError, match=r"timed in eager on \d+ thread\(s\) and in onnxruntime"):
        speedup(a, replace(a, runtime="onnxruntime"))
    with pytest.raises(PruneError, match="one runtime and thread count"):
        speedup(a, replace(a, threads=a.threads + 1))
    assert speedup(a, replace(a)).speedup == pytest.approx(1.0)
