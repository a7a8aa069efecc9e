"""The deployment advisor: forms that apply, choices that follow the measurements."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("zstandard")

import prunekit as pk  # noqa: E402
from prunekit.deploy import advisor as A  # noqa: E402


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10)).eval()


def test_forms_and_choices_follow_measurements(monkeypatch):
    model, x = _cnn(), torch.randn(4, 1, 8, 8)
    pk.prune(model, 0.5, granularity="channel", allocation="uniform", example_inputs=x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fake = {"as is (dense kernels)": 2.0, "compacted": 1.0}
    monkeypatch.setattr(A, "_median_ms", lambda models, xx, r: {k: fake.get(k, 3.0) for k in models})
    adv = A.advise(model, x, batch_size=4, repeats=2)
    names = [f.name for f in adv.forms]
    assert names[:2] == ["as is (dense kernels)", "compacted"]
    sizes = {f.name: f.bytes for f in adv.forms}
    assert sizes["compacted"] < 0.6 * sizes["as is (dense kernels)"]
    assert adv.fastest == "compacted" and adv.smallest == "packed 4-bit codebook (compacted)"
    fake.update({"as is (dense kernels)": 0.5})  # the measurement decides, not a rule
    assert A.advise(model, x, batch_size=4, repeats=2).fastest == "as is (dense kernels)"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model unchanged
    assert "fastest at batch 4" in adv.summary() and adv.to_dict()["smallest"] == adv.smallest


def test_unstructured_model_has_no_compacted_form_and_bad_batch():
    model, x = _cnn(), torch.randn(4, 1, 8, 8)
    pk.prune(model, 0.9)
    adv = A.advise(model, x, batch_size=2, repeats=2)
    assert "compacted" not in [f.name for f in adv.forms]
    assert adv.smallest.startswith("packed")
    with pytest.raises(ValueError, match="batch_size"):
        A.advise(model, x, batch_size=0)


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


def test_every_form_of_a_two_input_model_is_timed_at_the_batch_size(monkeypatch):
    timed = []
    real = A._median_ms

    def spy(models, inputs, repeats):
        timed.append(tuple(t.shape[0] for t in inputs))
        return real(models, inputs, repeats)

    monkeypatch.setattr(A, "_median_ms", spy)
    model = _TwoInputs()
    pk.prune(model, 0.5)
    advice = A.advise(model, (torch.randn(2, 8), torch.randn(2, 8)), batch_size=16, repeats=2)
    assert timed == [(16, 16)] and advice.batch_size == 16
