"""One-shot LLM pruning (magnitude, Wanda, SparseGPT) on a tiny randomly initialised Llama."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from llm_fixtures import block_linears, tiny_llama  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.llm import perplexity, prune_linear, sparsegpt_prune  # noqa: E402
from prunekit.llm import prune_llm as _prune_llm  # noqa: E402


def prune_llm(*args, **kwargs):
    """prune_llm on exactly the calibration windows given: these tests compare with references
    computed on them, without reconstruction unless a test asks for it (the defaults, a mixture
    with the model's own text and 2 epochs of reconstruction, are tested in test_llm_robust.py)."""
    kwargs.setdefault("self_calibration", 0.0)
    kwargs.setdefault("reconstruct", 0)
    return _prune_llm(*args, **kwargs)

SEQLEN = 32
VOCAB = 100


@torch.no_grad()
def _sample(model: nn.Module, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` sequences drawn from the model itself: the dense model is the best predictor of them."""
    ids = torch.randint(0, VOCAB, (n, 1), generator=gen)
    for _ in range(SEQLEN - 1):
        logits = model(input_ids=ids, use_cache=False).logits[:, -1].float()
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
        ids = torch.cat([ids, nxt], 1)
    return ids


@pytest.fixture(scope="module")
def setup():
    # 2 blocks, hidden 64, 4 heads in 2 KV groups, MLP 128; initializer_range 0.2: sharp predictions,
    # so damage shows in perplexity
    model = tiny_llama(hidden_size=64, intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=2 * SEQLEN)
    gen = torch.Generator().manual_seed(1)
    calib = torch.randint(0, VOCAB, (8, SEQLEN), generator=gen)
    evalset = _sample(model, 24, gen)
    return model, calib, evalset


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_exact_sparsity_zeros_and_masks(setup, method):
    model = copy.deepcopy(setup[0])
    report = prune_llm(model, setup[1], method=method, sparsity=0.5, keep_masks=True)
    linears = block_linears(model)
    assert [r.name for r in report.layers] == list(linears)
    masks = pk.masks(model)
    assert set(masks) == {f"{n}.weight" for n in linears}
    for name, lin in linears.items():
        w = lin.weight.detach()
        mask = masks[f"{name}.weight"]
        assert int((mask == 0).sum()) == w.numel() // 2, name
        # pruned entries exactly zero, in the effective and in the stored weight
        assert torch.all(w[mask == 0] == 0)
        assert torch.all(lin.parametrizations.weight.original[mask == 0] == 0)
        if method != "sparsegpt":  # row-wise comparison: every output row loses exactly half
            assert torch.all((mask == 0).sum(1) == w.shape[1] // 2), name
    assert all(r.sparsity == 0.5 for r in report.layers)
    assert report.overall_sparsity == 0.5 and report.seconds > 0
    # commit keeps the zeros and leaves plain modules
    pk.commit(model)
    assert not pk.masks(model)
    assert all(float((lin.weight == 0).float().mean()) >= 0.5 for lin in block_linears(model).values())


def test_layer_comparison_allows_uneven_rows(setup):
    model = copy.deepcopy(setup[0])
    prune_llm(model, setup[1], method="wanda", sparsity=0.5, comparison="layer", keep_masks=True)
    per_row = [pk.masks(model)[f"{n}.weight"].eq(0).sum(1) for n in block_linears(model)]
    assert all(int(r.sum()) == r.numel() * lin.in_features // 2 for r, lin in zip(per_row, block_linears(model).values()))
    assert any(len(set(r.tolist())) > 1 for r in per_row)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_pattern_holds_in_every_group(setup, method, pattern):
    n, m = map(int, pattern.split(":"))
    model = copy.deepcopy(setup[0])
    report = prune_llm(model, setup[1], method=method, pattern=pattern, keep_masks=True)
    assert report.sparsity == 1 - n / m
    for name, lin in block_linears(model).items():
        w = lin.weight.detach()
        groups = (w != 0).reshape(w.shape[0], -1, m).sum(-1)
        assert torch.all(groups <= n), name
        assert torch.all(pk.masks(model)[f"{name}.weight"].reshape(w.shape[0], -1, m).sum(-1) == n), name


def test_other_parameters_untouched(setup):
    dense = setup[0]
    model = copy.deepcopy(dense)
    prune_llm(model, setup[1], method="sparsegpt")
    pruned = {f"{n}.weight" for n in block_linears(model)}
    after = pk.masking.effective_weights(model)
    for name, p in dense.named_parameters():
        if name not in pruned:
            assert torch.equal(after[name], p), name
    assert not any(torch.equal(after[n], dict(dense.named_parameters())[n]) for n in pruned)


def test_sparsegpt_updates_remaining_weights(setup):
    model = copy.deepcopy(setup[0])
    prune_llm(model, setup[1], method="sparsegpt", keep_masks=True)
    name, lin = next(iter(block_linears(model).items()))
    before = dict(setup[0].named_parameters())[f"{name}.weight"]
    kept = pk.masks(model)[f"{name}.weight"].bool()
    # magnitude/Wanda keep surviving weights as they were; SparseGPT compensates them
    assert not torch.allclose(lin.weight[kept], before[kept])


def test_perplexity_finite_and_magnitude_hurts(setup):
    dense, calib, evalset = setup
    ppl_dense = perplexity(dense, evalset, seqlen=SEQLEN)
    model = copy.deepcopy(dense)
    prune_llm(model, calib, method="magnitude", sparsity=0.5)
    ppl_mag = perplexity(model, evalset, seqlen=SEQLEN)
    assert math.isfinite(ppl_dense) and math.isfinite(ppl_mag)
    assert 1.0 < ppl_dense < VOCAB
    assert ppl_mag > ppl_dense * 1.05


def test_perplexity_matches_mean_nll_and_stride(setup):
    dense, _, evalset = setup
    ids = evalset[:2]
    with torch.no_grad():
        logits = dense(input_ids=ids, use_cache=False).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    assert perplexity(dense, ids, seqlen=SEQLEN) == pytest.approx(math.exp(float(nll)), rel=1e-5)
    # overlapping windows score every token once, with more context
    assert math.isfinite(perplexity(dense, ids, seqlen=SEQLEN, stride=SEQLEN // 2))


def _correlated_inputs(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """Features driven by d/4 shared factors, with scales spread over two decades."""
    z = torch.randn(n, d // 4, generator=gen)
    mix = torch.randn(d // 4, d, generator=gen) / math.sqrt(d // 4)
    scale = torch.logspace(-1, 1, d)[torch.randperm(d, generator=gen)]
    return (z @ mix + 0.1 * torch.randn(n, d, generator=gen)) * scale


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_sparsegpt_reconstructs_best(pattern):
    # The defining property: with correlated inputs, SparseGPT's ||WX - W'X|| beats the
    # score-only methods on the same layer at the same sparsity.
    gen = torch.Generator().manual_seed(0)
    x = _correlated_inputs(2048, 128, gen)
    base = nn.Linear(128, 48, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.randn(48, 128, generator=gen))
        ref = x @ base.weight.t()
    errs = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        lin = copy.deepcopy(base)
        keep = prune_linear(lin, x, method=method, sparsity=0.5, pattern=pattern, blocksize=32)
        assert int((~keep).sum()) == lin.weight.numel() // 2
        assert torch.all(lin.weight[~keep] == 0)
        with torch.no_grad():
            errs[method] = float(torch.linalg.norm(ref - lin(x)))
    assert errs["sparsegpt"] < 0.9 * errs["wanda"] < 0.9 * errs["magnitude"], errs


def test_sparsegpt_prune_without_pruning_keeps_weights():
    gen = torch.Generator().manual_seed(0)
    x = _correlated_inputs(512, 32, gen)
    w = torch.randn(8, 32, generator=gen)
    new, keep = sparsegpt_prune(w, 2 * x.t() @ x / x.shape[0], 0.0)
    assert keep.all() and torch.allclose(new, w, atol=1e-4)


def test_block_inputs_reproduce_the_model_forward(setup):
    # The captured first-block inputs and call arguments (causal mask, rotary embeddings),
    # run block by block, reproduce the hidden states of the model's own forward pass.
    from prunekit.llm.blocks import block_output, capture_first_inputs

    dense, calib, _ = setup
    layers = dense.model.layers
    chunks = capture_first_inputs(dense, layers[0], calib, batch_size=3)
    assert len(chunks) == 3
    with torch.no_grad():
        states = dense(input_ids=calib, output_hidden_states=True, use_cache=False).hidden_states
        for i, layer in enumerate(layers):
            got = torch.cat([h for h, _, _ in chunks])
            assert torch.allclose(got, states[i], atol=1e-5), i
            chunks = [(block_output(layer, h, a, k), a, k) for h, a, k in chunks]


def test_zero_sparsity_changes_nothing(setup):
    dense, calib, _ = setup
    model = copy.deepcopy(dense)
    report = prune_llm(model, calib, method="sparsegpt", sparsity=0.0, percdamp=0.0)
    assert report.calibration_tokens == calib.numel()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=calib).logits, dense(input_ids=calib).logits, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "obs"}, "'obs'"),
        ({"sparsity": 1.5}, "1.5"),
        ({"pattern": "5:4"}, "'5:4'"),
        ({"pattern": "2-4"}, "'2-4'"),
        ({"comparison": "column"}, "'column'"),
        ({"blocksize": 0}, r"blocksize must be an integer >= 1; got 0"),
        ({"method": "sparsegpt", "pattern": "2:4", "blocksize": 6}, "blocksize 6"),
        ({"percdamp": -1.0}, "-1.0"),
    ],
)
def test_bad_arguments_raise(setup, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune_llm(copy.deepcopy(setup[0]), setup[1], **kwargs)


def test_token_ids_outside_the_vocabulary_are_refused_before_anything_runs(setup):
    dense, calib, evalset = setup
    model = copy.deepcopy(dense)
    bad = calib.clone()
    bad[0, 3] = VOCAB + 5
    with pytest.raises(ValueError, match=rf"calibration holds token ids in \[\d+, {VOCAB + 5}\], outside the model's vocabulary \[0, {VOCAB - 1}\]"):
        prune_llm(model, bad, method="wanda")
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), dense.state_dict().values()))
    assert not pk.masks(model)
    negative = evalset.clone()
    negative[0, 0] = -1
    with pytest.raises(ValueError, match=r"token_ids holds token ids in \[-1, \d+\], outside the model's vocabulary"):
        perplexity(dense, negative, seqlen=SEQLEN)


def test_bad_inputs_raise(setup):
    dense, calib, evalset = setup
    with pytest.raises(ValueError, match="'wanda' needs calibration"):
        prune_llm(copy.deepcopy(dense), None, method="wanda")
    with pytest.raises(ValueError, match="LongTensor"):
        prune_llm(copy.deepcopy(dense), calib.float())
    with pytest.raises(ValueError, match="no stack of transformer blocks"):
        prune_llm(nn.Linear(4, 4), calib)
    with pytest.raises(ValueError, match=r"seqlen must be an integer >= 2; got 1"):
        perplexity(dense, evalset, seqlen=1)
    with pytest.raises(ValueError, match=r"stride must be an integer in \[1, 32\]; got 64"):
        perplexity(dense, evalset, seqlen=SEQLEN, stride=64)
    # magnitude needs no calibration
    model = copy.deepcopy(dense)
    prune_llm(model, None, method="magnitude")
    assert pk.sparsity(model, ignore=["lm_head", "model.embed_tokens"]) == pytest.approx(0.5)
    cov = prune_llm(copy.deepcopy(dense), None, method="magnitude").coverage
    assert {s.name for s in cov.skipped} >= {"model.embed_tokens.weight"} and all(s.by_choice for s in cov.skipped)
    assert cov.covered == sum(m.weight.numel() for l in model.model.layers for m in l.modules() if isinstance(m, nn.Linear))


def test_sparsegpt_beats_magnitude_on_in_distribution_text(setup):
    # (Wanda's edge comes from outlier input features, which a random model lacks, so it
    # is not compared here.)
    dense, _, evalset = setup
    calib = _sample(dense, 16, torch.Generator().manual_seed(2))
    ppl = {}
    for method in ("magnitude", "sparsegpt"):
        model = copy.deepcopy(dense)
        prune_llm(model, calib, method=method, sparsity=0.5)
        ppl[method] = perplexity(model, evalset, seqlen=SEQLEN)
    assert ppl["sparsegpt"] < 0.95 * ppl["magnitude"], ppl


# ------------------------------------------------------------------- OWL allocation


def test_owl_sparsities_keep_the_budget_and_order():
    from prunekit.llm.oneshot import owl_sparsities

    ratios = [1.0, 3.0, 2.0, 0.5]
    sizes = [10, 10, 30, 50]
    sp = owl_sparsities(ratios, sizes, 0.5, 0.1)
    # The size-weighted mean is exactly the requested sparsity.
    assert sum(s * w for s, w in zip(sp, sizes)) / sum(sizes) == pytest.approx(0.5, abs=1e-12)
    # More outliers -> pruned less; every block within sparsity ± lambda (the most outliers
    # at its floor: the shift that meets the budget clips it there, no further).
    order = sorted(range(4), key=lambda i: ratios[i])
    assert [sp[i] for i in order] == sorted(sp, reverse=True)
    assert all(0.4 - 1e-12 <= s <= 0.6 + 1e-12 for s in sp) and min(sp) == pytest.approx(0.4)
    # Equal ratios -> uniform.
    assert owl_sparsities([2.0, 2.0], [5, 7], 0.3, 0.1) == pytest.approx([0.3, 0.3])


def test_outlier_ratio_counts_scores_above_m_times_mean():
    from prunekit.llm.oneshot import outlier_ratio

    scores = [torch.ones(10, 10), torch.tensor([[50.0, 1.0]])]  # mean = (100 + 51) / 102
    mean = 151 / 102
    expected = 100.0 * sum(1 for v in [1.0] * 101 + [50.0] if v > 5 * mean) / 102
    assert outlier_ratio(scores, 5.0) == pytest.approx(expected)


def test_owl_prunes_outlier_heavy_blocks_less(setup):
    model, calib, _ = setup
    work = copy.deepcopy(model)
    # Give block 1 a few huge weights: its Wanda scores get outliers, so OWL spares it.
    with torch.no_grad():
        w = work.model.layers[1].mlp.down_proj.weight
        w[:, :4] *= 40.0
    report = prune_llm(work, calib, method="wanda", sparsity=0.5, allocation="owl", owl_lambda=0.1)
    assert report.allocation == "owl"
    assert report.outlier_ratio[1] > report.outlier_ratio[0]
    assert report.block_sparsity == pytest.approx([0.6, 0.4])
    for r in report.layers:
        block = int(r.name.split(".")[2])
        # Row-wise comparison: every row loses round(cols * block sparsity), as the core's allocations count.
        assert r.sparsity == pytest.approx(round(r.shape[1] * report.block_sparsity[block]) / r.shape[1])


def test_owl_rejects_patterns_and_missing_data(setup):
    model, calib, _ = setup
    work = copy.deepcopy(model)
    before = {k: v.clone() for k, v in work.state_dict().items()}
    with pytest.raises(ValueError, match="allocation 'owl' needs unstructured"):
        prune_llm(work, calib, method="wanda", pattern="2:4", allocation="owl")
    with pytest.raises(ValueError, match="allocation 'owl' needs calibration"):
        prune_llm(work, None, method="magnitude", allocation="owl")
    with pytest.raises(ValueError, match=r"allocation must be one of 'uniform', 'owl', 'depth'; got 'lamp'"):
        prune_llm(work, calib, allocation="lamp")
    with pytest.raises(ValueError, match=r"owl_lambda must be a number in \[0, 1\) .*; got 1.5"):
        prune_llm(work, calib, allocation="owl", owl_lambda=1.5)
    with pytest.raises(TypeError, match="sequential must be True or False"):
        prune_llm(work, calib, sequential="yes")
    after = work.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------- true sequential


def _wanda_keep(weight: torch.Tensor, x: torch.Tensor, sparsity: float) -> torch.Tensor:
    scores = weight.abs() * x.reshape(-1, x.shape[-1]).norm(dim=0).reshape(1, -1)
    k = int(weight.shape[1] * sparsity)
    keep = torch.ones_like(weight, dtype=torch.bool)
    keep.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, False)
    return keep


@torch.no_grad()
def _o_proj_inputs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    seen = []
    h = model.model.layers[0].self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    model(input_ids=ids, use_cache=False)
    h.remove()
    return torch.cat([s.reshape(-1, s.shape[-1]) for s in seen])


@pytest.mark.parametrize("sequential", [False, True])
def test_sequential_uses_inputs_of_the_already_pruned_group(setup, sequential):
    model, calib, _ = setup
    work = copy.deepcopy(model)
    prune_llm(work, calib, method="wanda", sparsity=0.5, sequential=sequential, batch_size=8)
    final = work.model.layers[0].self_attn.o_proj.weight
    keep = final != 0
    # o_proj's input depends on q/k/v only. Sequential: the pruned q/k/v (as in the final
    # model); not sequential: the dense ones (as in the original model).
    x = _o_proj_inputs(work if sequential else model, calib)
    ref = _wanda_keep(model.model.layers[0].self_attn.o_proj.weight, x, 0.5)
    assert torch.equal(keep, ref)
    other = _wanda_keep(model.model.layers[0].self_attn.o_proj.weight, _o_proj_inputs(model if sequential else work, calib), 0.5)
    assert not torch.equal(keep, other)


def test_sequential_sparsegpt_groups_and_quality(setup):
    from prunekit.llm.blocks import capture_first_inputs, transformer_blocks
    from prunekit.llm.linears import input_groups as _input_groups

    model, calib, evalset = setup
    layers = transformer_blocks(model)
    chunks = capture_first_inputs(model, layers[0], calib, 4)
    names = {id(m): n for n, m in model.named_modules()}
    lin = [(names[id(m)], m) for _, m in layers[0].named_modules() if isinstance(m, nn.Linear)]
    groups = _input_groups(layers[0], lin, chunks[0])
    assert [[n.rsplit(".", 1)[1] for n, _ in g] for g in groups] == [
        ["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]
    ]
    work = copy.deepcopy(model)
    report = prune_llm(work, calib, method="sparsegpt", sparsity=0.5, sequential=True)
    assert report.sequential and report.overall_sparsity == pytest.approx(0.5, abs=1e-3)
    assert math.isfinite(perplexity(work, evalset, seqlen=SEQLEN))


# ------------------------------------------------------------ block reconstruction


@torch.no_grad()
def _block0_error(model: nn.Module, dense: nn.Module, ids: torch.Tensor) -> float:
    """MSE between block 0 of ``model`` and of ``dense`` on the same (dense) block inputs."""
    from prunekit.llm.blocks import block_output, capture_first_inputs

    err = 0.0
    for hidden, args, kwargs in capture_first_inputs(dense, dense.model.layers[0], ids, 4):
        a = block_output(model.model.layers[0], hidden, args, kwargs)
        b = block_output(dense.model.layers[0], hidden, args, kwargs)
        err += float(((a - b) ** 2).mean())
    return err


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_reconstruct_fits_kept_weights_and_keeps_masks(setup, method):
    model, calib, evalset = setup
    plain, fitted = copy.deepcopy(model), copy.deepcopy(model)
    prune_llm(plain, calib, method=method, sparsity=0.5, batch_size=2)
    report = prune_llm(fitted, calib, method=method, sparsity=0.5, reconstruct=10, reconstruct_lr=3e-3, batch_size=2)
    assert report.reconstruct == 10
    lp, lf = block_linears(plain), block_linears(fitted)
    # Block 0 sees the same inputs in both runs: same masks, and the fit lowers its output error.
    for name in lp:
        if name.startswith("model.layers.0."):
            assert torch.equal(lp[name].weight == 0, lf[name].weight == 0)
    assert _block0_error(fitted, model, calib) < 0.8 * _block0_error(plain, model, calib)
    # Zeros stay zeros: every layer keeps its sparsity, and the fitted weights moved.
    assert pk.sparsity(fitted) == pytest.approx(pk.sparsity(plain))
    assert report.overall_sparsity == pytest.approx(0.5, abs=1e-3)
    assert not torch.equal(lp["model.layers.0.mlp.down_proj"].weight, lf["model.layers.0.mlp.down_proj"].weight)
    assert all(p.requires_grad for p in fitted.parameters()) and all(p.grad is None for p in fitted.parameters())
    assert math.isfinite(perplexity(fitted, evalset, seqlen=SEQLEN))


def test_reconstruct_rejects_bad_values(setup):
    model, calib, _ = setup
    work = copy.deepcopy(model)
    with pytest.raises(ValueError, match=r"reconstruct must be an integer >= 0 \(epochs; 0 = off\); got -1"):
        prune_llm(work, calib, reconstruct=-1)
    with pytest.raises(ValueError, match=r"reconstruct_lr must be a number in \(0, 1\) .*; got 0"):
        prune_llm(work, calib, reconstruct=1, reconstruct_lr=0)
    with pytest.raises(ValueError, match="reconstruct=1 needs calibration"):
        prune_llm(work, None, method="magnitude", reconstruct=1)
    assert pk.sparsity(work) == 0.0


@torch.no_grad()
def test_reconstruction_slices_reproduce_the_whole_batch(setup):
    from prunekit.llm.blocks import block_output, capture_first_inputs
    from prunekit.llm.reconstruct import split_chunk

    model, calib, _ = setup
    (chunk,) = capture_first_inputs(model, model.model.layers[0], calib[:5], 8)
    whole = block_output(model.model.layers[0], *chunk)
    pieces = split_chunk(chunk, 2)
    assert [sl.stop - sl.start for _, sl in pieces] == [2, 2, 1]
    parts = torch.cat([block_output(model.model.layers[0], *piece) for piece, _ in pieces])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)


def test_gpt2_conv1d_layers_are_pruned_per_output_row():
    """GPT-2 stores its linears as Conv1D with weight (in, out): rows of the comparison are
    the weight's columns, and N:M runs along the input dimension."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=32, vocab_size=64)
    torch.manual_seed(0)
    dense = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 64, (4, 16))
    model = copy.deepcopy(dense)
    report = prune_llm(model, None, method="magnitude", sparsity=0.5)
    assert len(report.layers) == 8 and report.overall_sparsity == pytest.approx(0.5)
    w0 = dense.transformer.h[0].attn.c_attn.weight.detach()  # (in=32, out=96)
    expect = w0.abs() > w0.abs().kthvalue(16, dim=0, keepdim=True).values  # the 16 smallest of each column go
    got = model.transformer.h[0].attn.c_attn.weight.detach() != 0
    assert torch.equal(got, expect)
    assert report.layers[0].shape == (96, 32)
    model = copy.deepcopy(dense)
    prune_llm(model, ids, method="sparsegpt", sparsity=0.5, pattern="2:4")
    w = model.transformer.h[1].mlp.c_proj.weight.detach().t()  # (out, in)
    assert int((w.reshape(-1, 4) != 0).sum(1).max()) <= 2
    assert math.isfinite(perplexity(model, ids, seqlen=16))


def test_magnitude_runs_no_forward_pass(setup):
    """Magnitude reads only the weights: with or without calibration, the same masks and
    not one block forward."""
    calls = []
    model = copy.deepcopy(setup[0])
    handles = [l.register_forward_pre_hook(lambda *a: calls.append(1)) for l in model.model.layers]
    prune_llm(model, setup[1], method="magnitude", sparsity=0.5)
    for h in handles:
        h.remove()
    assert calls == []
    other = copy.deepcopy(setup[0])
    prune_llm(other, None, method="magnitude", sparsity=0.5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
