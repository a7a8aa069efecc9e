"""FLOPs of modules that run as one fused kernel (oneDNN's LSTM, the inference fast paths
of nn.MultiheadAttention and nn.TransformerEncoderLayer) equal what torch's flop counter
counts when the same module runs unfused, and pruning them shows in flops_effective."""

import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.metrics_count import count_flops


def _count(model: nn.Module, x: torch.Tensor) -> int:
    return count_flops(model, (x,), [])[0]


@pytest.mark.parametrize("kind", ["lstm", "lstm-2-layers-bidirectional", "lstm-proj"])
def test_fused_lstm_counts_like_its_unfused_twin(kind):
    torch.manual_seed(0)
    layers, bi, proj = {"lstm": (1, False, 0), "lstm-2-layers-bidirectional": (2, True, 0),
                        "lstm-proj": (1, False, 6)}[kind]
    model = nn.LSTM(8, 16, num_layers=layers, bidirectional=bi, proj_size=proj, batch_first=True).eval()
    x = torch.randn(3, 7, 8)
    fused = _count(model, x)
    with torch.backends.mkldnn.flags(enabled=False):
        unfused = _count(model, x)
    assert unfused > 0
    assert fused == unfused
    # by hand for one layer, one direction: 7 steps x 3 sequences x 4 gates x 16 x (8 + 16) x 2
    if kind == "lstm":
        assert fused == 2 * 7 * 3 * 4 * 16 * (8 + 16)


def test_attention_fast_path_counts_like_the_slow_path():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 9, 16)

    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = mha

        def forward(self, x):
            return self.att(x, kv, kv, need_weights=False)[0]

    model = Cross()
    slow = _count(model.train(), q)  # training mode never takes the fast path (dropout is 0)
    fast = _count(model.eval(), q)
    assert slow > 0 and fast == slow
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    x = torch.randn(2, 5, 16)
    slow, fast = _count(layer.train(), x), _count(layer.eval(), x)
    assert slow > 0 and fast == slow


def test_pruned_lstm_and_attention_show_in_the_measured_flops():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(16, 32, batch_first=True)
            self.att = nn.MultiheadAttention(32, 4, batch_first=True)
            self.out = nn.Linear(32, 3)

        def forward(self, x):
            h = self.rnn(x)[0]
            return self.out(self.att(h, h, h, need_weights=False)[0][:, -1])

    model, x = Net(), torch.randn(2, 10, 16)
    dense = pk.measure(model, x, latency=False)
    with torch.backends.mkldnn.flags(enabled=False):
        unfused = _count(model.train(), x[:1])
    assert dense.flops_dense == unfused
    pk.prune(model, 0.9)
    after = pk.measure(model, x, latency=False)
    assert after.flops_dense == dense.flops_dense
    # the recurrent and projection weights are nine tenths zeros: what remains dense is the
    # attention's scores and weighted values (4 x 10 x 10 x 32 FLOPs) and nothing else
    assert after.flops_effective < 0.2 * dense.flops_effective


def test_attention_output_projection_counts_in_its_parents_density():
    """nn.MultiheadAttention multiplies by out_proj.weight without calling out_proj: a pruned
    output projection must still lower the effective FLOPs."""
    torch.manual_seed(0)
    att = nn.MultiheadAttention(32, 4, batch_first=True).eval()

    class Self(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = att

        def forward(self, x):
            return self.att(x, x, x, need_weights=False)[0]

    model, x = Self(), torch.randn(1, 6, 32)
    dense = pk.measure(model, x, latency=False)
    with torch.no_grad():
        att.out_proj.weight[:, : 32 // 2] = 0  # half the output projection, nothing else
    half = pk.measure(model, x, latency=False)
    out_proj = 2 * 6 * 32 * 32
    assert dense.flops_dense == half.flops_dense
    # the module's density is over all its weights (512 of 4,096 zero), spread over the FLOPs
    # that read them; the scores and weighted values (2 x 2 x 6 x 6 x 32) count in full
    core = 2 * 2 * 6 * 6 * 32
    expected = (dense.flops_dense - core) * (1 - 512 / 4096) + core
    assert half.flops_effective == pytest.approx(expected, rel=1e-6)
    assert dense.flops_effective - half.flops_effective >= 0.5 * out_proj / 2


def test_csr_layers_count_the_multiplications_they_do():
    """A model whose linears run on CSR kernels (deploy.sparsify) computes 2 FLOPs per
    stored weight and sample: what flops_effective promised for the masked model."""
    from prunekit.deploy.sparse import sparsify

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    pk.prune(model, 0.95)
    x = torch.randn(64, 256)
    masked = pk.measure(model, x, latency=False)
    report = sparsify(model, x, batch_size=64, repeats=3, min_speedup=1e-6)  # swap every layer
    assert [l.decision for l in report.layers] == ["csr", "csr"]
    sparse = pk.measure(report.model, x, latency=False)
    nnz = sum(int(torch.count_nonzero(m.weight)) for m in model if isinstance(m, nn.Linear))
    assert sparse.flops_dense == 2 * nnz == masked.flops_effective


def test_a_weighted_module_the_counter_cannot_see_is_named(monkeypatch):
    """Where no formula exists (an LSTM kernel on another device, say), measure says which
    module its FLOPs leave out rather than reporting a smaller model."""
    import prunekit.metrics_count as mc

    monkeypatch.setattr(mc, "_fused_ops", lambda: {})  # as torch's counter alone sees oneDNN's LSTM
    model = nn.Sequential(nn.Embedding(50, 8), nn.LSTM(8, 16, batch_first=True))
    x = torch.randint(0, 50, (2, 5))
    with pytest.warns(UserWarning, match=r"counted nothing for 1 \(a kernel"):
        pk.measure(model, x, latency=False)
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert pk.measure(model, x, latency=False).flops_dense == 2 * 5 * 4 * 16 * (8 + 16)


def test_attention_scores_do_not_shrink_with_scattered_projection_zeros():
    """Unstructured zeros in the projections make their matmuls sparse, not the scores and
    weighted values; whole query/key/value features removed (channel pruning) shrink both,
    and the masked model's effective FLOPs then equal the compacted model's dense FLOPs."""
    import warnings

    e, length = 32, 10

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(e, 4, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    torch.manual_seed(0)
    model, x = Attn().eval(), torch.randn(2, length, e)
    proj, core = 2 * length * e * 4 * e, 2 * 2 * length * length * e  # in_proj + out_proj; q kᵀ and · v
    pk.prune(model, 0.5, allocation="uniform")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = pk.measure(model, x, latency=False)
    assert m.flops_dense == proj + core and m.flops_effective == pytest.approx(0.5 * proj + core)

    class ViT(nn.Module):
        def __init__(self, d=32):
            super().__init__()
            self.pe = nn.Conv2d(3, d, 4, stride=4)
            self.enc = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True)
            self.head = nn.Linear(d, 10)

        def forward(self, x):
            return self.head(self.enc(self.pe(x).flatten(2).transpose(1, 2)).mean(1))

    torch.manual_seed(0)
    vit, xi = ViT().eval(), torch.randn(4, 3, 16, 16)
    pk.prune(vit, 0.5, granularity="channel", example_inputs=xi)
    small = pk.compact(vit, xi)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pk.measure(vit, xi, latency=False).flops_effective == pk.measure(small, xi, latency=False).flops_dense
