"""DSnoT mask refinement (prunekit.refine.dsnot) and its use in prune_llm(refine="dsnot")."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from prunekit.allocation import prune_rows
from prunekit.granularity import nm_keep
from prunekit.refine import dsnot


def _layer(seed: int = 0, rows: int = 24, cols: int = 48, shift: float = 1.0):
    """Weights and input statistics with features of non-zero mean (as LLM activations have)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(3000, cols, generator=g) * torch.rand(cols, generator=g) + shift * torch.randn(cols, generator=g)
    W = torch.randn(rows, cols, generator=g)
    return W, X, X.mean(0), X.var(0, unbiased=False), X.norm(dim=0)


def _row_error(W: torch.Tensor, keep: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Expected dense-minus-pruned output per row."""
    return (W * mean * (~keep)).sum(1)


def _reference(W, keep, mean, var, norms, cycles, threshold):
    """A row-by-row transcription of the reference implementation's unstructured loop
    (no sign check, pointers from both ends of the sorted candidates)."""
    keep = keep.clone()
    contrib = W * mean
    grow = contrib / var
    wanda = W.abs() * norms
    for i in range(W.shape[0]):
        pruned = [j for j in range(W.shape[1]) if not keep[i, j]]
        kept = [j for j in range(W.shape[1]) if keep[i, j]]
        up = sorted((j for j in pruned if grow[i, j] > 0), key=lambda j: -float(grow[i, j]))
        down = sorted((j for j in pruned if grow[i, j] < 0), key=lambda j: float(grow[i, j]))
        neg = sorted((j for j in kept if contrib[i, j] < 0), key=lambda j: float(wanda[i, j]))
        pos = sorted((j for j in kept if contrib[i, j] > 0), key=lambda j: float(wanda[i, j]))
        err = float(contrib[i, pruned].sum())
        for c in range(cycles):
            if abs(err) <= threshold:
                break
            g_list, p_list = (up, neg) if err > 0 else (down, pos)
            if c >= 0 and (not g_list or not p_list):
                break
            g, p = g_list.pop(0), p_list.pop(0)
            keep[i, g], keep[i, p] = True, False
            err += float(contrib[i, p] - contrib[i, g])
    return keep


@pytest.mark.parametrize("monotone,keep_sign", [(True, True), (True, False), (False, None)])
def test_counts_kept_and_weights_untouched(monotone, keep_sign):
    W, _, mean, var, norms = _layer()
    before = W.clone()
    keep = prune_rows(W.abs() * norms, 0.5)
    new = dsnot(W, keep, mean, var, norms, monotone=monotone, keep_sign=keep_sign)
    assert new.dtype == torch.bool and new.shape == keep.shape
    assert torch.equal(new.sum(1), keep.sum(1))
    assert not torch.equal(new, keep)  # features with non-zero means: there is something to fix
    assert torch.equal(W, before)


@pytest.mark.parametrize("keep_sign,bound", [(True, 0.6), (False, 0.25)])
def test_monotone_never_raises_a_rows_error_and_lowers_the_mean_error(keep_sign, bound):
    W, X, mean, var, norms = _layer(1)
    keep = prune_rows(W.abs() * norms, 0.5)
    new = dsnot(W, keep, mean, var, norms, keep_sign=keep_sign)
    e0, e1 = _row_error(W, keep, mean).abs(), _row_error(W, new, mean).abs()
    assert bool((e1 <= e0 + 1e-5).all())
    assert float(e1.mean()) < bound * float(e0.mean())
    # the same measured on the data itself: the mean output error
    measured0 = (X @ (W * ~keep).T).mean(0).abs().mean()
    measured1 = (X @ (W * ~new).T).mean(0).abs().mean()
    assert measured1 < bound * measured0


def test_reference_mode_matches_a_row_by_row_transcription():
    W, _, mean, var, norms = _layer(2, rows=12, cols=20)
    keep = prune_rows(W.abs() * norms, 0.5)
    for cycles, threshold in ((50, 1e-3), (3, 0.0), (50, 0.5)):
        got = dsnot(W, keep, mean, var, norms, monotone=False, keep_sign=None, cycles=cycles, threshold=threshold)
        assert torch.equal(got, _reference(W, keep, mean, var, norms, cycles, threshold)), (cycles, threshold)


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_pattern_holds_and_error_sign_kept(nm):
    W, _, mean, var, norms = _layer(3, cols=64)
    keep = nm_keep(W.abs() * norms, *nm)
    new = dsnot(W, keep, mean, var, norms, nm=nm)
    assert torch.equal(new.reshape(W.shape[0], -1, nm[1]).sum(-1), torch.full((W.shape[0], 64 // nm[1]), nm[0]))
    assert not torch.equal(new, keep)
    e0, e1 = _row_error(W, keep, mean), _row_error(W, new, mean)
    assert bool((e1.abs() <= e0.abs() + 1e-5).all())
    assert bool(((torch.sign(e1) == torch.sign(e0)) | (e1.abs() < 1e-6)).all())


def test_keep_sign_never_overshoots():
    W, _, mean, var, norms = _layer(5)
    keep = prune_rows(W.abs() * norms, 0.5)
    e0 = _row_error(W, keep, mean)
    free = _row_error(W, dsnot(W, keep, mean, var, norms, keep_sign=False), mean)
    kept = _row_error(W, dsnot(W, keep, mean, var, norms), mean)
    assert bool((torch.sign(free) != torch.sign(e0)).any())  # without the sign rule a row may cross zero
    assert bool(((torch.sign(kept) == torch.sign(e0)) | (kept.abs() < 1e-6)).all())
    assert bool((kept.abs() <= e0.abs() + 1e-5).all())


def test_zero_mean_features_leave_nothing_to_refine():
    W, _, _, var, norms = _layer(4)
    keep = prune_rows(W.abs() * norms, 0.5)
    assert torch.equal(dsnot(W, keep, torch.zeros(W.shape[1]), var, norms), keep)


# ------------------------------------------------------------------------------ pk.prune

from conftest import clone_state, same_state  # noqa: E402


def _mean_output_error(model_dense, model_pruned, batches):
    """Mean over the data of |dense layer output - pruned layer output|, per Linear/Conv layer
    fed the same (dense) inputs: what DSnoT reduces, measured with hooks."""
    import torch.nn as nn

    errs = []
    dense_layers = {n: m for n, m in model_dense.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    pruned_layers = dict(model_pruned.named_modules())
    for name, layer in dense_layers.items():
        other = pruned_layers[name]
        seen = []
        h = layer.register_forward_hook(lambda mod, inp, out: seen.append((inp[0], out)))
        with torch.no_grad():
            for x, _ in batches:
                model_dense(x)
        h.remove()
        with torch.no_grad():
            diff = [(out - other(inp)).transpose(0, 1).reshape(out.shape[1], -1) for inp, out in seen]
        errs.append(torch.cat(diff, 1).mean(1).abs().mean())
    return torch.stack(errs)


@pytest.mark.filterwarnings("ignore:N.M 2.4. input size")  # the first conv (9 inputs per filter) stays dense
@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_core_prune_refines_linear_and_conv_layers(convbn, digits_batches, pattern):
    import prunekit as pk

    dense = copy.deepcopy(convbn).eval()
    kw = dict(granularity=pattern) if pattern else dict(allocation="row")
    plain, refined = copy.deepcopy(dense), copy.deepcopy(dense)
    pk.prune(plain, None if pattern else 0.5, criterion="wanda", data=digits_batches, **kw)
    pk.prune(refined, None if pattern else 0.5, criterion="wanda", data=digits_batches, refine="dsnot", **kw)
    a, b = pk.masks(plain), pk.masks(refined)
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    for k in a:  # every output row (filter) keeps its count
        assert torch.equal(a[k].reshape(a[k].shape[0], -1).sum(1), b[k].reshape(b[k].shape[0], -1).sum(1)), k
    if pattern:
        for k, m in b.items():
            assert bool((m.reshape(m.shape[0], -1).reshape(m.shape[0], -1, 4).sum(-1) == 2).all()), k
    e_plain = _mean_output_error(dense, plain, digits_batches)
    e_refined = _mean_output_error(dense, refined, digits_batches)
    assert float(e_refined.mean()) < float(e_plain.mean())


def test_core_refine_is_refused_where_it_does_not_apply(mlp, digits_batches):
    import prunekit as pk

    state = clone_state(mlp)
    cases = [
        (dict(criterion="sparsegpt", data=digits_batches), "criterion 'sparsegpt' updates the weights it keeps"),
        (dict(criterion="magnitude"), "refine='dsnot' reads each layer's inputs on calibration batches: pass data="),
        (dict(criterion="magnitude", granularity="channel", data=digits_batches), "needs granularity 'unstructured' or an N:M"),
        (dict(criterion="wanda", data=digits_batches, refine="dsnt"), "refine must be None or one of 'dsnot'; got 'dsnt'"),
    ]
    for kwargs, match in cases:
        kwargs = {"refine": "dsnot", **kwargs}
        with pytest.raises(ValueError, match=re.escape(match)):
            pk.prune(mlp, 0.5, **kwargs)
        assert same_state(mlp, state) and not pk.masks(mlp)


# ------------------------------------------------------------------------------ prune_llm

pytest.importorskip("transformers")

from llm_fixtures import tiny_llama  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.llm import prune_llm  # noqa: E402


@pytest.fixture(scope="module")
def llm():
    model = tiny_llama(hidden_size=64, intermediate_size=128, vocab_size=100, max_position_embeddings=64)
    calib = torch.randint(0, 100, (8, 32), generator=torch.Generator().manual_seed(1))
    return model, calib


def _pruned(llm, **kwargs):
    model, calib = llm
    m = copy.deepcopy(model)
    report = prune_llm(m, calib, self_calibration=0.0, reconstruct=0, keep_masks=True, **kwargs)
    return m, report


@pytest.mark.parametrize("method,pattern", [("wanda", None), ("magnitude", None), ("wanda", "2:4"), ("ria", None)])
def test_prune_llm_refines_masks_at_the_same_sparsity(llm, method, pattern):
    plain, _ = _pruned(llm, method=method, pattern=pattern)
    refined, report = _pruned(llm, method=method, pattern=pattern, refine="dsnot")
    assert report.refine == "dsnot" and "+ dsnot" in report.summary()
    a, b = pk.masks(plain), pk.masks(refined)
    assert a.keys() == b.keys()
    changed = sum(int((a[k] != b[k]).sum()) for k in a)
    assert changed > 0
    for k in a:
        assert torch.equal(a[k].sum(-1), b[k].sum(-1)), k  # every row keeps its count
    ignore = ["lm_head", "model.embed_tokens"]
    assert pk.sparsity(refined, ignore=ignore) == pytest.approx(pk.sparsity(plain, ignore=ignore))


def test_refined_model_saves_and_reloads_exactly(llm, tmp_path):
    import transformers

    model, calib = llm
    m = copy.deepcopy(model)
    prune_llm(m, calib, method="wanda", refine="dsnot", self_calibration=0.0, reconstruct=0)
    m.save_pretrained(tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(back(input_ids=calib).logits, m(input_ids=calib).logits)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="sparsegpt", refine="dsnot"), "method 'sparsegpt' has already updated"),
        (dict(method="wanda", refine="dsnt"), "refine must be one of 'dsnot'; got 'dsnt'"),
        (dict(method="wanda", refine="dsnot", refine_cycles=0), "refine_cycles"),
    ],
)
def test_bad_refine_arguments_raise_and_leave_the_model(llm, kwargs, match):
    model, calib = llm
    m = copy.deepcopy(model)
    with pytest.raises(ValueError, match=match):
        prune_llm(m, calib, **kwargs)
    for (n, p), (_, q) in zip(m.state_dict().items(), model.state_dict().items()):
        assert torch.equal(p, q), n


def test_magnitude_refinement_needs_calibration(llm):
    model, _ = llm
    with pytest.raises(ValueError, match="refine='dsnot' needs calibration"):
        prune_llm(copy.deepcopy(model), None, method="magnitude", refine="dsnot")
